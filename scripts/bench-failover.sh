#!/usr/bin/env bash
# Benchmark: two scheduler replicas (release build); the leader killed with
# SIGKILL ten times, and ten workers' streams cut, each timed until work is
# dispatched again.
# Usage: scripts/bench-failover.sh [RUNS (default 10)] [QUEUED TASKS (default 100000)]
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
runs=${1:-10}
queued=${2:-100000}
"$repo/scripts/setup.sh" >/dev/null
cache=${KILN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kiln}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$cache/target}
cd "$repo"
cargo build --release --quiet -p kiln-scheduler -p kiln-gateway -p kiln-assets --bins
cargo bench -p kiln-scheduler --bench failover -- --runs "$runs" --queued "$queued"
