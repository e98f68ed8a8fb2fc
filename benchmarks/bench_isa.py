"""ResNet-56 at 90 % on each ISA path: sparsify's plan against torch dense, one process per path.

Pretrained ResNet-56 (``../shared/data/weights``; random weights with randomised BN statistics
where the checkpoint is missing), every conv except the 3-channel stem globally
magnitude-pruned to 90 % (``benchmarks/peers.pruned_model``), batch 1 on 1 and 2 threads and
batch 64 on 2 threads, as

- ``eager``: the pruned model in torch eager mode (zeros stored dense; the baseline),
- ``eager-cl``: the same, channels_last input and weights,
- ``sparsify``: ``prunecal.sparse.sparsify(model, "csr")`` (the whole-network plan),
- ``plan-fixed``: ``compile_plan(model, "csr", jit=False)`` (no generated kernels).

The ISA path is chosen once per process (``PRUNECAL_ISA``), so each path is one run; the ratios
that mean something are those within one run (same process, interleaved in time by pytest's
order)::

    for isa in avx2 avx512; do PRUNECAL_ISA=$isa python -m pytest benchmarks/bench_isa.py --benchmark-only -q \\
        --benchmark-json=/tmp/bench_isa_$isa.json; done
    python benchmarks/bench_isa.py /tmp/bench_isa_avx2.json /tmp/bench_isa_avx512.json

``PRUNECAL_BENCH_SECONDS`` (default 1.0) is the target measuring time per case.

Batch 1 on 2 threads against 1 thread, interleaved windows in one process (``--scaling``)::

    for isa in avx2 avx512; do PRUNECAL_ISA=$isa python benchmarks/bench_isa.py --scaling; done

CPU time per image and stage (one thread, ``Plan.profile``: robust to a shared machine), e.g. the
AVX2 generated kernels against the fixed AVX2 tiles::

    for env in "PRUNECAL_ISA=avx2" "PRUNECAL_ISA=avx2 PRUNECAL_NO_JIT=1" "PRUNECAL_ISA=avx512" \
               "PRUNECAL_ISA=avx512 PRUNECAL_NO_JIT=1"; do env $env python benchmarks/bench_isa.py --profile; done
"""
from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # harness, peers
import peers  # noqa: E402
from harness import bench_forward  # noqa: E402

RUNNERS = ("eager", "eager-cl", "sparsify", "plan-fixed")
CASES = ((1, 1), (1, 2), (64, 2))  # (batch, threads)
TARGET_S = float(os.environ.get("PRUNECAL_BENCH_SECONDS", "1.0"))


@functools.lru_cache(maxsize=None)
def prepared(runner: str, threads: int) -> nn.Module:
    model = peers.pruned_model("resnet56", 0.9)
    if runner == "eager":
        return model
    if runner == "eager-cl":
        return _ChannelsLast(model)
    from prunecal.sparse import sparsify
    from prunecal.sparse.plan import PlanModule, compile_plan

    if runner == "sparsify":
        out = sparsify(model, "csr", threads=threads)
        assert isinstance(out, PlanModule), out.sparsify_report.plan_unsupported
        return out
    return compile_plan(model, "csr", threads=threads, jit=False)


class _ChannelsLast(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        import copy

        self.m = copy.deepcopy(model).to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.m(x.contiguous(memory_format=torch.channels_last))


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"b{c[0]}-t{c[1]}")
@pytest.mark.parametrize("runner", RUNNERS)
def test_resnet56_s90(benchmark, runner, case):
    batch, threads = case
    isa = "-"
    if runner not in ("eager", "eager-cl"):
        pytest.importorskip("prunecal._C")
        from prunecal import _C

        isa = _C.isa_path()
    model = prepared(runner, threads)
    x = peers.sample_input(batch)
    bench_forward(benchmark, model, x, threads, target_s=TARGET_S, warmups=2, min_rounds=5, max_rounds=3000,
                  warmup_rounds=1, runner=runner, batch=batch, isa=isa,
                  path=os.environ.get("PRUNECAL_ISA") or "auto")


