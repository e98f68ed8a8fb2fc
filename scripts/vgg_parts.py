"""Where a pruned VGG-16-BN's time goes at batch 64 on one thread: the plan of each part of its
feature extractor (the 32x32, 16x16 and 8x8 conv blocks) against the whole network, with the
multiply-adds each keeps after global magnitude pruning to 90 % (every conv but the stem).

    python scripts/vgg_parts.py          # images/s, MMAC per image, GMAC/s, us per image
    python scripts/vgg_parts.py --bound NET FIRST REST [CORES]
        # NET's multiply-adds per map size after pruning, and the images/s it would reach if its
        # 32x32 convs ran at FIRST GMAC/s and all the others at REST, nothing else taking time,
        # on CORES (default 2) cores in parallel: an upper bound from loop ceilings
        # (scripts/load_fma_ceiling.cpp), no measurement of the plan

The network of the benchmarks: ``peers.pruned_model("vgg16_bn", 0.9)`` (default initialisation
with randomised BN statistics).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import peers  # noqa: E402
from prunecal.sparse.plan import compile_plan  # noqa: E402


def rate(module: nn.Module, x: torch.Tensor, seconds: float = 1.5) -> float:
    with torch.no_grad():
        module(x), module(x)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            module(x)
            n += 1
    return n * x.shape[0] / (time.perf_counter() - t0)


def macs(seq: nn.Module, side: int) -> int:
    total = 0
    for m in seq.modules():
        if isinstance(m, nn.MaxPool2d):
            side //= 2
        elif isinstance(m, nn.Conv2d):
            total += int((m.weight != 0).sum()) * side * side
    return total


def macs_by_side(net: str) -> dict[int, int]:
    """Multiply-adds per image that ``peers.pruned_model(net, 0.9)`` keeps, by output map side."""
    by_side: dict[int, int] = {}
    side = 32
    for m in peers.pruned_model(net, 0.9).features.modules():
        if isinstance(m, nn.MaxPool2d):
            side //= 2
        elif isinstance(m, nn.Conv2d):
            by_side[side] = by_side.get(side, 0) + int((m.weight != 0).sum()) * side * side
    return by_side


def bound(net: str, first: float, rest: float, cores: int = 2) -> None:
    by_side = macs_by_side(net)
    total = sum(by_side.values())
    seconds = by_side.get(32, 0) / (first * 1e9) + (total - by_side.get(32, 0)) / (rest * 1e9)
    print(f"{net} @90 %: MMAC per image by map side "
          + ", ".join(f"{s}x{s} {k / 1e6:.2f}" for s, k in sorted(by_side.items(), reverse=True))
          + f"; total {total / 1e6:.2f}")
    print(f"bound: 32x32 convs at {first:g}, the rest at {rest:g} GMAC/s, {cores} cores: "
          f"{cores / seconds:.0f} images/s")


def main() -> None:
    if sys.argv[1:2] == ["--bound"]:
        a = sys.argv[2:]
        if len(a) not in (3, 4):
            sys.exit(__doc__)
        bound(a[0], float(a[1]), float(a[2]), int(a[3]) if len(a) > 3 else 2)
        return
    model = peers.build_model("vgg16_bn")[0]
    pruned = peers.pruned_model("vgg16_bn", 0.9)
    dense = sum(int(m.weight.numel()) * s * s for m, s in zip(
        [m for m in model.modules() if isinstance(m, nn.Conv2d)], [32] * 2 + [16] * 2 + [8] * 3 + [4] * 3 + [2] * 3))
    layers = list(pruned.features.children())
    torch.set_num_threads(1)
    parts = [("32x32 block", 0, 6, (3, 32, 32)), ("16x16 block", 7, 13, (64, 16, 16)),
             ("8x8 block", 14, 23, (128, 8, 8))]
    for name, lo, hi, shape in parts:
        seq = nn.Sequential(*layers[lo:hi]).eval()
        r = rate(compile_plan(seq, "csr", threads=1, input_size=shape), torch.randn(64, *shape))
        k = macs(seq, shape[1])
        print(f"{name}: {r:.0f} img/s, {k / 1e6:.1f} MMAC/img, {r * k / 1e9:.1f} GMAC/s, {1e6 / r:.0f} us/img")
    r = rate(compile_plan(pruned, "csr", threads=1), torch.randn(64, 3, 32, 32))
    k = macs(pruned.features, 32)
    print(f"whole network: {r:.0f} img/s, {k / 1e6:.1f} MMAC/img (dense {dense / 1e6:.1f}), "
          f"{r * k / 1e9:.1f} GMAC/s, {1e6 / r:.0f} us/img")


if __name__ == "__main__":
    main()
