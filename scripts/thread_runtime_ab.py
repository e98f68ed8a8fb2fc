"""Images/s of a network at 90 % (``benchmarks/peers.pruned_model``) as a compiled plan and as
sparsify's per-layer modules, for an A/B of the native thread door: run it once per setting
(``PRUNECAL_THREAD_RUNTIME=pool`` / ``auto``), or from two checkouts, alternating rounds.

    for r in 1 2 3; do for rt in pool auto; do PRUNECAL_THREAD_RUNTIME=$rt python scripts/thread_runtime_ab.py; done; done

Best of 5 windows of 0.4 s per configuration (batch 1 on 1 and 2 threads, batch 64 on 2).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(ROOT, "benchmarks"), ROOT]

import peers  # noqa: E402

import prunecal  # noqa: E402
from prunecal import _C  # noqa: E402
from prunecal.sparse import sparsify  # noqa: E402
from prunecal.sparse.plan import compile_plan  # noqa: E402


def images_per_s(fn, x: torch.Tensor) -> float:
    with torch.no_grad():
        for _ in range(3):
            fn(x)
        best = 0.0
        for _ in range(5):
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < 0.4:
                fn(x)
                n += 1
            best = max(best, n * x.shape[0] / (time.perf_counter() - t0))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--net", default="resnet56")
    ap.add_argument("--sparsity", type=float, default=0.9)
    a = ap.parse_args()
    m = peers.pruned_model(a.net, a.sparsity)
    runtime = getattr(_C, "thread_runtime", lambda: "pool (no thread_runtime)")()
    out = []
    for what in ("plan", "layers"):
        for b, t in ((1, 1), (1, 2), (64, 2)):
            torch.set_num_threads(t)
            fn = compile_plan(m, "csr", threads=t) if what == "plan" else sparsify(m, "csr", plan=False, threads=t)
            out.append(f"{what} b{b}/t{t} {images_per_s(fn, peers.sample_input(b)):,.0f}")
    print(f"{os.path.dirname(os.path.dirname(prunecal.__file__))} [{runtime}] {a.net}: " + " | ".join(out), flush=True)


if __name__ == "__main__":
    main()