def table(*json_paths: str) -> str:
    """Markdown: images/s (median call) per path and case, ratio to ``eager`` of the same run."""
    rows = []
    for p in json_paths:
        data = json.loads(Path(p).read_text())
        res: dict[tuple, dict[str, float]] = {}
        path = "?"
        for b in data["benchmarks"]:
            e = b["extra_info"]
            if e["isa"] != "-":
                path = e["isa"]
            res.setdefault((e["batch"], e["threads"]), {})[e["runner"]] = e["batch"] / b["stats"]["median"]
        for key in sorted(res):
            r = res[key]
            base = r.get("eager")
            cells = [("-" if c not in r else f"{r[c]:,.0f}" if c == "eager" or not base
                      else f"{r[c]:,.0f} ({r[c] / base:.2f}x)") for c in RUNNERS]
            rows.append(f"| {path} | {key[0]} | {key[1]} | " + " | ".join(cells) + " |")
    head = ["| path | batch | threads | " + " | ".join(f"{c} img/s" for c in RUNNERS) + " |",
            "|---|---|---|" + "---|" * len(RUNNERS)]
    return "\n".join(head + rows)


def profile(reps: int = 7) -> str:
    """One line: this process's path, CPU us per image (best of ``reps`` profiles of 8 images x 5)
    in total and per stage (output plane size)."""
    from prunecal import _C
    from prunecal.sparse.plan import compile_plan

    torch.set_num_threads(1)
    pm = compile_plan(peers.pruned_model("resnet56", 0.9), "csr", threads=1)
    x = peers.sample_input(8).numpy()
    best = None
    for _ in range(reps):
        t = pm.plan.profile(x, 5)
        best = t if best is None else [min(a, b) for a, b in zip(best, t)]
    stages: dict[str, float] = {}
    for line, v in zip(pm.plan.describe(), best):
        if line.startswith("conv"):
            shape = line.split("->")[-1].split("(")[1].split(",")[0].split(")")[0]
            stages[shape] = stages.get(shape, 0.0) + v / 40 * 1e6
    c = _C.isa_config()
    return (f"isa={c['isa']} jit={c['jit']}: {sum(best) / 40 * 1e6:.0f} us/image; convs by output "
            + ", ".join(f"{k} {v:.0f} us" for k, v in stages.items()))


def scaling(rounds: int = 20, window_s: float = 0.25) -> str:
    """Batch 1 on 1 vs 2 threads, interleaved in one process: sparsify's plan on 1 thread, on 2
    threads in mode auto (team or one thread, as measured) and in mode "op" (the team always);
    images/s of the median call per window, best and median window of ``rounds``."""
    import time

    from prunecal import _C
    from prunecal.sparse import sparsify

    model = peers.pruned_model("resnet56", 0.9)
    x = peers.sample_input(1)
    runs = {"t1": sparsify(model, "csr", threads=1), "t2-auto": sparsify(model, "csr", threads=2),
            "t2-op": sparsify(model, "csr", threads=2)}
    runs["t2-op"].mode = "op"
    rates: dict[str, list[float]] = {k: [] for k in runs}
    with torch.inference_mode():
        for m in runs.values():
            for _ in range(20):
                m(x)
        for _ in range(rounds):
            for k, m in runs.items():
                calls = []
                t0 = time.perf_counter()
                while time.perf_counter() - t0 < window_s:
                    a = time.perf_counter()
                    m(x)
                    calls.append(time.perf_counter() - a)
                calls.sort()
                rates[k].append(1.0 / calls[len(calls) // 2])
    best = {k: max(v) for k, v in rates.items()}
    med = {k: sorted(v)[len(v) // 2] for k, v in rates.items()}
    return (f"isa={_C.isa_path()} batch 1, img/s best / median window: "
            + ", ".join(f"{k} {best[k]:,.0f} / {med[k]:,.0f}" for k in runs)
            + f"; 2 threads / 1 thread (best windows): auto {best['t2-auto'] / best['t1']:.2f}x, "
              f"op {best['t2-op'] / best['t1']:.2f}x")


if __name__ == "__main__":
    arg = sys.argv[1:]
    print(profile() if arg == ["--profile"] else scaling() if arg == ["--scaling"] else table(*arg))
