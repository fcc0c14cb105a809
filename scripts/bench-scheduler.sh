#!/usr/bin/env bash
# Benchmark: the real scheduler (release build) against a private Postgres
# and etcd, driven by simulated workers running the no-op renderer, then
# `riverqueue bench` against the same Postgres in the same run.
# Usage: scripts/bench-scheduler.sh [WORKERS (default 1000)] [TASKS (default 100000)] [JOBS (default 10)]
# The scale run is `scripts/bench-scheduler.sh 10000 1000000 100`: 100 jobs of 10,000 tasks.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
workers=${1:-1000}
tasks=${2:-100000}
jobs=${3:-10}
"$repo/scripts/setup.sh" >/dev/null
cache=${KILN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kiln}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$cache/target}
river="$cache/riverqueue/bin/riverqueue"
if [ ! -x "$river" ]; then
  echo "==> installing riverqueue-cli into $cache/riverqueue (once)"
  cargo install --locked --quiet riverqueue-cli --root "$cache/riverqueue"
fi
cd "$repo"
# The bench starts the scheduler binary that sits next to it: build it in release too.
cargo build --release --quiet -p kiln-scheduler -p kiln-gateway -p kiln-assets --bins
cargo bench -p kiln-scheduler --bench dispatch -- --workers "$workers" --tasks "$tasks" --jobs "$jobs" --river "$river"
