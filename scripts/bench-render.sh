#!/usr/bin/env bash
# Benchmark: the example scene rendered through Kiln with one worker, at
# chunk sizes all-in-one, 4 and 1 (and 1 without the quality check), against
# `blender -b -a` on the same frames run directly, all in one hyperfine run
# on the same machine: the per-frame table of issue 22.
#
# The scene sits alone in its own directory, as a shot does: `kiln render`
# sends the scene's whole directory, so outputs written next to it would
# become the next job's inputs. Before each Kiln run a new file is written
# beside the scene, so each job is a scene the farm has not seen and starts
# its own Blender, as the direct run does. The last row alone renders the
# same scene again and again, reusing the warm Blender of the run before (a
# re-render; direct Blender has no such thing).
# Usage: scripts/bench-render.sh [FRAMES (default 24)] [RUNS (default 3)]
# KILN_BUILD=release takes the release binaries (build them first with
# `cargo build --release --workspace --bins`); debug is the default.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
frames=${1:-24}
runs=${2:-3}
"$repo/scripts/setup.sh" >/dev/null
command -v hyperfine >/dev/null || { echo "install hyperfine (apt-get install hyperfine)"; exit 1; }
cache=${KILN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kiln}
bin=${CARGO_TARGET_DIR:-$cache/target}/${KILN_BUILD:-debug}
work=$(mktemp -d)
# The private Postgres runs as the postgres user when we are root: it must reach the directory.
chmod 755 "$work"
# Only what was started is stopped: `kill 0` would signal the whole process group.
trap '[ -z "${dev:-}" ] || { kill -INT "$dev" 2>/dev/null; wait "$dev" 2>/dev/null; }; rm -rf "$work"' EXIT

mkdir "$work/shot" "$work/again"
scene="$work/shot/scene.blend"
blender -b -Y --factory-startup --python "$repo/examples/make_scene.py" -- "$scene" >/dev/null
cp "$scene" "$work/again/scene.blend"
cd "$work"
"$bin/kiln" dev --workers 1 --dir "$work/.kiln" --grpc-port 0 --http-port 0 >"$work/dev.log" 2>&1 &
dev=$!
for _ in $(seq 1 240); do [ -f "$work/.kiln/dev.json" ] && break; kill -0 $dev 2>/dev/null || { cat "$work/dev.log"; exit 1; }; sleep 0.5; done

since=$(date -u +%Y-%m-%dT%H:%M:%SZ)
render() { echo "$bin/kiln render ${4:-$scene} --frames 1-$frames --fps 24 --chunk $1 --out $work/out-$1${2:-} ${3:-}"; }
new_scene="date +%s%N > $work/shot/nonce"
hyperfine --runs "$runs" --warmup 1 --export-markdown "$work/bench.md" --export-json "$work/bench.json" \
  -p true -n "blender -b -a (direct)" "blender -b -Y $scene -o $work/direct/f_#### -F PNG -x 1 -s 1 -e $frames -a" \
  -p "$new_scene" -n "kiln, all in one chunk" "$(render "$frames")" \
  -p "$new_scene" -n "kiln, chunk 4" "$(render 4)" \
  -p "$new_scene" -n "kiln, chunk 1" "$(render 1)" \
  -p "$new_scene" -n "kiln, chunk 1, no quality check" "$(render 1 -nocheck --no-quality-check)" \
  -p true -n "kiln, chunk 1, the same scene again (warm Blender reused)" "$(render 1 -again "" "$work/again/scene.blend")"
cat "$work/bench.md"

# The render step alone: from each job's first Render task starting to its
# last one ending (its frames stored: a task's result follows its uploads),
# read back from the farm's timeline. hyperfine ran the commands in order,
# each `runs + 1` times (the first a warm-up, left out here).
python3 - "$work/.kiln/dev.json" "$work/bench.json" "$runs" "$since" <<'PY'
import json, sys, urllib.request
from datetime import datetime
dev, bench, runs = json.load(open(sys.argv[1])), json.load(open(sys.argv[2])), int(sys.argv[3])
request = urllib.request.Request(dev["gateway_http"] + "/v1/timeline?limit=10000&since=" + sys.argv[4],
                                 headers={"Authorization": "Bearer " + dev["token"]})
spans = json.load(urllib.request.urlopen(request)).get("spans", [])
at = lambda text: datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
jobs = {}
for span in spans:
    if span.get("stepName") == "Render" and span.get("startedAt") and span.get("endedAt"):
        start, end = jobs.get(span["jobId"], (float("inf"), 0.0))
        jobs[span["jobId"]] = (min(start, at(span["startedAt"])), max(end, at(span["endedAt"])))
ordered = sorted(jobs.values())
direct = bench["results"][0]["mean"]
names = [r["command"] for r in bench["results"][1:]]
if len(ordered) != len(names) * (runs + 1):
    sys.exit(f"expected {len(names) * (runs + 1)} jobs on the timeline, found {len(ordered)}")
print(f"\n| Render step: first Render task started to last one ended | mean of {runs} | x direct ({direct:.3f} s) |")
print("|---|---|---|")
for n, name in enumerate(names):
    group = ordered[n * (runs + 1) + 1:(n + 1) * (runs + 1)]
    mean = sum(end - start for start, end in group) / len(group)
    print(f"| {name} | {mean:.3f} s | {mean / direct:.2f} |")
PY
