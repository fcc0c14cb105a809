#!/usr/bin/env bash
# Writes the credentials docker compose needs into ./.env at the repository's
# root (where compose reads it), or into FILE: fresh random values made on
# this machine, never committed. Also makes ./kiln-out/compose, where the
# `example` service writes its render, owned by the uid it runs as.
#   deploy/gen-env.sh [FILE]
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
env_file=${1:-$repo/.env}
if [ -f "$env_file" ]; then
  echo "$env_file exists; delete it to make new credentials (and 'docker compose down -v' the old farm)"
  exit 0
fi
hex() { head -c "$1" /dev/urandom | od -An -tx1 | tr -d ' \n'; }
# The example writes its render as you, so you own the files; as root it
# uses the images' own uid instead, since Kiln's containers never run as root.
uid=$(id -u)
[ "$uid" -eq 0 ] && uid=10001
out="$repo/kiln-out/compose"
mkdir -p "$out"
[ "$(id -u)" -eq 0 ] && chown "$uid:$uid" "$out"
umask 077
cat >"$env_file" <<ENV
# Made by deploy/gen-env.sh on $(date -u +%Y-%m-%dT%H:%M:%SZ). Keep it private.
POSTGRES_PASSWORD=$(hex 24)
GARAGE_RPC_SECRET=$(hex 32)
KILN_S3_ACCESS_KEY=GK$(hex 12)
KILN_S3_SECRET_KEY=$(hex 32)
# Workers present it to the scheduler and the assets service.
KILN_JOIN_TOKEN=$(hex 32)
# The gateway, scheduler and assets service present it to each other.
KILN_SERVICE_TOKEN=$(hex 32)
# The gateway's first admin token; deploy/admin-token.sh prints it.
KILN_BOOTSTRAP_ADMIN_TOKEN=kiln_$(hex 32)
KILN_UID=$uid
ENV
echo "wrote $env_file"
