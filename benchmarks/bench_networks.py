"""Whole-network CPU inference: CIFAR ResNet-20 / ResNet-56 pruned to 90 % and 95 %.

Every conv except the 3-channel stem is globally magnitude-pruned (pretrained weights from
``../shared/data/weights`` when present, else random weights with randomised BN statistics),
then run as

- ``eager``: the pruned model itself in torch eager mode (the baseline, zeros stored dense);
- ``dense`` / ``torch`` / ``csr`` / ``bsr``: :func:`prunecal.sparse.sparsify` backends
  (BN folded, ReLU fused),

at batch 1 and 64 with 1 and 2 threads (``torch.set_num_threads`` and the native kernels'
``threads``). Run and tabulate (one run)::

    python -m pytest benchmarks/bench_networks.py --benchmark-only -q \
        --benchmark-json=bench_networks.json
    python benchmarks/bench_networks.py bench_networks.json     # markdown table
    python benchmarks/bench_networks.py --footprint             # model bytes per backend

Select a subset with ``-k``, e.g. ``-k "resnet20 and b1"``. ``PRUNECAL_BENCH_SECONDS``
(default 0.5) is the target measuring time per case (at least 3 rounds).
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
from harness import bench_forward  # noqa: E402
import peers  # noqa: E402

NETS = {"resnet20": 3, "resnet56": 9}
SPARSITIES = (0.9, 0.95)
BACKENDS = ("eager", "dense", "torch", "csr", "bsr")
BATCHES = (1, 64)
THREADS = (1, 2)
TARGET_S = float(os.environ.get("PRUNECAL_BENCH_SECONDS", "0.5"))


@functools.lru_cache(maxsize=None)
def pruned(name: str, sparsity: float) -> nn.Module:
    """Pretrained (where the checkpoint exists) net, every conv but the stem globally pruned."""
    return peers.pruned_model(name, sparsity)


@functools.lru_cache(maxsize=8)
def prepared(name: str, sparsity: float, backend: str, threads: int) -> nn.Module:
    model = pruned(name, sparsity)
    if backend == "eager":
        return model
    from prunecal.sparse import sparsify

    return sparsify(model, backend, threads=threads, plan=False)  # per layer (this file's subject)


@pytest.mark.parametrize("threads", THREADS, ids=lambda t: f"t{t}")
@pytest.mark.parametrize("batch", BATCHES, ids=lambda b: f"b{b}")
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("sparsity", SPARSITIES, ids=lambda s: f"s{int(s * 100)}")
@pytest.mark.parametrize("net", list(NETS))
def test_network(benchmark, net, sparsity, backend, batch, threads):
    if backend in ("csr", "bsr"):
        pytest.importorskip("prunecal.sparse.ops")
    model = prepared(net, sparsity, backend, threads)
    x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    bench_forward(benchmark, model, x, threads, target_s=TARGET_S, warmups=1, min_rounds=3,
                  max_rounds=500, warmup_rounds=0, net=net, sparsity=sparsity, backend=backend, batch=batch)


# ---- table ------------------------------------------------------------------------------
def table(json_path: str) -> str:
    """Markdown table (images/s from the fastest round, speed-up vs eager) from a benchmark json."""
    data = json.loads(Path(json_path).read_text())
    res: dict[tuple, dict[str, float]] = {}
    for b in data["benchmarks"]:
        e = b["extra_info"]
        key = (e["net"], e["sparsity"], e["batch"], e["threads"])
        res.setdefault(key, {})[e["backend"]] = e["batch"] / b["stats"]["min"]
    cols = [c for c in BACKENDS if any(c in v for v in res.values())]
    lines = ["| net | sparsity | batch | threads | " + " | ".join(
        f"{c} img/s" + ("" if c == "eager" else " (x eager)") for c in cols) + " |",
        "|---|---|---|---|" + "---|" * len(cols)]
    for key in sorted(res, key=lambda k: (list(NETS).index(k[0]), k[1], k[2], k[3])):
        r = res[key]
        base = r.get("eager")
        cells = []
        for c in cols:
            if c not in r:
                cells.append("-")
            elif c == "eager" or base is None:
                cells.append(f"{r[c]:,.0f}")
            else:
                cells.append(f"{r[c]:,.0f} ({r[c] / base:.2f}x)")
        lines.append(f"| {key[0]} | {int(key[1] * 100)} % | {key[2]} | {key[3]} | " + " | ".join(cells) + " |")
    m = data.get("machine_info", {})
    lines.append("")
    lines.append(f"Machine: {m.get('cpu', {}).get('brand_raw', '?')}; torch {torch.__version__}; "
                 f"{data.get('datetime', '')}")
    return "\n".join(lines)


def footprint() -> str:
    """Markdown table of whole-model bytes (``SparsifyReport``) per backend; no timing."""
    from prunecal.sparse import sparsify

    backends = BACKENDS[1:]
    lines = ["| net | sparsity | eager KiB | " + " | ".join(f"{b} KiB (x smaller)" for b in backends) + " |",
             "|---|---|---|" + "---|" * len(backends)]
    for net in NETS:
        for sp in SPARSITIES:
            reps = {b: sparsify(pruned(net, sp), b).sparsify_report for b in backends}
            cells = [f"{r.model_sparse_bytes / 1024:,.0f} ({r.compression:.1f}x)" for r in reps.values()]
            lines.append(f"| {net} | {int(sp * 100)} % | {reps['dense'].model_dense_bytes / 1024:,.0f} | "
                         + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) == 2 and sys.argv[1] == "--footprint":
        print(footprint())
    elif len(sys.argv) == 2:
        print(table(sys.argv[1]))
    else:
        sys.exit("usage: python benchmarks/bench_networks.py BENCH.json | --footprint")
