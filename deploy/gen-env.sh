#!/usr/bin/env bash
# Writes deploy/.env with fresh random credentials for docker compose.
# Credentials are made here, on your machine, and never committed.
set -euo pipefail
env_file="$(cd "$(dirname "$0")" && pwd)/.env"
[ -f "$env_file" ] && { echo "$env_file exists; delete it to make new credentials"; exit 0; }
hex() { head -c "$1" /dev/urandom | od -An -tx1 | tr -d ' \n'; }
cat >"$env_file" <<ENV
KILN_S3_ACCESS_KEY=GK$(hex 12)
KILN_S3_SECRET_KEY=$(hex 32)
GARAGE_RPC_SECRET=$(hex 32)
POSTGRES_PASSWORD=$(hex 16)
ENV
chmod 600 "$env_file"
echo "wrote $env_file"
