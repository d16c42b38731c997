#!/usr/bin/env bash
# Generates the Python gRPC code for proto/tallystick/v1/*.proto into proto/gen/
# (imported as tallystick.proto). Reproducible: the same grpcio-tools version gives
# byte-identical files, so CI can regenerate and diff (scripts/check_proto.sh).
#
# Usage: scripts/gen_proto.sh [PYTHON] [OUT_DIR]   (defaults: .venv/bin/python, proto/gen)
set -euo pipefail
cd "$(dirname "$0")/.."

# The generator version is pinned: another version writes different (and differently
# version-checked) code. Change it together with the grpcio/protobuf lower bounds in pyproject.
GRPCIO_TOOLS_VERSION=1.85.1

python=${1:-.venv/bin/python}
out=${2:-proto/gen}

have=$("$python" -c 'import importlib.metadata as m; print(m.version("grpcio-tools"))')
if [[ "$have" != "$GRPCIO_TOOLS_VERSION" ]]; then
    echo "gen_proto: grpcio-tools $have is installed, $GRPCIO_TOOLS_VERSION is pinned" >&2
    exit 2
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mapfile -t protos < <(find proto/tallystick/v1 -name '*.proto' | LC_ALL=C sort)
"$python" -m grpc_tools.protoc -I proto \
    --python_out="$work" --pyi_out="$work" --grpc_python_out="$work" "${protos[@]}"

mkdir -p "$out"
rm -f "$out"/*_pb2.py "$out"/*_pb2.pyi "$out"/*_pb2_grpc.py
# protoc writes absolute imports (`from tallystick.v1 import x_pb2`); the modules live in
# tallystick.proto, so make them relative.
for file in "$work"/tallystick/v1/*; do
    sed -e 's/^from tallystick\.v1 import /from . import /' "$file" >"$out/$(basename "$file")"
done
cat >"$out/__init__.py" <<PY
"""Generated gRPC code for proto/tallystick/v1 (grpcio-tools $GRPCIO_TOOLS_VERSION).

Do not edit: run \`make proto\` (scripts/gen_proto.sh). CI fails when this is stale.
"""
PY
echo "gen_proto: wrote $(find "$out" -name '*.py*' | wc -l) files to $out"
