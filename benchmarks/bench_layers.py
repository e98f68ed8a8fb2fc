"""Per-layer kernels: dense torch conv vs torch.sparse vs prunecal CSR / BSR.

Shapes: the 3x3 convs of CIFAR ResNet-56 (stride 1 at 32x32 / 16x16 / 8x8 and the two
stride-2 transitions), batch 1 and 64, unstructured random sparsity 0.5 / 0.7 / 0.9 / 0.95,
1 and 2 threads (torch.set_num_threads matches). Each benchmark id reads
``test_conv[<impl>-<shape>-b<batch>-s<sparsity>-t<threads>]`` so subsets are selected with
``-k``, e.g. ``-k "b1 and t1"`` or ``-k "16x32x32"``.

    python -m pytest benchmarks/bench_layers.py --benchmark-only --benchmark-json=bench.json
    python benchmarks/bench_layers.py bench.json [more.json ...]  # markdown table (min over runs)
"""
from __future__ import annotations

import json
import sys
import time

import pytest
import torch
import torch.nn.functional as F

SHAPES = {  # name: (C_in, C_out, H=W, stride); 3x3, padding 1
    "16x32x32": (16, 16, 32, 1),
    "32x16x16": (32, 32, 16, 1),
    "64x8x8": (64, 64, 8, 1),
    "16x32x32-s2": (16, 32, 32, 2),
    "32x16x16-s2": (32, 64, 16, 2),
}
BATCHES = [1, 64]
SPARSITIES = [0.5, 0.7, 0.9, 0.95]
THREADS = [1, 2]
IMPLS = ["dense", "torch_sparse", "csr", "bsr"]


