#!/usr/bin/env bash
# Prints the Secret "kiln-credentials" with fresh random credentials, made on
# this machine and never committed. Apply it once, before the rest:
#   ./deploy/k8s/gen-secret.sh | kubectl apply -f -
# Making it again changes every password: Postgres and Garage keep the ones
# their volumes were first made with. The admin token, later:
#   kubectl -n kiln get secret kiln-credentials -o jsonpath='{.data.admin-token}' | base64 -d
set -euo pipefail
hex() { head -c "$1" /dev/urandom | od -An -tx1 | tr -d ' \n'; }
postgres_password=$(hex 24)
cat <<YAML
apiVersion: v1
kind: Secret
metadata:
  name: kiln-credentials
  namespace: kiln
type: Opaque
stringData:
  postgres-password: "$postgres_password"
  database-url: "postgres://kiln:$postgres_password@postgres.kiln.svc:5432/kiln"
  garage-rpc-secret: "$(hex 32)"
  s3-access-key: "GK$(hex 12)"
  s3-secret-key: "$(hex 32)"
  join-token: "$(hex 32)"
  service-token: "$(hex 32)"
  admin-token: "kiln_$(hex 32)"
YAML
