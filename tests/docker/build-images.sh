#!/usr/bin/env bash
# Builds every image the compose test runs, with no container registry:
#   1. a Debian bookworm base made with debootstrap from this machine's
#      Debian mirror, imported as kiln-base/debian:bookworm and kept as a
#      tarball in the cache, so later runs and machines skip debootstrap;
#   2. stand-ins for the third-party images (tests/docker/standins), under
#      the names docker-compose.yml uses, unless a real image holds the name;
#   3. Kiln's images from the binaries in BIN_DIR (deploy/build-images.sh).
# Docker's build cache keeps every layer, so a repeat run takes seconds.
#   tests/docker/build-images.sh BIN_DIR TAG
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
bin_dir=${1:?usage: $0 BIN_DIR TAG}
tag=${2:?usage: $0 BIN_DIR TAG}
cache=${KILN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kiln}
base=kiln-base/debian:bookworm
base_tar=$cache/docker/debian-bookworm-minbase.tar.gz

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# The first Debian mirror this machine's apt uses for bookworm.
mirror() {
  local uri
  uri=$(grep -hsE '^deb (\[[^]]*\] )?https?://[^ ]+ bookworm( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
    | head -n1 | sed -E 's/^deb (\[[^]]*\] )?//' | cut -d' ' -f1)
  if [ -z "$uri" ]; then
    uri=$(awk '/^URIs:/ {uris=$2} /^Suites:/ && / bookworm( |$)/ {print uris; exit}' \
      /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
  fi
  echo "${uri:-http://deb.debian.org/debian}"
}

if ! docker image inspect "$base" >/dev/null 2>&1; then
  if [ ! -s "$base_tar" ]; then
    root=$(mktemp -d "${TMPDIR:-/tmp}/kiln-debootstrap.XXXXXX")
    echo "==> debootstrap bookworm from $(mirror) (once; kept in $base_tar)"
    as_root debootstrap --variant=minbase bookworm "$root" "$(mirror)" >"$root.log" 2>&1 \
      || { tail -20 "$root.log" >&2; exit 1; }
    mkdir -p "$(dirname "$base_tar")"
    as_root tar -C "$root" -czf "$base_tar.part" . && mv "$base_tar.part" "$base_tar"
    as_root rm -rf "$root" "$root.log"
  fi
  echo "==> docker import $base"
  docker import - "$base" <"$base_tar" >/dev/null
fi

# A stand-in is built only where the name is free or already one of ours.
standin() {
  local name=$1 dir=$2
  if docker image inspect "$name" >/dev/null 2>&1 \
    && [ -z "$(docker image inspect -f '{{index .Config.Labels "org.kiln.standin"}}' "$name")" ]; then
    echo "==> $name: using the real image already here"
    return
  fi
  echo "==> $name (stand-in)"
  docker build --quiet --network host --build-arg "BASE=$base" -t "$name" "$dir" >/dev/null
}
standins=$repo/tests/docker/standins
standin postgres:15 "$standins/postgres"
standin quay.io/coreos/etcd:v3.5.17 "$standins/etcd"
standin prom/prometheus:v2.55.1 "$standins/prometheus"
garage=$cache/garage/bin/garage
[ -x "$garage" ] || { echo "no Garage at $garage; run scripts/setup.sh" >&2; exit 1; }
garage_context=$(mktemp -d "${TMPDIR:-/tmp}/kiln-garage.XXXXXX")
trap 'rm -rf "$garage_context"' EXIT
cp "$standins/garage/Dockerfile" "$garage_context/"
ln "$garage" "$garage_context/garage" 2>/dev/null || cp "$garage" "$garage_context/garage"
standin dxflrs/garage:v2.5.0 "$garage_context"

"$repo/deploy/build-images.sh" --binaries "$bin_dir" --tag "$tag" --base "$base"
