#!/usr/bin/env bash
# Builds Kiln's images from binaries already built on a Debian 12 machine,
# compiling nothing in a container: the `*-prebuilt` targets of
# deploy/Dockerfile, tagged as docker-compose.yml names them.
#   deploy/build-images.sh [--binaries DIR] [--tag TAG] [--base IMAGE]
# DIR holds kiln, kiln-gateway, kiln-scheduler, kiln-assets and kiln-worker
# (default: target/release); TAG defaults to "prebuilt"; IMAGE is the Debian
# bookworm base (default debian:bookworm-slim). Then, without --build:
#   KILN_IMAGE_TAG=prebuilt docker compose up -d
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
binaries=$repo/target/release
tag=prebuilt
base=debian:bookworm-slim
while [ $# -gt 0 ]; do
  case "$1" in
    --binaries) binaries=$2; shift 2 ;;
    --tag) tag=$2; shift 2 ;;
    --base) base=$2; shift 2 ;;
    *) echo "usage: $0 [--binaries DIR] [--tag TAG] [--base IMAGE]" >&2; exit 2 ;;
  esac
done
programs=(kiln kiln-gateway kiln-scheduler kiln-assets kiln-worker)
for program in "${programs[@]}"; do
  [ -x "$binaries/$program" ] || { echo "no $program in $binaries; build with cargo build --release --workspace --bins" >&2; exit 1; }
done
# A small build context: the binaries and the files the runtime stages copy.
context=$(mktemp -d "${TMPDIR:-/tmp}/kiln-images.XXXXXX")
trap 'rm -rf "$context"' EXIT
mkdir -p "$context/bin" "$context/examples"
for program in "${programs[@]}"; do
  ln "$binaries/$program" "$context/bin/" 2>/dev/null || cp "$binaries/$program" "$context/bin/"
done
cp "$repo/examples/make_scene.py" "$context/examples/"
for image in gateway scheduler assets worker cli; do
  echo "==> kiln/$image:$tag"
  docker build --quiet --network host --build-arg "DEBIAN=$base" \
    -f "$repo/deploy/Dockerfile" --target "$image-prebuilt" -t "kiln/$image:$tag" "$context"
done
