"""BN folding and ReLU-fusion chain finding (prunecal.sparse.fold)."""
from __future__ import annotations

import pytest
import torch
import torch.fx
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from prunecal.sparse import fold


def _random_bn(c: int, affine: bool = True, eps: float = 1e-5) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(c, affine=affine, eps=eps)
    with torch.no_grad():
        bn.running_mean.uniform_(-2, 2)
        bn.running_var.uniform_(0.05, 3)
        if affine:
            bn.weight.uniform_(-1.5, 1.5)
            bn.bias.uniform_(-1, 1)
    return bn.eval()


@settings(max_examples=25, deadline=None)
@given(
    c_in_g=st.integers(1, 4), c_out_g=st.integers(1, 4), groups=st.integers(1, 3),
    k=st.sampled_from([1, 3, 5]), bias=st.booleans(), affine=st.booleans(),
    eps=st.sampled_from([1e-5, 1e-3]), seed=st.integers(0, 2**16),
)
def test_fold_matches_torch_fuse_conv_bn_eval(c_in_g, c_out_g, groups, k, bias, affine, eps, seed):
    torch.manual_seed(seed)
    conv = nn.Conv2d(c_in_g * groups, c_out_g * groups, k, padding=k // 2, groups=groups, bias=bias).eval()
    bn = _random_bn(c_out_g * groups, affine, eps)
    ref = fuse_conv_bn_eval(conv, bn)
    ours = fold.fold_conv_bn(conv, bn)
    torch.testing.assert_close(ours.weight, ref.weight, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.bias, ref.bias, rtol=1e-5, atol=1e-6)
    x = torch.randn(2, c_in_g * groups, 7, 6)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), bn(conv(x)), rtol=1e-4, atol=1e-5)


def test_fold_keeps_exact_zeros_and_leaves_inputs_alone():
    conv = nn.Conv2d(4, 8, 3, bias=False)
    with torch.no_grad():
        conv.weight[conv.weight.abs() < 0.1] = 0
    before = conv.weight.clone()
    bn = _random_bn(8)
    w, b = fold.fold_bn_params(conv.weight, None, bn)
    assert torch.equal(w == 0, before == 0)
    assert torch.equal(conv.weight, before) and conv.bias is None
    assert b.shape == (8,) and w.dtype == torch.float32


def test_fold_linear_weight_formula():
    w = torch.randn(5, 7)
    b = torch.randn(5)
    bn = _random_bn(5)
    w2, b2 = fold.fold_bn_params(w, b, bn)
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    torch.testing.assert_close(w2, w * scale[:, None])
    torch.testing.assert_close(b2, (b - bn.running_mean) * scale + bn.bias)


def test_fold_bad_inputs():
    conv = nn.Conv2d(3, 4, 3)
    with pytest.raises(ValueError, match="channels"):
        fold.fold_bn_params(conv.weight, conv.bias, _random_bn(5))
    bn = _random_bn(4)
    bn.running_var[1] = float("nan")
    with pytest.raises(ValueError, match="running_var"):
        fold.fold_bn_params(conv.weight, conv.bias, bn)
    with pytest.raises(ValueError, match="running statistics"):
        fold.fold_bn_params(conv.weight, conv.bias, nn.BatchNorm2d(4, track_running_stats=False))
    with pytest.raises(ValueError, match="not a BatchNorm"):
        fold.fold_bn_params(conv.weight, conv.bias, nn.ReLU())
    with pytest.raises(TypeError, match="conv"):
        fold.fold_conv_bn(nn.Linear(3, 4), _random_bn(4))


# ---- chain finding -----------------------------------------------------------------------
class _Chains(nn.Module):
    """Every relu flavour, a residual use of a BN output, and a conv output used twice."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1, self.r1 = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=True)
        self.c2, self.b2 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.c3, self.b3 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.c4 = nn.Conv2d(4, 4, 1)
        self.c5, self.b5 = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)
        self.c6 = nn.Conv2d(4, 4, 1)
        self.c7, self.b7, self.r7 = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4), nn.ReLU6()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        x = self.r1(self.b1(self.c1(x)))             # conv-bn-relu(module, inplace)
        y = self.b2(self.c2(x))
        x = F.relu(y) + y                            # BN output used twice: fold, no fuse
        c = self.c3(x)
        x = self.b3(c) + c                           # conv output used twice: no fold
        x = torch.relu(self.c4(x))                   # conv-relu (torch.relu)
        x = self.b5(self.c5(x)).relu()               # conv-bn-.relu()
        x = self.c6(x)
        x = self.c6(x)                               # shared module: never folded/fused
        x = F.relu(x, inplace=True)
        x = self.r7(self.b7(self.c7(x)))             # ReLU6 is not a ReLU
        return F.relu(self.fc(x.mean((2, 3))))       # linear-relu


def test_find_chains_respects_other_users():
    gm = torch.fx.symbolic_trace(_Chains().eval())
    chains, notes = fold.find_chains(gm)
    got = {str(c.layer.target): (c.bn is not None and str(c.bn.target), c.relu is not None) for c in chains}
    assert got["c1"] == ("b1", True)
    assert got["c2"] == ("b2", False)
    assert got["c3"] == (False, False) and "several users" in notes["c3"]
    assert got["c4"] == (False, True)
    assert got["c5"] == ("b5", True)
    assert got["c6"] == (False, False) and "more than once" in notes["c6"]
    assert got["c7"] == ("b7", False)
    assert got["fc"] == (False, True)


def test_find_chains_switches():
    gm = torch.fx.symbolic_trace(_Chains().eval())
    chains, _ = fold.find_chains(gm, fold_bn=False, fuse_relu=True)
    got = {str(c.layer.target): (c.bn, c.relu is not None) for c in chains}
    assert got["c1"] == (None, False)  # the relu reads the BN, not the conv
    assert got["c4"] == (None, True)
    chains, _ = fold.find_chains(gm, fold_bn=True, fuse_relu=False)
    assert all(c.relu is None for c in chains)


def test_bn_without_running_stats_not_folded():
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False), nn.ReLU())
    chains, notes = fold.find_chains(torch.fx.symbolic_trace(m))
    assert chains[0].bn is None and chains[0].relu is None
    assert "running statistics" in notes["0"]
    assert fold.find_sequential_chains(m)[0].bn is None


class _CustomSeq(nn.Sequential):
    def forward(self, x):
        return self[0](x) + self[1](self[0](x))


def test_find_sequential_chains():
    m = nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 1), nn.ReLU(),
                      nn.Conv2d(4, 4, 1), nn.ReLU6()),
        _CustomSeq(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)),
        nn.Flatten(), nn.Linear(4, 2), nn.ReLU(),
    )
    found = {(c.seq, c.layer): (c.bn, c.relu) for c in fold.find_sequential_chains(m)}
    assert found == {
        ("0", "0"): ("1", "2"), ("0", "3"): (None, "4"), ("0", "5"): (None, None), ("", "3"): (None, "4"),
    }
