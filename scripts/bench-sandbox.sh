#!/usr/bin/env bash
# Benchmark: what the sandbox costs a task. Two farms of one worker each,
# one sandboxing its tasks and one started with --no-sandbox, run the same
# job of TASKS empty actions (`true`, one task each) in one hyperfine run;
# the difference of the means divided by TASKS is the sandbox's cost per task.
# Must run as root (the sandboxed farm's worker runs tasks as other uids).
# Usage: scripts/bench-sandbox.sh [TASKS (default 100)] [RUNS (default 5)]
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
tasks=${1:-100}
runs=${2:-5}
[ "$(id -u)" = 0 ] || { echo "run as root: sandboxed workers run tasks as uids of their own"; exit 1; }
"$repo/scripts/setup.sh" >/dev/null
command -v hyperfine >/dev/null || { echo "install hyperfine (apt-get install hyperfine)"; exit 1; }
cache=${KILN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kiln}
bin=${CARGO_TARGET_DIR:-$cache/target}/debug
work=$(mktemp -d)
# Postgres runs as the postgres user, task uids pass through: others must reach the directory.
chmod 755 "$work"
pids=()
trap 'for p in "${pids[@]}"; do kill -INT "$p" 2>/dev/null; wait "$p" 2>/dev/null || true; done; rm -rf "$work"' EXIT

start_farm() {
  local name=$1; shift
  (cd "$work" && exec "$bin/kiln" dev --workers 1 --dir "$work/$name" --grpc-port 0 --http-port 0 "$@" \
    >"$work/$name.log" 2>&1) &
  pids+=($!)
  for _ in $(seq 1 240); do
    [ -f "$work/$name/dev.json" ] && return
    kill -0 "${pids[-1]}" 2>/dev/null || { cat "$work/$name.log"; exit 1; }
    sleep 0.5
  done
  echo "farm $name did not start"; exit 1
}
start_farm sandboxed
start_farm unsandboxed --no-sandbox

# Submits TASKS empty actions over REST and waits until the job ends.
cat >"$work/empty.py" <<'PY'
import json, sys, time, urllib.request
info = json.load(open(sys.argv[1]))
tasks = int(sys.argv[2])
template = {
    "specificationVersion": "jobtemplate-2023-09",
    "name": "Empty",
    "steps": [{
        "name": "Empty",
        "parameterSpace": {"taskParameterDefinitions": [
            {"name": "N", "type": "INT", "range": f"1-{tasks}"}]},
        "script": {"actions": {"onRun": {"command": "true"}}},
    }],
}
headers = {"Authorization": "Bearer " + info["token"], "Content-Type": "application/json"}
def call(method, path, body=None):
    request = urllib.request.Request(info["gateway_http"] + path, method=method, headers=headers,
                                     data=json.dumps(body).encode() if body is not None else None)
    with urllib.request.urlopen(request) as response:
        return response.status, json.load(response)
_, job = call("POST", "/v1/jobs", {"templateDocument": json.dumps(template)})
while True:
    status, job = call("GET", f"/v1/jobs/{job['id']}/status")
    if status == 200:
        break
    time.sleep(0.05)
if job["state"] != "JOB_STATE_SUCCEEDED":
    sys.exit(f"job {job['id']} ended {job['state']}: {job.get('message', '')}")
PY
empty() { echo "python3 $work/empty.py $work/$1/dev.json $tasks"; }
hyperfine --runs "$runs" --warmup 1 --export-markdown "$work/bench.md" --export-json "$work/bench.json" \
  -n "$tasks empty tasks, sandboxed" "$(empty sandboxed)" \
  -n "$tasks empty tasks, --no-sandbox" "$(empty unsandboxed)"
cat "$work/bench.md"
python3 - "$work/bench.json" "$tasks" <<'PY'
import json, sys
results = [r["mean"] for r in json.load(open(sys.argv[1]))["results"]]
tasks = int(sys.argv[2])
print(f"sandbox cost per task: {(results[0] - results[1]) / tasks * 1000:.1f} ms "
      f"({results[0] / tasks * 1000:.1f} ms vs {results[1] / tasks * 1000:.1f} ms a task)")
PY
