"""Time one ONNX model with DeepSparse; run by the DeepSparse venv's python, prints one JSON line.

DeepSparse is an optional comparator, never a prunecal dependency: it lives in its own venv
(``scripts/setup_peers.sh``) and :func:`peers.run_deepsparse` drives this script through a
subprocess. The script needs only the standard library, numpy and deepsparse (no torch, no
prunecal); :func:`measure` is also imported by ``peers.py`` so that every runtime is timed by
the same loop.

Usage::

    .venv-deepsparse/bin/python benchmarks/deepsparse_runner.py MODEL.onnx --batch 64 \
        --threads 2 [--seconds 2] [--input x.npy --reference logits.npy] [--isa avx2]

``--isa avx2`` makes DeepSparse compile AVX2 code on an AVX-512 CPU, as on an AVX2-only one:
the engine is given its own CPU topology (``arch.bin --output=full``) with ``isa`` rewritten,
through ``NM_ARCH_FILE``, and ``NM_ARCH`` picks its AVX2 binary (``NM_ARCH`` alone still JITs
AVX-512 code; why and how it was checked: docs/performance.md, "An AVX2-only machine"). The
engine's banner on stdout names what it compiled for: ``system=avx2, binary=avx2``.

Output (stdout, one line): ``{"runtime": "deepsparse", "version": ..., "batch": ...,
"threads": ..., "images_per_s": ..., "median_s": ..., "rounds": ..., "compile_s": ...,
"max_abs_diff": ... | null, "isa_asked": ...}``. Errors: a message on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from typing import Any, Callable, NoReturn


def measure(fn: Callable[[], Any], batch: int, seconds: float = 2.0, *, warmup: int = 3,
            min_rounds: int = 5, max_rounds: int = 2000) -> dict[str, float]:
    """Time ``fn()`` (one batch of ``batch`` images per call) and summarise.

    Untimed warm-up calls (``warmup`` of them, or fewer, but at least one, once they have
    taken ``seconds / 4``), then ``rounds`` timed calls with ``rounds`` chosen so that they
    last about ``seconds`` (clamped to ``[min_rounds, max_rounds]``). Images/s is computed
    from the MEDIAN call time (robust to the other jobs of a shared machine).

    Returns: ``images_per_s``, ``median_s``, ``mean_s``, ``min_s``, ``stdev_s`` (seconds per
    call) and ``rounds``.
    """
    if batch < 1 or seconds <= 0:
        raise ValueError(f"batch must be >= 1 and seconds > 0, got batch={batch}, seconds={seconds}")
    start = time.perf_counter()
    for _ in range(max(warmup, 1)):
        t0 = time.perf_counter()
        fn()
        once = max(time.perf_counter() - t0, 1e-7)  # the last warm-up call sizes the loop
        if t0 - start + once > seconds / 4:
            break
    rounds = int(min(max_rounds, max(min_rounds, math.ceil(seconds / once))))
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return {"images_per_s": batch / med, "median_s": med, "mean_s": statistics.fmean(times),
            "min_s": min(times), "stdev_s": statistics.pstdev(times), "rounds": rounds}


ISAS = ("native", "avx2", "avx512")
"""``--isa`` values: ``native`` (what the engine detects), or the ISA to describe to it."""
_AVX512_ONLY = ("vnni", "bf16", "vbmi", "vbmi2")  # arch.bin flags an AVX2-only x86 CPU lacks


def describe_cpu_as(isa: str, workdir: str | None) -> None:
    """Make DeepSparse (imported after this call) compile for ``isa``: run its ``arch.bin
    --output=full`` (the whole topology: every hardware thread) with no ``NM_ARCH*`` variable,
    rewrite the ISA (``avx2``: also clear the AVX-512-only flags), write the JSON into
    ``workdir`` and point ``NM_ARCH_FILE`` / ``NM_ARCH`` at it. ``native``: drop any inherited
    ``NM_ARCH`` / ``NM_ARCH_FILE`` (the engine probes the CPU itself). Raises RuntimeError where
    deepsparse or its probe is missing, the probe prints no JSON, or ``isa`` is one the CPU lacks
    (``avx512`` on an AVX2-only CPU)."""
    if isa not in ISAS:
        raise RuntimeError(f"unknown ISA {isa!r}; expected one of {', '.join(ISAS)}")
    for var in ("NM_ARCH", "NM_ARCH_FILE"):
        os.environ.pop(var, None)
    if isa == "native":
        return
    import importlib.util
    import subprocess

    spec = importlib.util.find_spec("deepsparse")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("deepsparse is not installed in this interpreter")
    probe = os.path.join(list(spec.submodule_search_locations)[0], "arch.bin")
    if not os.access(probe, os.X_OK):
        raise RuntimeError(f"DeepSparse's CPU probe {probe} is missing")
    try:
        arch = json.loads(subprocess.run([probe, "--output=full"], capture_output=True, text=True,
                                         check=True).stdout)
    except (subprocess.CalledProcessError, json.JSONDecodeError) as e:
        raise RuntimeError(f"{probe} printed no CPU description: {e}") from e
    if isa == "avx512" and arch.get("isa") != "avx512":
        raise RuntimeError(f"this CPU has no AVX-512 (DeepSparse's probe says isa={arch.get('isa')})")
    arch["isa"] = isa
    if isa == "avx2":
        arch.update({k: False for k in _AVX512_ONLY if k in arch})
    path = os.path.join(workdir, f"nm_arch_{isa}.json")
    with open(path, "w") as f:
        json.dump(arch, f)
    os.environ["NM_ARCH_FILE"] = path
    os.environ["NM_ARCH"] = isa


def _fail(msg: str) -> NoReturn:
    print(f"deepsparse_runner: {msg}", file=sys.stderr)
    sys.exit(2)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", help="ONNX file with one float32 NCHW input of static shape")
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--threads", type=int, required=True, help="DeepSparse num_cores")
    ap.add_argument("--seconds", type=float, default=2.0, help="target timed seconds (default 2)")
    ap.add_argument("--input", help=".npy float32 (batch, C, H, W) input; random N(0,1) otherwise")
    ap.add_argument("--reference", help=".npy expected output for --input (reports max_abs_diff)")
    ap.add_argument("--isa", choices=ISAS, default="native",
                    help="ISA to compile for (default native; avx2: as on an AVX2-only CPU)")
    a = ap.parse_args(argv)
    if a.batch < 1 or a.threads < 1 or a.seconds <= 0:
        _fail(f"--batch and --threads must be >= 1 and --seconds > 0 (got {a.batch}, {a.threads}, {a.seconds})")
    if not os.path.isfile(a.model):
        _fail(f"model file not found: {a.model}")
    if a.reference and not a.input:
        _fail("--reference needs --input")
    os.environ.setdefault("NM_DISABLE_ANALYTICS", "1")  # no network calls from the engine
    workdir = None
    if a.isa != "native":
        import atexit
        import shutil
        import tempfile

        workdir = tempfile.mkdtemp(prefix="deepsparse_runner_")  # the engine reads NM_ARCH_FILE late
        atexit.register(shutil.rmtree, workdir, True)
    try:
        describe_cpu_as(a.isa, workdir)
        import numpy as np
        import deepsparse
        from deepsparse.cpu import cpu_architecture
    except ImportError as e:
        _fail(f"cannot import deepsparse in {sys.executable}: {e} (run scripts/setup_peers.sh)")
    except RuntimeError as e:
        _fail(f"--isa {a.isa}: {e}")
    cores = cpu_architecture().num_available_physical_cores
    if a.isa != "native" and cores < a.threads:
        _fail(f"--isa {a.isa}: the CPU description gives DeepSparse {cores} cores, fewer than --threads {a.threads}")

    if a.input:
        x = np.load(a.input).astype(np.float32, copy=False)
        if x.ndim != 4 or x.shape[0] != a.batch:
            _fail(f"--input must have shape ({a.batch}, C, H, W), got {x.shape}")
    else:
        x = np.random.default_rng(0).standard_normal((a.batch, 3, 32, 32), dtype=np.float32)
    x = np.ascontiguousarray(x)

    t0 = time.perf_counter()
    try:
        engine = deepsparse.compile_model(a.model, batch_size=a.batch, num_cores=a.threads)
    except Exception as e:  # the engine's own errors are plain RuntimeErrors/ValueErrors
        _fail(f"compile_model({a.model!r}, batch_size={a.batch}, num_cores={a.threads}) failed: {e}")
    compile_s = time.perf_counter() - t0

    out = engine([x])[0]
    diff = None
    if a.reference:
        ref = np.load(a.reference)
        if ref.shape != out.shape:
            _fail(f"--reference shape {ref.shape} != engine output shape {out.shape}")
        diff = float(np.max(np.abs(out.astype(np.float64) - ref)))
    stats = measure(lambda: engine([x]), a.batch, a.seconds)
    print(json.dumps({"runtime": "deepsparse", "version": deepsparse.__version__,
                      "batch": a.batch, "threads": a.threads, **stats,
                      "compile_s": compile_s, "max_abs_diff": diff,
                      "engine_cores": getattr(engine, "num_cores", None), "isa_asked": a.isa}))


if __name__ == "__main__":
    main()
