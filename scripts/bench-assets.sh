#!/usr/bin/env bash
# Benchmark: a 2 GiB file uploaded and downloaded through Kiln's asset
# service (REST through the gateway, with curl) against `aws s3 cp` (PyPI
# awscli) straight to the same Garage, in the same run; then a 100-frame job
# (chunk 1) on 2 workers, with the workers' input-cache hits, misses and
# bytes downloaded read from their /metrics.
# The 2 GiB stream is generated on the fly (AES-CTR keystream of zeros) and
# downloads go to /dev/null: no big file touches the disk but Kiln's spool
# and Garage. Both tools send the same bytes, Kiln first: Garage keeps one
# copy of identical blocks, so this costs 2 GiB of Garage disk instead of 4,
# and if anything it favours aws's upload (Garage skips writing blocks it
# has). Downloads are taken after a sync, three each, taking turns.
# Usage: [KILN_BUILD=release] scripts/bench-assets.sh [FRAMES (default 100)]
# KILN_BUILD picks the build the binaries come from: debug (the default)
# or release (build it first: `cargo build --release --workspace --bins`).
# Published figures are taken with release.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
frames=${1:-100}
size_mib=2048
cache=${KILN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kiln}
profile=${KILN_BUILD:-debug}
case $profile in
  dev) profile=debug ;;
  debug | release) ;;
  *) echo "KILN_BUILD: debug or release, not $profile" >&2; exit 2 ;;
esac
bin=${CARGO_TARGET_DIR:-$cache/target}/$profile
[ -x "$bin/kiln" ] || { echo "no $bin/kiln: build the $profile binaries first" >&2; exit 2; }
echo "binaries: $bin ($profile build)"
venv=$cache/venv
[ -x "$venv/bin/pip" ] || python3 -m venv "$venv"
[ -x "$venv/bin/aws" ] || "$venv/bin/pip" install -q awscli
work=$(mktemp -d)
# The private Postgres runs as the postgres user when we are root: it must reach the directory.
chmod 755 "$work"
logs=${KILN_BENCH_LOGS:-}
# Only what was started is stopped: `kill 0` would signal the whole process group.
trap '[ -z "${dev:-}" ] || { kill -INT "$dev" 2>/dev/null; wait "$dev" 2>/dev/null; }; [ -z "$logs" ] || cp -r "$work/.kiln/logs" "$logs"; rm -rf "$work"' EXIT

"$bin/kiln" dev --workers 2 --s3 --dir "$work/.kiln" --grpc-port 0 --http-port 0 >"$work/dev.log" 2>&1 &
dev=$!
for _ in $(seq 1 240); do [ -f "$work/.kiln/dev.json" ] && break; kill -0 $dev 2>/dev/null || { cat "$work/dev.log"; exit 1; }; sleep 0.5; done
http=$(jq -r .gateway_http "$work/.kiln/dev.json")
token=$(jq -r .token "$work/.kiln/dev.json")
etcd=$(jq -r .etcd "$work/.kiln/dev.json")
# etcd has authentication on; etcdctl reads the user from the environment, not argv.
export ETCDCTL_USER="$(jq -r .etcd_user "$work/.kiln/dev.json"):$(jq -r .etcd_password "$work/.kiln/dev.json")"
s3=$(grep -o 'S3 (Garage) *http[^ ]*' "$work/dev.log" | awk '{print $NF}')
export AWS_ACCESS_KEY_ID=$(jq -r .access_key "$work/.kiln/garage/credentials.json")
export AWS_SECRET_ACCESS_KEY=$(jq -r .secret_key "$work/.kiln/garage/credentials.json")
export AWS_DEFAULT_REGION=garage
aws=("$venv/bin/aws" --endpoint-url "$s3")

