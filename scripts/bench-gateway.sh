#!/usr/bin/env bash
# Benchmark (not a test): requests/s and p99 latency of the gateway's REST API
# with authentication and per-token rate limiting on, under wrk on loopback.
# A farm with no workers runs from release binaries; GET /v1/jobs/{id} reads
# one job, POST /v1/jobs submits one-frame jobs (each a Postgres transaction).
# The rate limit is set high so the limiter is checked on every request but
# does not refuse; the figures are the cost of auth + limiter + forwarding.
# With "tls" as third argument the farm runs with TLS everywhere (`kiln dev --tls`):
# wrk speaks HTTPS to the gateway, which calls the scheduler over mutual TLS.
# With "replicas" as third argument the farm runs two gateways (`kiln dev --gateways 2`)
# and wrk goes through a local haproxy, in the same run: first to a backend of one
# gateway, then to a round-robin backend of both (the same proxy hop either way).
# Usage: scripts/bench-gateway.sh [SECONDS (default 15)] [CONNECTIONS (default 32)] [tls|replicas]
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
seconds=${1:-15}
connections=${2:-32}
tls=${3:-}
command -v wrk >/dev/null || { echo "install wrk (apt-get install wrk)"; exit 1; }
if [ "$tls" = replicas ]; then
  command -v haproxy >/dev/null || { echo "install haproxy (apt-get install haproxy)"; exit 1; }
fi
cache=${KILN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kiln}
target=${CARGO_TARGET_DIR:-$cache/target}
(cd "$repo" && cargo build --release --quiet -p kiln-gateway -p kiln-scheduler -p kiln-assets -p kiln-worker -p kiln-cli)
bin=$target/release
work=$(mktemp -d)
chmod 755 "$work"
# Only what was started is stopped: `kill 0` would signal this script's whole
# process group, the shell or CI job that ran it included.
trap '[ -z "${proxy:-}" ] || kill "$proxy" 2>/dev/null; [ -z "${dev:-}" ] || { kill -INT "$dev" 2>/dev/null; wait "$dev" 2>/dev/null; }; rm -rf "$work"' EXIT

export KILN_RATE_LIMIT_PER_SECOND=1000000 KILN_RATE_LIMIT_BURST=1000000 KILN_LOG=warn
# The POST load submits thousands of jobs, over the per-owner quota of unfinished
# jobs: without this the figure would be the cost of refusing them (429).
export KILN_MAX_UNFINISHED_JOBS_PER_OWNER=0
cd "$work"
dev_args=(--workers 0 --dir "$work/.kiln" --grpc-port 0 --http-port 0)
[ "$tls" = tls ] && dev_args+=(--tls)
[ "$tls" = replicas ] && dev_args+=(--gateways 2)
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
if [ "$tls" != replicas ]; then
  echo "gateway REST, release build, wrk -t2 -c$connections -d${seconds}s on loopback, $(nproc) cores, auth + rate limiter on${tls:+, TLS everywhere}"
  echo "| request | requests/s | p99 latency | non-2xx |"
  echo "|---|---|---|---|"
  run "GET /v1/jobs/{id}" "$base/v1/jobs/$job"
  run "POST /v1/jobs" -s "$work/post.lua" "$base/v1/jobs"
  exit 0
fi

# Two frontends on free ports: one gateway behind the first, both behind the second.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
hostport() { python3 -c 'import sys, urllib.parse; u=urllib.parse.urlsplit(sys.argv[1]); print(f"{u.hostname}:{u.port}")' "$1"; }
mapfile -t gateways < <(python3 -c "import json,sys; print('\n'.join(json.load(open(sys.argv[1]))['gateways_http']))" "$work/.kiln/dev.json")
[ "${#gateways[@]}" -eq 2 ] || { echo "expected 2 gateways in dev.json, found ${#gateways[@]}"; exit 1; }
one=$(free_port); two=$(free_port)
cat >"$work/haproxy.cfg" <<CFG
global
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  option http-keep-alive
  # Balance connections, not requests: a request sent to the other server
  # than the last one's opened a new gateway connection each time, and the
  # figure measured TCP set-up instead of the gateways.
  option prefer-last-server
  http-reuse always
frontend one
  bind 127.0.0.1:$one
  default_backend one
frontend two
  bind 127.0.0.1:$two
  default_backend two
backend one
  server g1 $(hostport "${gateways[0]}")
backend two
  balance roundrobin
  server g1 $(hostport "${gateways[0]}")
  server g2 $(hostport "${gateways[1]}")
CFG
haproxy -f "$work/haproxy.cfg" -db >"$work/haproxy.log" 2>&1 &
proxy=$!
for _ in $(seq 1 50); do curl -sf -o /dev/null -H "$auth" "http://127.0.0.1:$two/v1/jobs/$job" && break; sleep 0.1; done
echo "gateway REST through haproxy $(haproxy -v | awk 'NR==1 {print $3}'), release build, wrk -t2 -c$connections -d${seconds}s on loopback, $(nproc) cores, auth + rate limiter on"
echo "| request | gateways behind the proxy | requests/s | p99 latency | non-2xx |"
echo "|---|---|---|---|---|"
# Reads first, so both read the same farm; then the submissions.
run "GET /v1/jobs/{id} | 1" "http://127.0.0.1:$one/v1/jobs/$job"
run "GET /v1/jobs/{id} | 2" "http://127.0.0.1:$two/v1/jobs/$job"
run "POST /v1/jobs | 1" -s "$work/post.lua" "http://127.0.0.1:$one/v1/jobs"
run "POST /v1/jobs | 2" -s "$work/post.lua" "http://127.0.0.1:$two/v1/jobs"
