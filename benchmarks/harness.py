"""The timing loop the network benchmarks share (pytest-benchmark, pedantic mode)."""
from __future__ import annotations

import math
import time

import torch


def bench_forward(benchmark, model, x: torch.Tensor, threads: int, *, target_s: float, warmups: int,
                  min_rounds: int, max_rounds: int, warmup_rounds: int, **extra) -> None:
    """Time ``model(x)`` with torch set to ``threads``: ``warmups`` untimed calls, then enough
    rounds (clamped to ``[min_rounds, max_rounds]``) to fill about ``target_s`` seconds.
    ``extra`` goes to ``benchmark.extra_info`` (with ``threads``)."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            for _ in range(warmups):  # lazy packing, allocator, thread pool
                model(x)
            t0 = time.perf_counter()
            model(x)
            once = time.perf_counter() - t0
            rounds = max(min_rounds, min(max_rounds, math.ceil(target_s / max(once, 1e-6))))
            benchmark.extra_info.update(threads=threads, **extra)
            benchmark.pedantic(model, args=(x,), rounds=rounds, iterations=1, warmup_rounds=warmup_rounds)
    finally:
        torch.set_num_threads(old)
