#!/usr/bin/env bash
# AArch64 check on an x86-64 Debian/Ubuntu machine: cross-builds the native kernel test program
# (csrc/tests/test_kernels.cpp: the NEON and generic kernels and the plan against a scalar
# reference) and the whole extension module prunecal._C for AArch64, checks that the module
# holds the NEON kernels and no x86 code generator, and runs the test program under qemu-user.
#
#   scripts/test_aarch64.sh [test_kernels options, e.g. --seed 7 --cases 100]
#
# Installs what is missing from Debian packages (crossbuild-essential-arm64, qemu-user; as
# root or through sudo). Environment: BUILD_DIR (default build/aarch64), SKIP_EXTENSION=1 skips
# the module build (it needs pybind11 in the host Python; it is compiled against the host's
# Python headers, so it proves that every source compiles and links for AArch64 but is not
# imported: no AArch64 Python here). Cost on the 2-core development machine: see README.md.
# Emulation says nothing about speed (docs/performance.md, "ARM").
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
build="${BUILD_DIR:-$root/build/aarch64}"
t0=$(date +%s)

need=()
command -v aarch64-linux-gnu-g++ >/dev/null || need+=(crossbuild-essential-arm64)
command -v qemu-aarch64 >/dev/null || need+=(qemu-user)
if ((${#need[@]})); then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  echo "== installing ${need[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi
gen=()
command -v ninja >/dev/null && gen=(-G Ninja)
sysroot=/usr/aarch64-linux-gnu

echo "== cross-building the native test program ($(aarch64-linux-gnu-g++ -dumpfullversion))"
cmake -S "$root" -B "$build/test" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_TOOLCHAIN_FILE="$root/cmake/aarch64-linux-gnu.cmake" \
  -DPRUNECAL_EXTENSION=OFF -DPRUNECAL_NATIVE_TESTS=ON >/dev/null
cmake --build "$build/test"
file -b "$build/test/test_kernels" | grep -q "ARM aarch64" || { echo "test_kernels is not an AArch64 binary"; exit 1; }

if [ "${SKIP_EXTENSION:-0}" != 1 ]; then
  py="${PYTHON:-python3}"
  echo "== cross-building the extension module (all of csrc/, host Python headers)"
  cmake -S "$root" -B "$build/ext" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_TOOLCHAIN_FILE="$root/cmake/aarch64-linux-gnu.cmake" \
    -DPython_EXECUTABLE="$(command -v "$py")" \
    -DPython_INCLUDE_DIR="$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')" \
    -Dpybind11_DIR="$("$py" -m pybind11 --cmakedir)" >/dev/null
  cmake --build "$build/ext"
  so=$(ls "$build"/ext/_C*.so)
  file -b "$so" | grep -q "ARM aarch64" || { echo "$so is not an AArch64 module"; exit 1; }
  # the NEON kernel set is in, the x86-64 code generator (xbyak) is not
  syms=$(aarch64-linux-gnu-nm -C "$build"/ext/CMakeFiles/_C.dir/csrc/*.o 2>/dev/null)
  grep -q "prunecal::neon_kernels()" <<<"$syms" || { echo "no NEON kernels in the module"; exit 1; }
  if grep -qi "xbyak" <<<"$syms"; then echo "x86 code generator (xbyak) in the AArch64 module"; exit 1; fi
  echo "module: $(basename "$so"): $(file -b "$so" | cut -d, -f1-2)"
fi

echo "== running test_kernels under $(qemu-aarch64 --version | head -1)"
qemu-aarch64 -L "$sysroot" "$build/test/test_kernels" "$@"
echo "== test_aarch64.sh passed in $(( $(date +%s) - t0 )) s"
