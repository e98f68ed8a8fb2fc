"""Whole-network native plans (``compile_plan``) vs torch eager and per-module ``sparsify``.

CIFAR ResNet-20 / ResNet-56 (pretrained weights from ``../shared/data/weights`` when present,
else random weights with randomised BN statistics), every conv except the 3-channel stem
globally magnitude-pruned to 90 % / 95 % (``prunecal.prune.prune(..., keep_first_conv=True)``),
run at batch 1 and 64 with 1 and 2 threads as

- ``eager``: the pruned model in torch eager mode (zeros stored dense; the baseline),
- ``sparsify-csr`` / ``sparsify-bsr``: :func:`prunecal.sparse.sparsify` with ``plan=False`` (its
  per-layer model, one native call per layer; by default sparsify returns the plan below),
- ``plan-csr`` / ``plan-bsr``: :func:`prunecal.sparse.plan.compile_plan` (one native call per batch).

Run and tabulate (one run; images/s from the median, ratio to eager at the same threads)::

    python -m pytest benchmarks/bench_plan.py --benchmark-only -q --benchmark-json=bench_plan.json
    python benchmarks/bench_plan.py bench_plan.json

Select with ``-k``, e.g. ``-k "resnet56 and s90"``. ``PRUNECAL_BENCH_SECONDS`` (default 1.0) is
the target measuring time per case.

Against the issue's targets (torch eager dense, DeepSparse 1.8 when its venv exists, the plan),
one loop for every runtime, sweeps interleaved and repeated, best sweep per cell::

    python benchmarks/bench_plan.py --compare [--net NAME] [--sparsities 0.9,0.95] [--seconds 2] [--repeats 2] \
        [--plain-layout] [--busy-core]

``--net``: any registered model (pretrained where ``../shared/data/weights`` has it, else the
default initialisation with randomised BN statistics; see ``peers.build_model``).
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

NETS = ("resnet20", "resnet56")
SPARSITIES = (0.9, 0.95)
RUNNERS = ("eager", "sparsify-csr", "sparsify-bsr", "plan-csr", "plan-bsr", "plan-auto")
BATCHES = (1, 64)
THREADS = (1, 2)
TARGET_S = float(os.environ.get("PRUNECAL_BENCH_SECONDS", "1.0"))


@functools.lru_cache(maxsize=None)
def pruned(name: str, sparsity: float) -> nn.Module:
    from prunecal import models
    from prunecal.prune import prune

    ckpt = peers.weights_path(name)
    torch.manual_seed(0)
    model = models.create(name, ckpt)
    if ckpt is None:
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.5, 0.5)
                    m.running_var.uniform_(0.5, 2.0)
                    m.weight.uniform_(0.5, 1.5)
    return prune(model, "global_magnitude", sparsity, keep_first_conv=True).eval()


@functools.lru_cache(maxsize=8)
def prepared(name: str, sparsity: float, runner: str, threads: int) -> nn.Module:
    model = pruned(name, sparsity)
    if runner == "eager":
        return model
    kind, backend = runner.split("-")
    if kind == "sparsify":
        from prunecal.sparse import sparsify

        return sparsify(model, backend, threads=threads, plan=False)  # the per-layer model
    from prunecal.sparse.plan import compile_plan

    return compile_plan(model, backend, threads=threads)


@pytest.mark.parametrize("threads", THREADS, ids=lambda t: f"t{t}")
@pytest.mark.parametrize("batch", BATCHES, ids=lambda b: f"b{b}")
@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize("sparsity", SPARSITIES, ids=lambda s: f"s{int(s * 100)}")
@pytest.mark.parametrize("net", NETS)
def test_plan_network(benchmark, net, sparsity, runner, batch, threads):
    if runner != "eager":
        pytest.importorskip("prunecal._C")
    model = prepared(net, sparsity, runner, threads)
    x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    bench_forward(benchmark, model, x, threads, target_s=TARGET_S, warmups=2, min_rounds=5,
                  max_rounds=2000, warmup_rounds=1, net=net, sparsity=sparsity, runner=runner, batch=batch)


# ---- table ------------------------------------------------------------------------------
def table(*json_paths: str) -> str:
    """Markdown table: images/s (median) and the ratio to eager at the same batch and threads,
    from one or more pytest-benchmark json files (e.g. one run per thread count)."""
    datas = [json.loads(Path(p).read_text()) for p in json_paths]
    data = datas[-1]
    res: dict[tuple, dict[str, float]] = {}
    for b in (b for d in datas for b in d["benchmarks"]):
        e = b["extra_info"]
        res.setdefault((e["net"], e["sparsity"], e["batch"], e["threads"]), {})[e["runner"]] = e["batch"] / b["stats"]["median"]
    cols = [c for c in RUNNERS if any(c in v for v in res.values())]
    lines = ["| net | sparsity | batch | threads | " + " | ".join(
        f"{c} img/s" + ("" if c == "eager" else " (x eager)") for c in cols) + " |",
        "|---|---|---|---|" + "---|" * len(cols)]
    for key in sorted(res, key=lambda k: (NETS.index(k[0]), k[1], k[2], k[3])):
        r, base = res[key], res[key].get("eager")
        cells = ["-" if c not in r else f"{r[c]:,.0f}" if c == "eager" or base is None
                 else f"{r[c]:,.0f} ({r[c] / base:.2f}x)" for c in cols]
        lines.append(f"| {key[0]} | {int(key[1] * 100)} % | {key[2]} | {key[3]} | " + " | ".join(cells) + " |")
    m = data.get("machine_info", {})
    when = ", ".join(d.get("datetime", "") for d in datas)
    lines += ["", f"Machine: {m.get('cpu', {}).get('brand_raw', '?')}; {when}"]
    return "\n".join(lines)


# ---- one-loop comparison with the peers ---------------------------------------------
def _compile(model, runtime: str, threads: int):
    """``plan-csr`` / ``plan-auto``; ``plan-csr-fixed``: no generated kernels (``jit=False``: the
    fixed kernels, aligned layout on AVX-512 CPUs); ``plan-csr-plain``: the fixed kernels in the
    plain row layout (PRUNECAL_PLAN_PLAIN_LAYOUT)."""
    from prunecal.sparse.plan import compile_plan

    parts = runtime.split("-")
    old = os.environ.get("PRUNECAL_PLAN_PLAIN_LAYOUT")
    if parts[-1] == "plain":
        os.environ["PRUNECAL_PLAN_PLAIN_LAYOUT"] = "1"
    try:
        return compile_plan(model, parts[1], threads=threads, jit=parts[-1] not in ("fixed", "plain"))
    finally:
        if old is None:
            os.environ.pop("PRUNECAL_PLAN_PLAIN_LAYOUT", None)
        else:
            os.environ["PRUNECAL_PLAN_PLAIN_LAYOUT"] = old


def isa_line(ds_isa=()) -> str:
    """Which code each runtime ran: the plan's kernel set, torch's ATen capability and oneDNN's
    ISA cap (``ATEN_CPU_CAPABILITY``, ``ONEDNN_MAX_CPU_ISA``), DeepSparse's compiled ISA."""
    from prunecal import _C

    onednn = os.environ.get("ONEDNN_MAX_CPU_ISA", "")
    return (f"ISA: plan {_C.isa_path()}, torch {torch.backends.cpu.get_cpu_capability()}"
            + (f" (oneDNN capped at {onednn})" if onednn else "")
            + (f", DeepSparse {', '.join(sorted(ds_isa))}" if ds_isa else ""))


