"""Images/s of a network at 90 % (``benchmarks/peers.pruned_model``) as a compiled plan and as
sparsify's per-layer modules, for an A/B of the native thread door: run it once per setting
(``PRUNECAL_THREAD_RUNTIME=pool`` / ``auto``), or from two checkouts, alternating rounds.

    for r in 1 2 3; do for rt in pool auto; do PRUNECAL_THREAD_RUNTIME=$rt python scripts/thread_runtime_ab.py; done; done

Images/s from the median call of about 2 s per configuration (``deepsparse_runner.measure``, the
benchmarks' one timing loop), batch 1 on 1 and 2 threads, batch 64 on 2.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(ROOT, "benchmarks"), ROOT]

import peers  # noqa: E402
from deepsparse_runner import measure  # noqa: E402

import prunecal  # noqa: E402
from prunecal import _C  # noqa: E402
from prunecal.sparse import sparsify  # noqa: E402
from prunecal.sparse.plan import compile_plan  # noqa: E402


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
            x = peers.sample_input(b)
            with torch.no_grad():
                rate = measure(lambda: fn(x), b, 2.0)["images_per_s"]
            out.append(f"{what} b{b}/t{t} {rate:,.0f}")
    print(f"{os.path.dirname(os.path.dirname(prunecal.__file__))} [{runtime}] {a.net}: " + " | ".join(out), flush=True)


if __name__ == "__main__":
    main()
