#!/usr/bin/env bash
# Sets up Kiln, starts a local farm with two workers, renders the bundled
# example scene through it, and leaves frames and an mp4 in kiln-out/example.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
"$repo/scripts/setup.sh"
cache=${KILN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kiln}
bin=${CARGO_TARGET_DIR:-$cache/target}/debug
cd "$repo"

scene="$repo/examples/scene.blend"
if [ ! -f "$scene" ]; then
  echo "==> generating $scene"
  blender -b -Y --factory-startup --python examples/make_scene.py -- "$scene" >/dev/null
fi

# Workers sandbox every task as a uid of its own, which takes root (or the
# capabilities in docs/OPERATIONS.md). The demo renders only its own scene.
sandbox=()
if [ "$(id -u)" != 0 ]; then
  echo "==> not root: the demo's workers cannot sandbox tasks; running them unsandboxed (kiln dev --no-sandbox)"
  sandbox=(--no-sandbox)
fi
echo "==> starting a local farm (kiln dev --workers 2)"
"$bin/kiln" dev --workers 2 --dir .kiln "${sandbox[@]}" >.kiln-dev.log 2>&1 &
dev=$!
trap 'kill -INT $dev 2>/dev/null; wait $dev 2>/dev/null || true' EXIT
for _ in $(seq 1 240); do
  [ -f .kiln/dev.json ] && break
  kill -0 $dev 2>/dev/null || { cat .kiln-dev.log; exit 1; }
  sleep 0.5
done
[ -f .kiln/dev.json ] || { echo "kiln dev did not start; see .kiln-dev.log"; exit 1; }

echo "==> rendering $scene"
"$bin/kiln" render "$scene" --frames 1-24 --chunk 4 --out kiln-out/example
echo "==> done: frames in kiln-out/example/frames, video in kiln-out/example/video.mp4"
