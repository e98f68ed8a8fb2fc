"""The sweep's automatic fine-tuning backend: masked torch below the measured break-even, the
sparse kernels from it, the break-even chosen by the native ISA path."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from prunecal.eval import stages


def _net(zero_fraction: float) -> nn.Module:
    """Conv (100 weights) + linear (100 weights) with round(200 * zero_fraction) zeros."""
    net = nn.Sequential(nn.Conv2d(4, 1, 5), nn.Flatten(), nn.Linear(10, 10))
    with torch.no_grad():
        w = torch.cat([net[0].weight.flatten(), net[2].weight.flatten()])
        w.uniform_(0.5, 1.0)
        w[: round(200 * zero_fraction)] = 0
        net[0].weight.copy_(w[:100].view_as(net[0].weight))
        net[2].weight.copy_(w[100:].view_as(net[2].weight))
    return net


def test_weight_sparsity_counts_conv_and_linear_zeros():
    from prunecal.prune.report import weight_sparsity

    assert weight_sparsity(_net(0.0)) == 0.0
    assert weight_sparsity(_net(0.755)) == pytest.approx(151 / 200)


@pytest.mark.parametrize("isa, zeros, want", [
    ("avx2", 0.65, "torch"), ("avx2", 0.75, "csr"),
    ("avx512", 0.75, "torch"), ("avx512", 0.85, "csr"),
    ("generic", 0.75, "torch"), ("generic", 0.85, "csr"),
])
def test_auto_backend_follows_the_isa_break_even(monkeypatch, isa, zeros, want):
    from prunecal import _C

    monkeypatch.setattr(_C, "isa_path", lambda: isa)
    runner = SimpleNamespace(cfg=SimpleNamespace(finetune_backend="auto"))
    assert stages.StageContext.train_backend(runner, _net(zeros)) == want
    runner.cfg.finetune_backend = "torch"
    assert stages.StageContext.train_backend(runner, _net(zeros)) == "torch"
