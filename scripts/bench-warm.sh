#!/usr/bin/env bash
# Benchmark: the example scene rendered through Kiln on one worker at chunk
# size 1: warm Blender sessions with the sandbox on, warm sessions with the
# sandbox off (--no-sandbox), and cold (warm sessions off, sandbox on),
# against one direct `blender -b -Y scene -a` run of the same frames, all in
# one hyperfine run. Must run as root (sandboxed workers run tasks as uids
# of their own).
# Usage: scripts/bench-warm.sh [FRAMES (default 24)] [RUNS (default 3)]
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
frames=${1:-24}
runs=${2:-3}
[ "$(id -u)" = 0 ] || { echo "run as root: sandboxed workers run tasks as uids of their own"; exit 1; }
"$repo/scripts/setup.sh" >/dev/null
command -v hyperfine >/dev/null || { echo "install hyperfine (apt-get install hyperfine)"; exit 1; }
cache=${KILN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kiln}
bin=${CARGO_TARGET_DIR:-$cache/target}/debug
work=$(mktemp -d)
# The private Postgres runs as the postgres user when we are root: it must reach the directory.
chmod 755 "$work"
pids=()
trap 'for p in "${pids[@]}"; do kill -INT "$p" 2>/dev/null; wait "$p" 2>/dev/null || true; done; rm -rf "$work"' EXIT

# In a directory of its own: `kiln render` bundles the scene's directory,
# which must not hold the farms.
mkdir "$work/scene"
scene="$work/scene/scene.blend"
blender -b -Y --factory-startup --python "$repo/examples/make_scene.py" -- "$scene" >/dev/null

# One farm per setting: workers read KILN_WARM_SESSIONS at start.
start_farm() {
  local name=$1 warm=$2; shift 2
  (cd "$work" && KILN_WARM_SESSIONS=$warm exec "$bin/kiln" dev --workers 1 --dir "$work/$name" \
    --grpc-port 0 --http-port 0 "$@" >"$work/$name.log" 2>&1) &
  pids+=($!)
  for _ in $(seq 1 240); do
    [ -f "$work/$name/dev.json" ] && return
    kill -0 "${pids[-1]}" 2>/dev/null || { cat "$work/$name.log"; exit 1; }
    sleep 0.5
  done
  echo "farm $name did not start"; exit 1
}
start_farm warm true
start_farm warm-unsandboxed true --no-sandbox
start_farm cold false

# Each farm's gateway and admin token: a --gateway given on the command line
# finds no .kiln/dev.json to take the token from, so it is given too.
dev() { python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$work/$1/dev.json" "$2"; }
render() {
  echo "$bin/kiln render $scene --gateway $(dev "$1" gateway_grpc) --token $(dev "$1" token)" \
    "--frames 1-$frames --fps 24 --chunk 1 --out $work/out-$1"
}
hyperfine --runs "$runs" --warmup 1 --export-markdown "$work/bench.md" --export-json "$work/bench.json" \
  -n "blender -b -a (direct)" "blender -b -Y $scene -o $work/direct/f_#### -F PNG -x 1 -s 1 -e $frames -a" \
  -n "kiln, chunk 1, warm sessions, sandboxed" "$(render warm)" \
  -n "kiln, chunk 1, warm sessions, --no-sandbox" "$(render warm-unsandboxed)" \
  -n "kiln, chunk 1, warm sessions off, sandboxed" "$(render cold)"
cat "$work/bench.md"
python3 - "$work/bench.json" <<'PY'
import json, sys
results = {r["command"]: r["mean"] for r in json.load(open(sys.argv[1]))["results"]}
direct = results["blender -b -a (direct)"]
for name, mean in results.items():
    print(f"{name}: {mean:.2f} s, {mean / direct:.2f} x direct")
sandboxed = results["kiln, chunk 1, warm sessions, sandboxed"]
unsandboxed = results["kiln, chunk 1, warm sessions, --no-sandbox"]
print(f"the sandbox adds {(sandboxed / unsandboxed - 1) * 100:.1f} % to the job's wall time (target: at most 5 %)")
PY
