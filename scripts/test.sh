#!/usr/bin/env bash
# Sets up Kiln and runs every test: unit tests and the end-to-end tests,
# which start real Postgres, etcd, Garage, Blender, ffmpeg and Kiln's services.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
"$repo/scripts/setup.sh" --tests
cache=${KILN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kiln}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$cache/target}
cd "$repo"
# Build artefacts nothing has read for four days go: each clone and each
# change leaves a new set in the shared target dir, and a disk that fills
# up fails the end-to-end tests in confusing ways (workers below their
# free-space floor take no tasks). What is still used is read at least
# daily, so relatime keeps it.
for kind in deps incremental build .fingerprint; do
  if [ -d "$CARGO_TARGET_DIR/debug/$kind" ]; then
    find "$CARGO_TARGET_DIR/debug/$kind" -mindepth 1 -type f -atime +3 -delete 2>/dev/null || true
    find "$CARGO_TARGET_DIR/debug/$kind" -mindepth 1 -type d -empty -delete 2>/dev/null || true
  fi
done
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
