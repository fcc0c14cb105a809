#!/usr/bin/env bash
# Fails when the workspace links two semver-incompatible versions of one of
# the crates that make up its HTTP/TLS stack (hyper, http, h2, rustls, tonic):
# one stack serves every service, and a second one is a dependency that
# pulled its own (e.g. aws-sdk-s3's legacy rustls feature: hyper 0.14, h2 0.3,
# rustls 0.21). Works offline: `cargo tree` reads Cargo.lock.
set -euo pipefail
cd "$(dirname "$0")/.."
watched='^(hyper|http|h2|rustls|tonic)$'
# Every (name, version) the workspace builds for its targets, normal and build deps.
versions=$(cargo tree --workspace --edges normal,build --prefix none --format '{p}' 2>/dev/null |
  awk '{print $1, $2}' | sed 's/ v/ /' | sort -u)
status=0
for name in $(echo "$versions" | awk '{print $1}' | sort -u | grep -E "$watched" || true); do
  # Semver-compatible groups: 0.x.y by minor, x.y.z (x >= 1) by major.
  groups=$(echo "$versions" | awk -v n="$name" '$1 == n {print $2}' |
    awk -F. '{ if ($1 == "0") print $1 "." $2; else print $1 }' | sort -u)
  if [ "$(echo "$groups" | wc -l)" -gt 1 ]; then
    echo "check-deps: $name is linked in more than one incompatible version: $(echo $groups)" >&2
    for version in $(echo "$versions" | awk -v n="$name" '$1 == n {print $2}'); do
      echo "  who pulls $name $version:" >&2
      cargo tree --workspace --edges normal,build --invert "$name@$version" --depth 4 2>/dev/null |
        sed 's/^/    /' | head -12 >&2 || true
    done
    status=1
  fi
done
if [ "$status" -eq 0 ]; then
  echo "check-deps: one version each of hyper, http, h2, rustls and tonic"
fi
exit "$status"
