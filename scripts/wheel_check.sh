#!/usr/bin/env bash
# Proves `pip install .` works: build the wheel, install it into a clean venv, and
# check that the verifier and CLI import and that no generic top-level module leaks.
set -euo pipefail
python=$1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$python" -m build --wheel --outdir "$work/dist" . >/dev/null
"$python" -m venv "$work/venv"
"$work/venv/bin/pip" install --quiet "$work"/dist/tallystick-*.whl
cd "$work"
"$work/venv/bin/python" - <<'PY'
import importlib.util
import sys

import tallystick.verifier

for name in ("daemon", "sdk", "verifier"):
    assert importlib.util.find_spec(name) is None, f"wheel installs a top-level {name!r} module"
for banned in ("grpc", "torch"):
    assert banned not in sys.modules, f"tallystick.verifier imported {banned}"
print("wheel-check: tallystick.verifier", tallystick.verifier.__version__, "imports cleanly")
PY
"$work/venv/bin/tallystick" --help >/dev/null
echo "wheel-check: tallystick console script runs"
