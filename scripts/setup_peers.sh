#!/usr/bin/env bash
# Create .venv-deepsparse at the repo root with DeepSparse 1.8.0, the optional peer runtime for
# benchmarks/bench_peers.py and benchmarks/run_peers.py. DeepSparse is never a prunecal
# dependency: it lives in its own venv (it pins numpy<2 and an old onnx) and is driven
# through benchmarks/deepsparse_runner.py in a subprocess.
#
# Usage: scripts/setup_peers.sh [VENV_DIR]      (default: <repo>/.venv-deepsparse)
# Env:   PYTHON=python3.11 (the interpreter for the venv; DeepSparse 1.8.0 ships cp38..cp311 wheels)
# Then:  export PRUNECAL_DEEPSPARSE_PYTHON=<VENV_DIR>/bin/python   (only if VENV_DIR is not the default)
#
# 1.8.0 is pinned: it is the last release with a Python 3.11 wheel that installs; 1.9.0 does not build.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${1:-$ROOT/.venv-deepsparse}"
PY="${PYTHON:-python3.11}"

if ! command -v "$PY" >/dev/null 2>&1; then
    echo "setup_peers: $PY not found; DeepSparse 1.8.0 needs CPython 3.8-3.11" >&2
    exit 1
fi

echo "setup_peers: creating $VENV with $("$PY" --version)"
"$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
# --only-binary: a source build of deepsparse (or of its numpy/onnx pins) is not supported.
# numpy<2: DeepSparse 1.8.0's compiled engine and its onnx pin predate the numpy 2 ABI.
"$VENV/bin/python" -m pip install --only-binary=:all: "deepsparse==1.8.0" "numpy<2"

# Smoke test: import and report the engine's view of the CPU.
NM_DISABLE_ANALYTICS=1 "$VENV/bin/python" - <<'EOF'
import deepsparse, numpy, onnx
from deepsparse.cpu import cpu_architecture
print(f"setup_peers: deepsparse {deepsparse.__version__}, numpy {numpy.__version__}, onnx {onnx.__version__}")
print(f"setup_peers: cpu {cpu_architecture()}")
EOF
echo "setup_peers: done; benchmarks find $VENV/bin/python (or set PRUNECAL_DEEPSPARSE_PYTHON)"
