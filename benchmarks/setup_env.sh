#!/usr/bin/env bash
# Creates the benchmark's own virtualenv in benchmarks/.venv (separate from the core's environment:
# torch + transformers are large and only the benchmark needs them).
#   bash benchmarks/setup_env.sh            # create / update
#   PYTHON=python3.11 bash benchmarks/setup_env.sh
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
PY="${PYTHON:-python3.11}"
VENV="$HERE/.venv"

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip"
$PIP install --upgrade pip setuptools wheel

# PyTorch (CPU use only; pip on Python 3.11 takes these from local disk).
$PIP install torch==2.14.1 torchvision==0.29.1
# transformers 5.x has DabDetrForObjectDetection; 5.23 is the version FINDINGS.md measured with.
$PIP install transformers==5.23.0
# The peers and tooling the benchmark compares against / uses.
$PIP install onnx==1.23.2 onnxruntime-gpu==1.31.1 onnxsim==0.8.1 onnxslim polygraphy==0.53.6 \
  onnxscript onnx-graphsurgeon psutil tensorrt-rtx networkx click numpy

# fuser itself, editable; may fail while the core's pyproject is incomplete: not fatal.
$PIP install -e "$HERE/.." || echo "setup_env.sh: 'pip install -e $HERE/..' failed (fuser core not installable yet); continuing" >&2

"$VENV/bin/python" - <<'PY'
import importlib
for m in ["torch", "torchvision", "transformers", "onnx", "onnxruntime", "onnxsim", "onnxslim",
          "polygraphy", "onnxscript", "onnx_graphsurgeon", "tensorrt_rtx", "networkx", "fuser"]:
    try:
        mod = importlib.import_module(m)
        print(f"{m:20s} {getattr(mod, '__version__', '?')}")
    except Exception as e:  # noqa: BLE001
        print(f"{m:20s} NOT IMPORTABLE: {type(e).__name__}: {e}")
PY
echo "benchmark env ready: $VENV"
