"""Sparse training (prunecal.sparse.trainable) vs masked dense torch.

Per layer: the 3x3 convs of CIFAR ResNet-56 (stride 1 at 32x32 / 16x16 / 8x8 and the two
stride-2 transitions), forward + backward (input and weight gradients), random unstructured
sparsity 0.5 / 0.7 / 0.9 / 0.95, batch 64 / 128, 1 and 2 threads. Per training step (forward,
backward, SGD with momentum and weight decay; masked torch zeroes the pruned weights' gradients):
ResNet-20 / ResNet-56 (pretrained where ../shared/data/weights has the checkpoint) pruned by
one global magnitude threshold over the convs except the stem (classifier dense; the same
networks as bench_plan.py), sparsity 0.7 / 0.9 / 0.95, batch 64 / 128, 1 and 2 threads, each
also with model and input in channels_last (``*_cl``: torch's faster layout for training, the
default of prunecal.train; the sparse kernels read and write it directly).
Ids read ``test_layer[<impl>-<shape>-b<batch>-s<sparsity>-t<threads>]`` and
``test_step[<impl>-<net>-b<batch>-s<sparsity>-t<threads>]``; select with ``-k``.

    python -m pytest benchmarks/bench_train.py --benchmark-only --benchmark-json=train.json
    python benchmarks/bench_train.py train.json [more.json ...]   # markdown tables, ratios (min over runs)
    python benchmarks/bench_train.py --compare [--seconds 3]      # steps only, both impls interleaved
    python benchmarks/bench_train.py --compare --clock cpu --threads 1   # CPU time of the calling thread
    python benchmarks/bench_train.py --profile resnet56 [--channels-last]  # where a csr step's time goes

``--clock cpu`` (``time.thread_time``, 1 thread only: all work runs on the calling thread) leaves
out the time the process waits for a core, for a machine shared with other jobs.
"""
from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path
from typing import Callable

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

SHAPES = {  # name: (C_in, C_out, H=W, stride); 3x3, padding 1
    "16x32x32": (16, 16, 32, 1),
    "32x16x16": (32, 32, 16, 1),
    "64x8x8": (64, 64, 8, 1),
    "16x32x32-s2": (16, 32, 32, 2),
    "32x16x16-s2": (32, 64, 16, 2),
}
LAYER_SPARSITIES = [0.5, 0.7, 0.9, 0.95]
STEP_SPARSITIES = [0.7, 0.9, 0.95]
NETS = ["resnet20", "resnet56"]
BATCHES = [64, 128]
THREADS = [1, 2]
IMPLS = ["torch_masked", "csr"]  # per layer
STEP_IMPLS = ["torch_masked", "torch_masked_cl", "csr", "csr_cl"]


def _conv(c_in: int, c_out: int, stride: int, sparsity: float) -> nn.Conv2d:
    g = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
    with torch.no_grad():
        w = torch.randn(c_out, c_in, 3, 3, generator=g)
        w[torch.rand(w.shape, generator=g) < sparsity] = 0.0
        conv.weight.copy_(w)
    return conv


def layer_step(impl: str, conv: nn.Conv2d, x: torch.Tensor, gy: torch.Tensor) -> Callable[[], None]:
    """One forward + backward (input and weight gradients) of ``conv`` on ``x``."""
    if impl == "csr":
        from prunecal.sparse.train import SparseConv2d

        layer: nn.Module = SparseConv2d(conv)
    else:
        layer = copy.deepcopy(conv)
        mask = layer.weight.detach() != 0
        layer.weight.register_hook(lambda g: g * mask)  # masked dense: pruned weights get no gradient
    xg = x.clone().requires_grad_()

    def run() -> None:
        xg.grad = None
        for p in layer.parameters():
            p.grad = None
        layer(xg).backward(gy)

    return run


def net_step(impl: str, net: str, sparsity: float, batch: int) -> Callable[[], None]:
    """One training step (forward, cross-entropy, backward, SGD) of the pruned network."""
    import peers

    from prunecal.sparse.train import trainable

    pruned = peers.pruned_model(net, sparsity)
    if impl.startswith("csr"):
        model: nn.Module = trainable(pruned).train()
        masks: dict[str, torch.Tensor] = {}
    else:
        model = copy.deepcopy(pruned).train()
        masks = {n: p.detach() != 0 for n, p in model.named_parameters() if p.dim() > 1 and bool((p == 0).any())}
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, 32, 32, generator=g)
    if impl.endswith("_cl"):
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    params = dict(model.named_parameters())
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    y = torch.randint(0, 10, (batch,), generator=g)

    def run() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        for n, m in masks.items():
            params[n].grad.mul_(m)
        opt.step()

    return run


