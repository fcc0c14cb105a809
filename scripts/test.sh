#!/usr/bin/env bash
# Sets up Kiln and runs every test: unit tests and the end-to-end tests,
# which start real Postgres, etcd, Garage, Blender, ffmpeg and Kiln's services.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${KILN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kiln}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$cache/target}
# A disk that fills up fails the end-to-end tests in confusing ways (a
# worker below its free-space floor takes no tasks), and the shared target
# dir grows with every clone and change, most of it incremental caches.
# Those are only a speed-up: when less than 10 GiB is free, they go, under
# cargo's own lock on the dir so no build is using them meanwhile.
free_kib=$(df -Pk "$(dirname "$CARGO_TARGET_DIR")" 2>/dev/null | awk 'NR == 2 { print $4 }' || true)
if [ -n "$free_kib" ] && [ "$free_kib" -lt $((10 * 1024 * 1024)) ] && [ -d "$CARGO_TARGET_DIR/debug/incremental" ]; then
  echo "==> under 10 GiB free: dropping the incremental build caches in $CARGO_TARGET_DIR" >&2
  flock -w 600 "$CARGO_TARGET_DIR/debug/.cargo-lock" rm -rf "$CARGO_TARGET_DIR/debug/incremental" || true
fi
"$repo/scripts/setup.sh" --tests
cd "$repo"
if [ "$(id -u)" != 0 ]; then
  echo "warning: the end-to-end tests start workers that sandbox every task as a uid of its own," >&2
  echo "         which takes root (or the capabilities in docs/OPERATIONS.md); run this as root." >&2
fi
# One HTTP/TLS stack for the whole workspace (offline: reads Cargo.lock).
"$repo/scripts/check-deps.sh"
# Two test threads: each end-to-end test runs a whole farm on this machine.
# The scheduler's core unit tests (no farm, milliseconds each) run first, with
# their count in the log; then everything.
cargo test -p kiln-scheduler --lib -- core::tests
cargo test --workspace --no-fail-fast -- --test-threads=2
