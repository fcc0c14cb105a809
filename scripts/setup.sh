#!/usr/bin/env bash
# Sets up everything Kiln needs on a Debian machine with Rust installed:
# system packages, Garage (built once into a cache outside the repo), and
# Kiln's own binaries. Safe to run again: each step is skipped when done.
#
#   setup.sh           what a farm on this machine needs (scripts/demo.sh)
#   setup.sh --tests   also what only the test suite uses (scripts/test.sh):
#                      Docker, debootstrap, Prometheus, the Python tools
set -euo pipefail

tests=false
case "${1:-}" in
  --tests) tests=true ;;
  "") ;;
  *) echo "usage: $0 [--tests]" >&2; exit 2 ;;
esac

repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${KILN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kiln}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$cache/target}
garage_version=2.5.0
# A farm: Postgres, etcd, Blender, ffmpeg, bubblewrap (every task's sandbox)
# and protoc (the build).
packages=(postgresql etcd-server etcd-client blender ffmpeg bubblewrap protobuf-compiler libprotobuf-dev)
# Only the tests: docker.io, docker-compose and debootstrap for the compose
# test (tests/compose.rs, a real Docker engine); prometheus for the ops test;
# python3-venv for the Python tools below; python-is-python3 for the OpenJD
# samples (tests/openjd.rs), which run `python`; chromium and chromium-driver
# for the dashboard's browser test (tests/dashboard.rs, WebDriver).
test_packages=(python3 python3-venv python-is-python3 prometheus docker.io docker-compose debootstrap chromium chromium-driver)
if $tests; then packages+=("${test_packages[@]}"); fi

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "==> installing system packages: ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

garage="$cache/garage/bin/garage"
if [ ! -x "$garage" ] || ! "$garage" --version 2>/dev/null | grep -q "$garage_version"; then
  echo "==> building Garage $garage_version into $cache/garage (once; about 15 minutes on 2 cores)"
  cargo install --locked --quiet garage --version "$garage_version" --root "$cache/garage"
fi

if $tests; then
  # Python tools for the test suite, in one venv outside the repo:
  # kubernetes-validate checks deploy/k8s; Schemathesis checks the gateway
  # against its OpenAPI document (tests/gateway_api.rs).
  venv="$cache/venv"
  schemathesis_version=4.32.5
  if [ ! -x "$venv/bin/kubernetes-validate" ] || \
     ! "$venv/bin/schemathesis" --version 2>/dev/null | grep -q "$schemathesis_version"; then
    echo "==> installing kubernetes-validate and Schemathesis $schemathesis_version into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet kubernetes-validate==1.37.0 "schemathesis==$schemathesis_version"
  fi

  # kiln-client's wheels (grpcio-tools to build it, grpcio and protobuf to run
  # it), so tests/python_client.rs installs it into a fresh venv offline.
  if ! "$repo/clients/python/wheelhouse.sh" "$cache/python-wheels"; then
    echo "==> could not download kiln-client's wheels into $cache/python-wheels" >&2
    exit 1
  fi
fi

echo "==> building Kiln (target dir $CARGO_TARGET_DIR)"
cd "$repo"
cargo build --workspace --bins --quiet
echo "==> set up; binaries in $CARGO_TARGET_DIR/debug"