def _weight(c_out: int, c_in: int, sparsity: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(c_out, c_in, 3, 3, generator=g)
    w[torch.rand(w.shape, generator=g) < sparsity] = 0.0
    return w


def _layer(impl: str, w: torch.Tensor, stride: int, threads: int):
    """A callable x -> conv2d(x, w, padding=1, stride=stride) with the given implementation."""
    if impl == "dense":
        return lambda x: F.conv2d(x, w, None, stride, 1)
    if impl == "torch_sparse":
        c_out = w.shape[0]
        ws = w.reshape(c_out, -1).to_sparse_csr()

        def run(x):
            n, _, h, wd = x.shape
            ho, wo = (h + 2 - 3) // stride + 1, (wd + 2 - 3) // stride + 1
            cols = F.unfold(x, 3, padding=1, stride=stride)  # (N, K, L)
            cols = cols.transpose(0, 1).reshape(cols.shape[1], -1)  # (K, N*L)
            y = ws @ cols  # (C_out, N*L)
            return y.reshape(c_out, n, ho, wo).transpose(0, 1)

        return run
    from prunecal.sparse.formats import BSRWeight, CSRWeight
    from prunecal.sparse.ops import sparse_conv2d

    sw = CSRWeight.from_dense(w) if impl == "csr" else BSRWeight.from_dense(w, 4)
    sw.packed()
    return lambda x: sparse_conv2d(x, sw, None, stride, 1, threads=threads)


@pytest.mark.parametrize("torch_threads", THREADS, indirect=True, ids=[f"t{t}" for t in THREADS])
@pytest.mark.parametrize("sparsity", SPARSITIES, ids=[f"s{s}" for s in SPARSITIES])
@pytest.mark.parametrize("batch", BATCHES, ids=[f"b{b}" for b in BATCHES])
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("impl", IMPLS)
def test_conv(benchmark, impl, shape, batch, sparsity, torch_threads):
    c_in, c_out, h, stride = SHAPES[shape]
    x = torch.randn(batch, c_in, h, h, generator=torch.Generator().manual_seed(1))
    w = _weight(c_out, c_in, sparsity)
    fn = _layer(impl, w, stride, torch_threads)
    ref = F.conv2d(x, w, None, stride, 1)
    torch.testing.assert_close(fn(x), ref, rtol=1e-4, atol=1e-3)
    benchmark.group = f"{shape} b{batch} t{torch_threads}"
    benchmark.extra_info.update(impl=impl, shape=shape, batch=batch, sparsity=sparsity,
                                threads=torch_threads)
    if batch == 1:
        rounds, iters = 30, 10
    else:  # about 0.3 s of single calls (5 to 100): more chances of an undisturbed call
        t0 = time.perf_counter()
        fn(x)
        rounds, iters = max(5, min(100, int(0.3 / max(time.perf_counter() - t0, 1e-6)))), 1
    benchmark.pedantic(fn, args=(x,), rounds=rounds, iterations=iters, warmup_rounds=2)


def table(*paths: str) -> str:
    """Markdown table from --benchmark-json file(s): time per call (the minimum over rounds, and
    over the files when several runs are given: the least disturbed figure on a shared machine,
    for every implementation alike) and the speed-up vs dense torch."""
    t: dict[tuple, float] = {}
    for path in paths:
        with open(path) as f:
            rows = [b for b in json.load(f)["benchmarks"] if "impl" in b.get("extra_info", {})]
        for b in rows:
            e = b["extra_info"]
            key = (e["shape"], e["batch"], e["threads"], e["sparsity"], e["impl"])
            t[key] = min(t.get(key, float("inf")), b["stats"]["min"])
    out = ["| shape (C x H x W, stride) | batch | threads | sparsity | dense torch | torch.sparse | csr | bsr4 |",
           "|---|---|---|---|---|---|---|---|"]
    keys = sorted({k[:4] for k in t}, key=lambda k: (k[2], k[1], list(SHAPES).index(k[0]), k[3]))
    for k in keys:
        dense = t.get(k + ("dense",))

        def cell(impl):
            v = t.get(k + (impl,))
            if v is None:
                return "-"
            if impl == "dense" or dense is None:
                return f"{v * 1e6:.0f} us"
            return f"{v * 1e6:.0f} us ({dense / v:.2f}x)"

        out.append(f"| {k[0]} | {k[1]} | {k[2]} | {k[3]} | " + " | ".join(cell(i) for i in
                                                                      ["dense", "torch_sparse", "csr", "bsr"]) + " |")
    return "\n".join(out)


def overhead(seconds: float = 0.5) -> str:
    """Fixed cost of one batch-1 ``sparse_conv2d`` call, 1 thread: a weight with a single
    nonzero (so almost no arithmetic) per shape, the whole call and its native part alone
    (fastest call over ``seconds``)."""
    import time

    import numpy as np

    from prunecal.sparse.formats import CSRWeight
    from prunecal.sparse.ops import sparse_conv2d

    torch.set_num_threads(1)

    def fastest(fn) -> float:
        for _ in range(20):
            fn()
        best, end = float("inf"), time.perf_counter() + seconds
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
        return best * 1e6

    lines = ["| shape | whole call | native call | Python side |", "|---|---|---|---|"]
    for name, (c_in, c_out, h, stride) in SHAPES.items():
        w = torch.zeros(c_out, c_in, 3, 3)
        w[0, 0, 1, 1] = 1.0
        sw = CSRWeight.from_dense(w)
        x = torch.randn(1, c_in, h, h)
        packed, xn = sw.packed(), x.numpy()
        ho = (h + 2 - 3) // stride + 1
        out = np.empty((1, c_out, ho, ho), np.float32)
        whole = fastest(lambda: sparse_conv2d(x, sw, None, stride, 1, threads=1))
        native = fastest(lambda: packed.conv2d(xn, out, None, stride, 1, 1, 1, False, 1, "auto"))
        lines.append(f"| {name} | {whole:.1f} us | {native:.1f} us | {whole - native:.1f} us |")
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--overhead"]:
        print(overhead())
    else:
        print(table(*(sys.argv[1:] or ["bench.json"])))
