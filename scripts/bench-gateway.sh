#!/usr/bin/env bash
# Benchmark (not a test): requests/s and p99 latency of the gateway's REST API
# with authentication and per-token rate limiting on, under wrk on loopback.
# A farm with no workers runs from release binaries; GET /v1/jobs/{id} reads
# one job, POST /v1/jobs submits one-frame jobs (each a Postgres transaction).
# The rate limit is set high so the limiter is checked on every request but
# does not refuse; the figures are the cost of auth + limiter + forwarding.
# With "tls" as third argument the farm runs with TLS everywhere (`kiln dev --tls`):
# wrk speaks HTTPS to the gateway, which calls the scheduler over mutual TLS.
# Usage: scripts/bench-gateway.sh [SECONDS (default 15)] [CONNECTIONS (default 32)] [tls]
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
seconds=${1:-15}
connections=${2:-32}
tls=${3:-}
command -v wrk >/dev/null || { echo "install wrk (apt-get install wrk)"; exit 1; }
cache=${KILN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kiln}
target=${CARGO_TARGET_DIR:-$cache/target}
(cd "$repo" && cargo build --release --quiet -p kiln-gateway -p kiln-scheduler -p kiln-assets -p kiln-worker -p kiln-cli)
bin=$target/release
work=$(mktemp -d)
chmod 755 "$work"
trap 'kill -INT ${dev:-0} 2>/dev/null; wait ${dev:-0} 2>/dev/null || true; rm -rf "$work"' EXIT

export KILN_RATE_LIMIT_PER_SECOND=1000000 KILN_RATE_LIMIT_BURST=1000000 KILN_LOG=warn
cd "$work"
dev_args=(--workers 0 --dir "$work/.kiln" --grpc-port 0 --http-port 0)
[ "$tls" = tls ] && dev_args+=(--tls)
"$bin/kiln" dev "${dev_args[@]}" >"$work/dev.log" 2>&1 &
dev=$!
for _ in $(seq 1 240); do [ -f "$work/.kiln/dev.json" ] && break; kill -0 $dev 2>/dev/null || { cat "$work/dev.log"; exit 1; }; sleep 0.5; done
field() { python3 -c "import json,sys; print(json.load(open(sys.argv[1])).get(sys.argv[2], ''))" "$work/.kiln/dev.json" "$1"; }
base=$(field gateway_http)
token=$(field token)
auth="authorization: Bearer $token"
ca=$(field ca)
curl() { if [ -n "$ca" ]; then command curl --cacert "$ca" "$@"; else command curl "$@"; fi; }

printf 'BLENDER-v304 benchmark placeholder' >"$work/scene.blend"
digest=$(curl -sf -H "$auth" --data-binary @"$work/scene.blend" "$base/v1/assets" | python3 -c "import json,sys; print(json.load(sys.stdin)['digest'])")
body="{\"builtinTemplate\":\"blender\",\"parameters\":{\"Frames\":\"1\",\"ChunkSize\":\"1\",\"FrameRate\":\"24\"},\"inputs\":[{\"path\":\"scene.blend\",\"digest\":\"$digest\"}]}"
job=$(curl -sf -H "$auth" -H 'content-type: application/json' -d "$body" "$base/v1/jobs" | python3 -c "import json,sys; print(json.load(sys.stdin)['id'])")
cat >"$work/post.lua" <<LUA
wrk.method = "POST"
wrk.body = '$body'
wrk.headers["content-type"] = "application/json"
LUA

run() {
  local name=$1; shift
  local out
  out=$(wrk -t2 -c"$connections" -d"${seconds}s" --latency -H "$auth" "$@")
  local rps p99 non2xx
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
  non2xx=$(awk '/Non-2xx/ {print $5}' <<<"$out")
  printf '| %s | %s | %s | %s |\n' "$name" "$rps" "$p99" "${non2xx:-0}"
}
echo "gateway REST, release build, wrk -t2 -c$connections -d${seconds}s on loopback, $(nproc) cores, auth + rate limiter on${tls:+, TLS everywhere}"
echo "| request | requests/s | p99 latency | non-2xx |"
echo "|---|---|---|---|"
run "GET /v1/jobs/{id}" "$base/v1/jobs/$job"
run "POST /v1/jobs" -s "$work/post.lua" "$base/v1/jobs"