def compare(net: str = "resnet56", seconds: float = 2.0, repeats: int = 2,
            configs=((1, 2), (64, 2), (1, 1)), sparsities=(0.9, 0.95), plain_layout: bool = False,
            busy_core: bool = False, fixed_kernels: bool = False) -> str:
    """Markdown: images/s (median call) of torch eager dense, DeepSparse (if its venv exists)
    and the plan, each cell the best of ``repeats`` interleaved sweeps; ratios to torch dense
    and to DeepSparse at the same sparsity, batch and threads. Models: ``benchmarks/peers.py``
    (every conv except the stem pruned, classifier dense), the same for every runtime.
    ``plain_layout`` adds the plan with the plain row layout; ``busy_core`` keeps one core busy
    with another process during the whole run (an oversubscribed machine); ``fixed_kernels`` adds
    the plan without generated kernels (``compile_plan(jit=False)``)."""
    import subprocess

    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy_core else None
    try:
        return _compare(net, seconds, repeats, configs, sparsities, plain_layout, busy_core, fixed_kernels)
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()


def _compare(net, seconds, repeats, configs, sparsities, plain_layout, busy_core, fixed_kernels) -> str:
    import subprocess

    from deepsparse_runner import measure


    have_ds = peers.deepsparse_python() is not None
    best: dict[tuple, float] = {}
    ds_isa: set[str] = set()
    up = [subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()]
    for _ in range(repeats):
        for batch, threads in configs:
            x = peers.sample_input(batch)
            plans = (("plan-csr", "plan-auto") + (("plan-csr-plain",) if plain_layout else ())
                     + (("plan-csr-fixed",) if fixed_kernels else ()))
            cells = [("torch dense", 0.0)] + [(r, s) for s in sparsities for r in
                                              (("deepsparse",) if have_ds else ()) + plans]
            for runtime, sp in cells:
                model = peers.pruned_model(net, sp)
                if runtime == "torch dense":
                    r = peers.time_torch(model, batch, threads, seconds)["images_per_s"]
                elif runtime == "deepsparse":
                    res = peers.run_deepsparse(model, batch, threads, seconds)
                    r = res["images_per_s"]
                    ds_isa.add(res.get("engine_isa") or "unknown (no banner)")
                else:
                    pm = _compile(model, runtime, threads)
                    with torch.inference_mode():
                        assert float((pm(x) - model(x)).abs().max()) < 1e-3
                        r = measure(lambda: pm(x), batch, seconds)["images_per_s"]
                key = (runtime, sp, batch, threads)
                best[key] = max(best.get(key, 0.0), r)
    up.append(subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    lines = [f"{net}, images/s (median call, best of {repeats} sweeps; x torch dense / x DeepSparse at the same "
             "sparsity, batch and threads)" + ("; one core kept busy by another process" if busy_core else ""), "",
             isa_line(ds_isa), "",
             "| runtime | sparsity | " + " | ".join(f"batch {b}, {t} thr" for b, t in configs) + " |",
             "|---|---|" + "---|" * len(configs)]
    for (runtime, sp) in dict.fromkeys((k[0], k[1]) for k in best):
        cells = []
        for b, t in configs:
            v = best.get((runtime, sp, b, t))
            base, ds = best.get(("torch dense", 0.0, b, t)), best.get(("deepsparse", sp, b, t))
            c = "-" if v is None else f"{v:,.0f}"
            if v is not None and runtime != "torch dense" and base:
                c += f" ({v / base:.2f}x torch" + (f", {v / ds:.2f}x DS" if ds and runtime != "deepsparse" else "") + ")"
            cells.append(c)
        lines.append(f"| {runtime} | {int(sp * 100)} % | " + " | ".join(cells) + " |")
    lines += ["", "uptime before: " + up[0], "uptime after:  " + up[1]]
    return "\n".join(lines)


def stability(net: str = "resnet56", sparsity: float = 0.9, stretches: int = 8, calls: int = 3000,
              mode: str = "auto") -> str:
    """Median call time of ``stretches`` consecutive stretches of ``calls`` back-to-back batch-1
    calls of the csr plan on 2 threads (run mode ``mode``; ``op``: the team always), then on 1
    thread: how much the rate moves over time."""
    import time

    import numpy as np


    from prunecal.sparse.plan import compile_plan

    model = peers.pruned_model(net, sparsity)
    x = peers.sample_input(1)
    lines = ["| threads | median us per call, stretch by stretch |", "|---|---|"]
    for threads in (2, 1):
        torch.set_num_threads(threads)
        pm = compile_plan(model, "csr", threads=threads, mode=mode)
        meds = []
        with torch.inference_mode():
            for _ in range(100):
                pm(x)
            for _ in range(stretches):
                ts = np.empty(calls)
                for i in range(calls):
                    t0 = time.perf_counter()
                    pm(x)
                    ts[i] = time.perf_counter() - t0
                meds.append(np.median(ts) * 1e6)
        lines.append(f"| {threads} | " + ", ".join(f"{m:.0f}" for m in meds) + " |")
    return "\n".join(lines)


def profile(net: str = "resnet56", sparsity: float = 0.9, images: int = 8, reps: int = 20) -> str:
    """Markdown: where one image's time goes in the plan (``Plan.profile``: CPU time of one
    thread, per op, summed by stage), with the multiply-add rate of the convs in 16-lane FMAs
    per ns (nonzeros x output pixels / 16 / time)."""
    import re

    import numpy as np


    from prunecal.sparse.plan import compile_plan

    p = compile_plan(peers.pruned_model(net, sparsity), "csr", threads=1).plan_for((3, 32, 32))
    x = np.random.default_rng(0).standard_normal((images, 3, 32, 32)).astype(np.float32)
    per_image = np.array(p.profile(x, reps)) / (images * reps)
    stages: dict[str, list] = {}
    for line, sec in zip(p.describe(), per_image):
        kind = line.split()[0]
        out = re.search(r"-> b\d+\((\d+)x(\d+)x(\d+)", line)
        key = f"{kind} -> {out.group(1)}x{out.group(2)}x{out.group(3)}" + (" s2" if " s2 " in line else "")
        st = stages.setdefault(key, [0.0, 0, 0.0])
        st[0] += sec
        st[1] += 1
        dens = re.search(r"density ([\d.e-]+)", line)
        inp = re.search(r"b\d+\((\d+)x", line)
        if kind == "conv" and dens:
            co, ho, wo = (int(v) for v in out.groups())
            k = 9 if " 3x3 " in line else 1
            st[2] += float(dens.group(1)) * co * int(inp.group(1)) * k * ho * wo / 16
    total = per_image.sum()
    lines = [f"{net} {int(sparsity * 100)} %, 1 thread: {total * 1e6:.0f} us per image "
             f"(input load {per_image[-2] * 1e6:.1f} us, output store {per_image[-1] * 1e6:.1f} us)", "",
             "| ops | count | us per image | share | 16-lane FMA / ns |", "|---|---|---|---|---|"]
    for key, (sec, n, fmas) in stages.items():
        rate = f"{fmas / (sec * 1e9):.2f}" if fmas else "-"
        lines.append(f"| {key} | {n} | {sec * 1e6:.1f} | {sec / total:.0%} | {rate} |")
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json", nargs="*", help="pytest-benchmark json file(s) to tabulate")
    ap.add_argument("--compare", action="store_true", help="one-loop comparison with torch / DeepSparse")
    ap.add_argument("--net", default="resnet56")
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--sparsities", default="0.9,0.95", help="comma-separated (--compare)")
    ap.add_argument("--plain-layout", action="store_true", help="also the plan with the plain row layout")
    ap.add_argument("--busy-core", action="store_true", help="keep one core busy with another process")
    ap.add_argument("--fixed-kernels", action="store_true", help="also the plan without generated kernels")
    ap.add_argument("--profile", action="store_true", help="per-stage time of one image (1 thread, 90 %%)")
    ap.add_argument("--stability", action="store_true", help="batch-1 call time over consecutive stretches")
    ap.add_argument("--mode", default="auto", choices=("auto", "image", "op"),
                    help="run mode of the 2-thread plan (--stability)")
    a = ap.parse_args()
    if a.profile:
        print(profile(a.net))
    elif a.stability:
        print(stability(a.net, mode=a.mode))
    elif a.compare:
        print(compare(a.net, a.seconds, a.repeats, sparsities=tuple(float(v) for v in a.sparsities.split(",")),
                      plain_layout=a.plain_layout, busy_core=a.busy_core, fixed_kernels=a.fixed_kernels))
    elif a.json:
        print(table(*a.json))
    else:
        ap.error("give a benchmark json or --compare")