stream() { # deterministic pseudo-random bytes, keyed by $1
  head -c $((size_mib * 1024 * 1024)) /dev/zero |
    openssl enc -aes-128-ctr -nosalt -K "$1" -iv 00000000000000000000000000000000 2>/dev/null
}
now() { date +%s.%N; }
rate() { echo "scale=1; $size_mib / ($2 - $1)" | bc; }

t0=$(now)
info=$(stream 01 | curl -sS --fail -X POST -T - -H "Authorization: Bearer $token" \
  -H 'Content-Type: application/octet-stream' "$http/v1/assets")
t1=$(now)
digest=$(echo "$info" | jq -r .digest)
stream 01 | "${aws[@]}" s3 cp - s3://kiln/bench/big.bin --expected-size $((size_mib * 1024 * 1024)) --only-show-errors
t2=$(now)
kiln_up=$(rate "$t0" "$t1"); aws_up=$(rate "$t1" "$t2")
# Downloads start once the uploads' writes are on disk: Kiln's upload wrote
# 2 GiB of new blocks and aws's none (Garage already had them), so without
# the sync Kiln's download ran while the kernel flushed them. Then each tool
# reads the file $downloads times, taking turns, and the figure is each
# tool's total bytes over its total time.
sync
downloads=3
kiln_time=0; aws_time=0
for _ in $(seq 1 $downloads); do
  t0=$(now)
  curl -sS --fail -H "Authorization: Bearer $token" "$http/v1/assets/$digest" -o /dev/null
  t1=$(now)
  "${aws[@]}" s3 cp s3://kiln/bench/big.bin - --only-show-errors >/dev/null
  t2=$(now)
  kiln_time=$(echo "$kiln_time + $t1 - $t0" | bc); aws_time=$(echo "$aws_time + $t2 - $t1" | bc)
done
"${aws[@]}" s3 rm s3://kiln/bench/big.bin --only-show-errors

kiln_down=$(echo "scale=1; $size_mib * $downloads / $kiln_time" | bc)
aws_down=$(echo "scale=1; $size_mib * $downloads / $aws_time" | bc)
echo "| Transfer (${size_mib} MiB) | Kiln asset service (REST via gateway) | aws s3 cp to Garage | Kiln / aws |"
echo "|---|---|---|---|"
echo "| upload | ${kiln_up} MiB/s | ${aws_up} MiB/s | $(echo "scale=2; $kiln_up / $aws_up" | bc) |"
echo "| download | ${kiln_down} MiB/s | ${aws_down} MiB/s | $(echo "scale=2; $kiln_down / $aws_down" | bc) |"

mkdir -p "$work/shot"
scene="$work/shot/scene.blend"
blender -b -Y --factory-startup --python "$repo/examples/make_scene.py" -- "$scene" >/dev/null
"$bin/kiln" render "$scene" --frames "1-$frames" --fps 24 --chunk 1 --out "$work/out" \
  --gateway "$(jq -r .gateway_grpc "$work/.kiln/dev.json")" --token "$token" >"$work/render.log"
grep -E "^bundle|^downloaded" "$work/render.log"
hits=0; misses=0; bytes=0
for ops in $(ETCDCTL_API=3 etcdctl --endpoints "$etcd" get --prefix /kiln/services/worker --print-value-only | jq -r .ops); do
  m=$(curl -sS "http://$ops/metrics")
  value() { echo "$m" | awk -v n="$1" '$1 == n {print $2}' | head -1; }
  h=$(value worker_cache_hits_total); s=$(value worker_cache_misses_total); b=$(value worker_cache_downloaded_bytes_total)
  echo "worker $ops: hits ${h:-0}, misses ${s:-0}, downloaded ${b:-0} bytes"
  hits=$((hits + ${h:-0})); misses=$((misses + ${s:-0})); bytes=$((bytes + ${b:-0}))
done
echo "cache: $hits hits, $misses misses, hit rate $(echo "scale=3; $hits / ($hits + $misses)" | bc), $bytes bytes downloaded"