def _pedantic(benchmark, fn: Callable[[], None], threads: int, target_s: float, **extra) -> None:
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        fn()  # warm-up: geometry, buffers, thread pool
        t0 = time.perf_counter()
        fn()
        once = time.perf_counter() - t0
        rounds = max(3, min(50, int(target_s / max(once, 1e-6))))
        benchmark.extra_info.update(threads=threads, **extra)
        benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=0)
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("threads", THREADS, ids=lambda t: f"t{t}")
@pytest.mark.parametrize("sparsity", LAYER_SPARSITIES, ids=lambda s: f"s{s}")
@pytest.mark.parametrize("batch", BATCHES, ids=lambda b: f"b{b}")
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("impl", IMPLS)
def test_layer(benchmark, impl, shape, batch, sparsity, threads):
    c_in, c_out, hw, stride = SHAPES[shape]
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, c_in, hw, hw, generator=g)
    gy = torch.randn(batch, c_out, hw // stride, hw // stride, generator=g)
    fn = layer_step(impl, _conv(c_in, c_out, stride, sparsity), x, gy)
    _pedantic(benchmark, fn, threads, 1.0, impl=impl, shape=shape, batch=batch, sparsity=sparsity)


@pytest.mark.parametrize("threads", THREADS, ids=lambda t: f"t{t}")
@pytest.mark.parametrize("sparsity", STEP_SPARSITIES, ids=lambda s: f"s{s}")
@pytest.mark.parametrize("batch", BATCHES, ids=lambda b: f"b{b}")
@pytest.mark.parametrize("net", NETS)
@pytest.mark.parametrize("impl", STEP_IMPLS)
def test_step(benchmark, impl, net, batch, sparsity, threads):
    fn = net_step(impl, net, sparsity, batch)
    _pedantic(benchmark, fn, threads, 3.0, impl=impl, net=net, batch=batch, sparsity=sparsity)


# ---- tables ----------------------------------------------------------------------------------

def _row(what: str, r: tuple, best: dict) -> str:
    """One markdown row: ms per impl and csr's speed-up over the faster torch (same layout family)."""
    ms = {i: best.get((i, *r)) for i in STEP_IMPLS}
    torch_best = min((v for i, v in ms.items() if i.startswith("torch") and v), default=None)
    csr_best = min((v for i, v in ms.items() if i.startswith("csr") and v), default=None)
    cells = " | ".join(f"{ms[i]:.1f}" if ms[i] else "-" for i in STEP_IMPLS)
    ratio = f"{torch_best / csr_best:.2f}x" if torch_best and csr_best else "-"
    return f"| {what} | {r[1]} | {r[2]} | {r[3]} | {cells} | {ratio} |"


HEADER = ("| layer / net | batch | sparsity | threads | " + " | ".join(f"{i} ms" for i in STEP_IMPLS) +
          " | best csr / best torch |\n|---|---|---|---|" + "---|" * (len(STEP_IMPLS) + 1))


def table(paths: list[str]) -> str:
    """Markdown table (ms, min over the files' runs): the speed-up of the faster csr variant over
    the faster masked torch variant."""
    best: dict[tuple, float] = {}
    for p in paths:
        for b in json.loads(Path(p).read_text())["benchmarks"]:
            e = b["extra_info"]
            what = e.get("shape") or e.get("net")
            key = (e["impl"], what, e["batch"], e["sparsity"], e["threads"])
            best[key] = min(best.get(key, float("inf")), b["stats"]["min"] * 1e3)
    rows = sorted({k[1:] for k in best})
    return "\n".join([HEADER] + [_row(r[0], r, best) for r in rows])


def compare(seconds: float, nets: list[str], batches: list[int], sparsities: list[float], threads: list[int],
            clock: Callable[[], float] = time.perf_counter) -> str:
    """Training steps of every impl interleaved round by round (same machine state); min per impl
    of ``clock`` (wall time by default)."""
    out = [HEADER]
    print(out[0], flush=True)
    for net in nets:
        for batch in batches:
            for sp in sparsities:
                for th in threads:
                    torch.set_num_threads(th)
                    fns = {impl: net_step(impl, net, sp, batch) for impl in STEP_IMPLS}
                    best = {(impl, net, batch, sp, th): float("inf") for impl in STEP_IMPLS}
                    for fn in fns.values():
                        fn()
                    t_end = time.perf_counter() + seconds
                    while time.perf_counter() < t_end or any(v == float("inf") for v in best.values()):
                        for impl, fn in fns.items():
                            t0 = clock()
                            fn()
                            k = (impl, net, batch, sp, th)
                            best[k] = min(best[k], (clock() - t0) * 1e3)
                    out.append(_row(net, (net, batch, sp, th), best))
                    print(out[-1], flush=True)
    return "\n".join(out)


def profile(net: str, sparsity: float, batch: int, channels_last: bool, steps: int = 3, threads: int = 1) -> str:
    """Time of a csr training step: total, the native conv calls (forward / backward) and the rest
    (BN, ReLU, residual adds, loss, optimizer, Python). One thread: CPU time of the calling thread
    (time.thread_time, robust on a shared machine); more threads: wall time (time.perf_counter)."""
    import peers

    from prunecal.sparse.train import SparseConv2d, trainable

    torch.set_num_threads(threads)
    clock = time.thread_time if threads == 1 else time.perf_counter
    model = trainable(peers.pruned_model(net, sparsity)).train()
    spent = {"forward": 0.0, "backward": 0.0}

    class Timed:  # the layer's native pattern with its two calls timed
        def __init__(self, tc):
            self.tc = tc

        def __getattr__(self, name):
            return getattr(self.tc, name)

        def _forward_ptr(self, *a):
            t0 = clock()
            self.tc._forward_ptr(*a)
            spent["forward"] += clock() - t0

        def _backward_ptr(self, *a):
            t0 = clock()
            self.tc._backward_ptr(*a)
            spent["backward"] += clock() - t0

    for m in model.modules():
        if isinstance(m, SparseConv2d):
            m._tc = Timed(m._native())
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    step()
    best = None
    for _ in range(steps):
        spent.update(forward=0.0, backward=0.0)
        t0 = clock()
        step()
        total = clock() - t0
        if best is None or total < best[0]:
            best = (total, spent["forward"], spent["backward"])
    total, fwd, bwd = (v * 1e3 for v in best)
    return (f"{net} s{sparsity} b{batch} {'channels_last' if channels_last else 'NCHW'} {threads} thread(s), {'CPU' if threads == 1 else 'wall'} ms (fastest of "
            f"{steps} steps): step {total:.1f} = sparse conv forward {fwd:.1f} + sparse conv backward {bwd:.1f} "
            f"+ rest {total - fwd - bwd:.1f}")


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("json", nargs="*", help="pytest-benchmark JSON files to tabulate")
    ap.add_argument("--compare", action="store_true", help="time training steps of every impl interleaved")
    ap.add_argument("--seconds", type=float, default=3.0, help="per configuration (--compare)")
    ap.add_argument("--nets", default=",".join(NETS))
    ap.add_argument("--batches", default="64,128")
    ap.add_argument("--sparsities", default="0.7,0.9,0.95")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--profile", metavar="NET", help="split a csr step's time (--sparsities[0], --batches[0], --threads[0])")
    ap.add_argument("--channels-last", action="store_true", help="--profile in channels_last")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="wall: time.perf_counter; cpu: time.thread_time (needs --threads 1)")
    a = ap.parse_args()
    threads = [int(v) for v in a.threads.split(",")]
    if a.clock == "cpu" and threads != [1]:
        ap.error("--clock cpu measures the calling thread only: use --threads 1")
    if a.profile:
        print(profile(a.profile, float(a.sparsities.split(",")[0]), int(a.batches.split(",")[0]), a.channels_last,
                      threads=threads[0]))
    elif a.compare:
        compare(a.seconds, a.nets.split(","), [int(v) for v in a.batches.split(",")],
                [float(v) for v in a.sparsities.split(",")], threads,
                time.thread_time if a.clock == "cpu" else time.perf_counter)
    elif a.json:
        print(table(a.json))
    else:
        ap.error("give JSON files or --compare")
