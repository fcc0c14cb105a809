#!/usr/bin/env bash
# Soak: the real scheduler (release build) with a private Postgres and etcd
# under a steady load of simulated workers (no-op renderer; 10,000 workers
# with 10 s renders ask for 1,000 tasks a second) with 100,000 tasks kept
# queued and finished jobs deleted after 5 minutes;
# prints the `tasks` table's size, the database's, dead tuples and the
# scheduler's RSS every minute, then the growth after the first 10 minutes.
# Usage: scripts/bench-soak.sh [MINUTES (default 60)] [WORKERS (default 10000)] [RENDER_MS (default 10000)]
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
minutes=${1:-60}
workers=${2:-10000}
render_ms=${3:-10000}
"$repo/scripts/setup.sh" >/dev/null
cache=${KILN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kiln}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$cache/target}
cd "$repo"
# The bench starts the scheduler binary that sits next to it: build it in release too.
cargo build --release --quiet -p kiln-scheduler -p kiln-gateway -p kiln-assets --bins
cargo bench -p kiln-scheduler --bench soak -- --minutes "$minutes" --workers "$workers" --render-ms "$render_ms"
