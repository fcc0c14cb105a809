#!/usr/bin/env bash
# Prints the compose farm's admin token (made by deploy/gen-env.sh), e.g.
#   export KILN_TOKEN=$(./deploy/admin-token.sh)
#   deploy/admin-token.sh [FILE]
set -euo pipefail
env_file=${1:-$(cd "$(dirname "$0")/.." && pwd)/.env}
token=$(sed -n 's/^KILN_BOOTSTRAP_ADMIN_TOKEN=//p' "$env_file" 2>/dev/null || true)
if [ -z "$token" ]; then
  echo "no admin token in $env_file; run deploy/gen-env.sh first" >&2
  exit 1
fi
printf '%s\n' "$token"
