"""A/B of the plan's lanes section on one network: the same compiled plan with
PRUNECAL_PLAN_LANES=0 and with the given limits, interleaved (3 rounds of about 1 s each, the
benchmarks' timing loop ``deepsparse_runner.measure``: images/s from the median call; best
round), checking that every setting gives the same bits.

    python scripts/lanes_ab.py NET BATCH THREADS LIMITS        # e.g. vgg16_bn 8 2 0,16

NET: a prunecal model name, pruned to 90 % by global magnitude (every conv but the stem):
``peers.pruned_model`` of benchmarks/peers.py (pretrained where the checkpoint exists, else the
default initialisation with randomised BN statistics), as the benchmarks use.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import peers  # noqa: E402
from deepsparse_runner import measure  # noqa: E402
from prunecal.sparse.plan import compile_plan  # noqa: E402


def main(argv: list[str]) -> None:
    if len(argv) != 4:
        sys.exit(__doc__)
    name, batch, threads, limits = argv[0], int(argv[1]), int(argv[2]), argv[3].split(",")
    pruned = peers.pruned_model(name, 0.9)
    torch.set_num_threads(threads)
    plan = compile_plan(pruned, "csr", threads=threads)
    x = torch.randn(batch, 3, 32, 32)
    best = {px: 0.0 for px in limits}
    ref = None
    with torch.no_grad():
        for _ in range(3):
            for px in limits:
                os.environ["PRUNECAL_PLAN_LANES"] = px
                y = plan(x)
                if ref is None:
                    ref = y
                if not torch.equal(y, ref):
                    sys.exit(f"PRUNECAL_PLAN_LANES={px}: different bits (max diff {(y - ref).abs().max():.3g})")
                best[px] = max(best[px], measure(lambda: plan(x), batch, 1.0)["images_per_s"])
    for px in limits:
        print(f"{name} batch {batch} threads {threads} PRUNECAL_PLAN_LANES={px}: {best[px]:.0f} img/s")


if __name__ == "__main__":
    main(sys.argv[1:])
