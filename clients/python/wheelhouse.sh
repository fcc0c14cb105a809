#!/usr/bin/env bash
# Fills DIR with every wheel installing kiln-client needs (wheelhouse.txt), so
# `pip install --no-index --find-links DIR clients/python` works offline.
# Quick when DIR already holds this list's wheels (a stamp names the list's hash).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dest=${1:?usage: wheelhouse.sh DIR}
stamp="$dest/.done-$(sha256sum "$here/wheelhouse.txt" | cut -c1-16)"
[ -e "$stamp" ] && exit 0
mkdir -p "$dest"
# Debian's python3 has no pip module of its own; a venv brings one.
[ -x "$dest/.tool/bin/pip" ] || python3 -m venv "$dest/.tool"
"$dest/.tool/bin/pip" download --quiet --disable-pip-version-check --dest "$dest" -r "$here/wheelhouse.txt"
touch "$stamp"
