#!/usr/bin/env bash
# Development build: compile prunecal._C into the source tree (git-ignored) so that
# `python -m pytest` from the repository root uses it. CI and users run `pip install .` instead.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
py="${PYTHON:-python3}"
build="$root/build/dev"
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE="${BUILD_TYPE:-Release}" \
  -DPython_EXECUTABLE="$(command -v "$py")" -Dpybind11_DIR="$("$py" -m pybind11 --cmakedir)" >/dev/null
cmake --build "$build"
so=$(ls "$build"/_C*.so)
cp "$so" "$root/prunecal/.tmp_$(basename "$so")"
mv -f "$root/prunecal/.tmp_$(basename "$so")" "$root/prunecal/$(basename "$so")"
echo "built $(basename "$so")"
