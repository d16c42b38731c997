#!/usr/bin/env bash
# Fails when the committed generated code in proto/gen differs from what
# scripts/gen_proto.sh writes now for proto/tallystick/v1/*.proto.
#
# Usage: scripts/check_proto.sh [PYTHON]
set -euo pipefail
cd "$(dirname "$0")/.."
python=${1:-.venv/bin/python}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
bash scripts/gen_proto.sh "$python" "$work/_proto" >/dev/null
if ! diff -r --exclude=__pycache__ "$work/_proto" proto/gen; then
    echo "check_proto: proto/gen is stale; run 'make proto' and commit the result" >&2
    exit 1
fi
echo "check_proto: proto/gen is up to date"
