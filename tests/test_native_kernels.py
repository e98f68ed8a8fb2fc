"""The native kernel test program (csrc/tests/test_kernels.cpp: every kernel set of this CPU and
the plan against a scalar reference, no Python involved) built from this checkout's sources
into tmp_path and run; scripts/test_aarch64.sh runs the same program for AArch64 under qemu."""
from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"


def _build_cmake(cmake: str, out: Path) -> Path:
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    subprocess.run([cmake, "-S", str(ROOT), "-B", str(out), *gen, "-DCMAKE_BUILD_TYPE=Release",
                    "-DPRUNECAL_EXTENSION=OFF", "-DPRUNECAL_NATIVE_TESTS=ON"],
                   check=True, capture_output=True, text=True)
    r = subprocess.run([cmake, "--build", str(out), "--parallel", str(min(4, os.cpu_count() or 1))],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    return out / "test_kernels"


def _build_gxx(cxx: str, out: Path) -> Path:
    """Without cmake: the same sources and per-file flags as CMakeLists.txt's test target."""
    srcs = [p for p in sorted(CSRC.glob("*.cpp")) if "bindings" not in p.name and not p.name.startswith("train_")]
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    flags = ["-std=gnu++17", "-O3", "-pthread", f"-I{CSRC}"]
    if x86:
        flags += [f"-isystem{CSRC / 'third_party'}", "-DPRUNECAL_HAVE_AVX2_TU=1"]
    objs = []
    for src in [CSRC / "tests" / "test_kernels.cpp", *srcs]:
        obj = out / (src.stem + ".o")
        extra = ["-mavx2", "-mfma"] if x86 and src.name == "kernels_avx2.cpp" else []
        if not x86 and src.name.endswith("_neon.cpp") and "clang" not in cxx:
            extra = ["-fno-schedule-insns"]
        r = subprocess.run([cxx, *flags, *extra, "-c", str(src), "-o", str(obj)], capture_output=True, text=True)
        assert r.returncode == 0, f"{src.name}: {r.stderr[-4000:]}"
        objs.append(str(obj))
    exe = out / "test_kernels"
    subprocess.run([cxx, "-pthread", *objs, "-o", str(exe)], check=True)
    return exe


@pytest.fixture(scope="module")
def test_kernels_exe(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("native")
    cmake = shutil.which("cmake")
    if cmake:
        return _build_cmake(cmake, out)
    cxx = shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    if not cxx:
        pytest.skip("no C++ compiler (g++ / c++ / clang++) and no cmake on PATH: cannot build csrc/tests/test_kernels.cpp")
    return _build_gxx(cxx, out)


# Choices made once per process by the environment: every variant gets its own run.
VARIANTS = {
    "default": ({}, 300),
    "no-jit": ({"PRUNECAL_NO_JIT": "1"}, 100),
    "no-jit-no-avx512": ({"PRUNECAL_NO_JIT": "1", "PRUNECAL_NO_AVX512": "1"}, 100),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_native_kernels_match_reference(test_kernels_exe, variant, tmp_path):
    env_extra, cases = VARIANTS[variant]
    env = {**os.environ, **env_extra}
    r = subprocess.run([str(test_kernels_exe), "--cases", str(cases), "--seed", str(1000 + len(variant))],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    sys.stdout.write(r.stdout)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
    assert "PASSED" in r.stdout and " 0 failures" in r.stdout
    # the program tested every kernel set this machine offers
    sets = r.stdout.split("kernel sets:")[1].split("(")[0].split()
    assert "generic" in sets
    if platform.machine().lower() in ("aarch64", "arm64"):
        assert "neon" in sets


def test_native_kernels_rejects_bad_arguments(test_kernels_exe):
    r = subprocess.run([str(test_kernels_exe), "--bogus"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "usage" in r.stderr
