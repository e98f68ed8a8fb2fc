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
    with pytest.raises(ValueError, match="^bn: cannot fold: not a BatchNorm$"):
        fold.fold_bn_params(conv.weight, conv.bias, nn.ReLU())
    with pytest.raises(TypeError, match="^conv: expected nn.Conv2d, got Linear$"):
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
    assert got["c3"] == (False, False) and notes["c3"] == "output has several users; BatchNorm not folded"
    assert got["c4"] == (False, True)
    assert got["c5"] == ("b5", True)
    assert got["c6"] == (False, False) and notes["c6"] == "module called more than once; not folded or fused"
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


# ---- edges the mutation run found uncovered (scripts/mutation.sh fold) -----------------------
def test_fold_conv_bn_keeps_every_conv_hyperparameter():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, (3, 2), stride=(2, 1), padding=(1, 2), dilation=(2, 1), groups=2,
                     bias=False, padding_mode="reflect").eval()
    bn = _random_bn(6, eps=0.3)  # a large eps: dropping it changes every value
    ours = fold.fold_conv_bn(conv, bn)
    ref = fuse_conv_bn_eval(conv, bn)
    for attr in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups",
                 "padding_mode"):
        assert getattr(ours, attr) == getattr(conv, attr), attr
    assert not ours.training and ours.bias is not None and ours.weight.dtype == torch.float32
    torch.testing.assert_close(ours.weight, ref.weight, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.bias, ref.bias, rtol=1e-5, atol=1e-6)
    x = torch.randn(2, 4, 9, 8)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), bn(conv(x)), rtol=1e-4, atol=1e-5)
    # float64 in, float64 out (dtype of the layer kept)
    c64, b64 = conv.double(), _random_bn(6).double()
    assert fold.fold_conv_bn(c64, b64).weight.dtype == torch.float64


def test_fold_bn_params_formula_by_hand():
    """One channel worked by hand: w' = w * g / sqrt(v + eps), b' = (b - m) * g / sqrt(v + eps) + beta."""
    bn = nn.BatchNorm2d(2, eps=0.25).eval()
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([1.0, -2.0]))
        bn.running_var.copy_(torch.tensor([0.75, 3.75]))  # + eps = 1.0, 4.0
        bn.weight.copy_(torch.tensor([3.0, 0.5]))
        bn.bias.copy_(torch.tensor([0.5, -1.0]))
    w = torch.tensor([[2.0, 0.0], [-4.0, 8.0]])
    w2, b2 = fold.fold_bn_params(w, torch.tensor([5.0, 6.0]), bn)
    assert w2.tolist() == [[6.0, 0.0], [-1.0, 2.0]]  # scale 3 / 1, 0.5 / 2
    assert b2.tolist() == [(5 - 1) * 3 + 0.5, (6 + 2) * 0.25 - 1.0]
    w3, b3 = fold.fold_bn_params(w, None, bn)  # no bias: zeros
    assert b3.tolist() == [(0 - 1) * 3 + 0.5, (0 + 2) * 0.25 - 1.0]
    nb = nn.BatchNorm2d(2, affine=False, eps=0.25).eval()  # gamma 1, beta 0
    with torch.no_grad():
        nb.running_mean.copy_(bn.running_mean)
        nb.running_var.copy_(bn.running_var)
    w4, b4 = fold.fold_bn_params(w, None, nb)
    assert w4.tolist() == [[2.0, 0.0], [-2.0, 4.0]] and b4.tolist() == [-1.0, 1.0]


def test_fold_bn_params_errors_name_the_problem():
    w = torch.randn(3, 2)
    with pytest.raises(ValueError, match=r"bias: shape \(4,\) != \(3,\)"):
        fold.fold_bn_params(w, torch.zeros(4), _random_bn(3))
    with pytest.raises(ValueError, match="has 5 channels but the layer has 3 outputs"):
        fold.fold_bn_params(w, None, _random_bn(5))
    with pytest.raises(ValueError, match=r"a BatchNorm1d folds only into a linear weight \(out, in\), got shape \(3, 2, 1, 1\)"):
        fold.fold_bn_params(w[:, :, None, None], None, nn.BatchNorm1d(3).eval())
    with pytest.raises(ValueError, match="BatchNorm3d is not BatchNorm2d or BatchNorm1d"):
        fold.fold_bn_params(w, None, nn.BatchNorm3d(3).eval())
    for name in ("running_mean", "running_var", "weight", "bias"):
        bn = _random_bn(3)
        with torch.no_grad():
            getattr(bn, name)[0] = float("inf")
        with pytest.raises(ValueError, match=f"bn: {name} has non-finite"):
            fold.fold_bn_params(w, None, bn)
    bn = _random_bn(3, eps=0.5)
    with torch.no_grad():
        bn.running_var[2] = -0.5  # var + eps == 0 exactly: no finite scale
    with pytest.raises(ValueError, match=r"^bn: running_var \+ eps must be > 0$"):
        fold.fold_bn_params(w, None, bn)
    bn.running_var[2] = -1.0
    with pytest.raises(ValueError, match="must be > 0"):
        fold.fold_bn_params(w, None, bn)
    bn.running_var[2] = -0.25  # var + eps > 0 although var < 0: foldable
    fold.fold_bn_params(w, None, bn)


def test_can_fold_bn_and_helpers():
    assert fold.can_fold_bn(nn.BatchNorm2d(3)) is None
    assert fold.can_fold_bn(nn.BatchNorm2d(3, track_running_stats=False)) == \
        "BatchNorm without running statistics (track_running_stats=False)"
    assert fold.can_fold_bn(nn.SyncBatchNorm(3)) == "SyncBatchNorm is not BatchNorm2d or BatchNorm1d"
    assert fold.can_fold_bn(nn.BatchNorm1d(3)) is None
    bn = nn.BatchNorm2d(3)
    bn.running_var = None
    assert "running statistics" in fold.can_fold_bn(bn)
    bn = nn.BatchNorm2d(3)
    bn.running_mean = None
    assert "running statistics" in fold.can_fold_bn(bn)
    assert fold.is_relu_module(nn.ReLU()) and fold.is_relu_module(nn.ReLU(inplace=True))
    assert not fold.is_relu_module(nn.ReLU6()) and not fold.is_relu_module(nn.LeakyReLU())
    m = nn.ReLU()
    assert not fold.has_hooks(m)
    h = m.register_forward_pre_hook(lambda mod, inp: None)
    assert fold.has_hooks(m)
    h.remove()
    h = m.register_forward_hook(lambda mod, inp, out: None)
    assert fold.has_hooks(m)
    h.remove()
    assert not fold.has_hooks(m)


class _Edges(nn.Module):
    """BN after a Linear (not folded), hooked / shared / extra-argument BNs, hooked ReLU modules,
    and F.relu with the inplace keyword."""

    def __init__(self) -> None:
        super().__init__()
        self.fc0, self.bn0 = nn.Linear(4, 4), nn.BatchNorm1d(4)
        self.c1, self.b1, self.r1 = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4), nn.ReLU()
        self.c2, self.b2 = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)
        self.c3, self.c3b = nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1)
        self.shared_bn = nn.BatchNorm2d(4)
        self.c4 = nn.Conv2d(4, 4, 1)
        self.c5, self.r5 = nn.Conv2d(4, 4, 1), nn.ReLU()
        self.c6 = nn.Conv2d(4, 4, 1)
        self.c7 = nn.Conv2d(4, 4, 1)
        self.b1.register_forward_hook(lambda m, i, o: None)
        self.r5.register_forward_hook(lambda m, i, o: None)

    def forward(self, x):
        v = self.bn0(self.fc0(x.mean((2, 3))))               # BN after a Linear
        x = self.r1(self.b1(self.c1(x)))                     # BN with hooks: not folded
        x = self.b2(self.c2(x)) + v[:, :, None, None]
        x = self.shared_bn(self.c3(x)) + self.shared_bn(self.c3b(x))  # BN module called twice
        x = self.r5(self.c4(x) * 1.0)                       # hooked ReLU after a non-layer
        x = self.r5(self.c5(x))                              # ReLU module with hooks: not fused
        y = self.c6(x)
        x = F.relu(y, inplace=False)                         # kwarg inplace only: fused
        return F.relu(self.c7(x))


def test_find_chains_edges():
    gm = torch.fx.symbolic_trace(_Edges().eval())
    chains, notes = fold.find_chains(gm)
    got = {str(c.layer.target): (c.bn is not None and str(c.bn.target), c.relu is not None) for c in chains}
    assert got["fc0"] == (False, False) and notes["fc0"] == "BatchNorm after a non-conv layer is not folded"
    assert got["c1"] == (False, False) and notes["c1"] == "BatchNorm b1 not folded: BatchNorm has forward hooks"
    assert got["c2"] == ("b2", False) and "c2" not in notes
    assert got["c3"] == (False, False) and notes["c3"] == \
        "BatchNorm shared_bn not folded: BatchNorm module called more than once"
    assert got["c5"] == (False, False)  # hooked ReLU module
    assert got["c6"] == (False, True) and got["c7"] == (False, True)
    assert set(got) == {"fc0", "c1", "c2", "c3", "c3b", "c4", "c5", "c6", "c7"}
    # only exact layer types
    chains, _ = fold.find_chains(gm, layer_types=(nn.Linear,))
    assert [str(c.layer.target) for c in chains] == ["fc0"]


def test_find_chains_bn_with_extra_arguments_and_relu_kwargs():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c, self.b = nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)
            self.d = nn.Conv2d(3, 3, 1)

        def forward(self, x):
            return torch.relu_(self.d(self.b(self.c(x))))

    gm = torch.fx.symbolic_trace(Net().eval())
    chains, _ = fold.find_chains(gm)
    got = {str(c.layer.target): (c.bn, c.relu is not None) for c in chains}
    assert got["d"] == (None, True)  # torch.relu_ (in-place function) fuses
    # a BN call node with an extra argument: edit the traced graph (fx cannot trace BN(x, y))
    m = nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)).eval()
    gm = torch.fx.symbolic_trace(m)
    bn_node = [n for n in gm.graph.nodes if n.target == "1"][0]
    bn_node.kwargs = {"extra": 1}
    chains, notes = fold.find_chains(gm)
    assert chains[0].bn is None and notes["0"] == "BatchNorm 1 not folded: BatchNorm called with extra arguments"
    bn_node.kwargs = {}
    bn_node.args = (bn_node.args[0], bn_node.args[0])
    chains, notes = fold.find_chains(gm)
    assert chains[0].bn is None and "extra arguments" in notes["0"]


def test_relu_node_forms():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c, self.d, self.e = (nn.Conv2d(2, 2, 1) for _ in range(5))

        def forward(self, x):
            x = F.relu(self.a(x), inplace=True)
            x = self.b(x).relu_()
            x = torch.clamp(self.c(x), min=0)  # not recognised as a ReLU
            x = F.leaky_relu(self.d(x))
            return F.relu(self.e(x), True)     # positional inplace (fx records it as a kwarg): fused

    chains, _ = fold.find_chains(torch.fx.symbolic_trace(Net().eval()))
    assert {str(c.layer.target): c.relu is not None for c in chains} == \
        {"a": True, "b": True, "c": False, "d": False, "e": True}


def test_find_sequential_chains_edges():
    hooked_seq = nn.Sequential(nn.Conv2d(2, 2, 1), nn.ReLU())
    hooked_seq.register_forward_hook(lambda m, i, o: None)
    hooked_conv = nn.Conv2d(2, 2, 1)
    hooked_conv.register_forward_pre_hook(lambda m, i: None)
    hooked_bn = nn.BatchNorm2d(2)
    hooked_bn.register_forward_hook(lambda m, i, o: None)
    hooked_relu = nn.ReLU()
    hooked_relu.register_forward_hook(lambda m, i, o: None)
    inner = nn.Sequential(hooked_conv, nn.ReLU(), nn.Conv2d(2, 2, 1), hooked_bn, nn.ReLU(),
                          nn.Conv2d(2, 2, 1), hooked_relu, nn.Linear(2, 2), nn.BatchNorm2d(2), nn.ReLU(),
                          nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2, track_running_stats=False), nn.ReLU())
    m = nn.Sequential(hooked_seq, inner)
    found = [(c.seq, c.layer, c.bn, c.relu) for c in fold.find_sequential_chains(m)]
    assert found == [
        ("1", "2", None, None),    # its BN has hooks: neither folded nor (the ReLU reads the BN) fused
        ("1", "5", None, None),    # ReLU with hooks
        ("1", "7", None, None),    # BN after a Linear is not folded, so its ReLU is not fused
        ("1", "10", None, None),   # BN without running statistics
    ]
    plain = nn.Sequential(nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2), nn.ReLU(), nn.Linear(2, 2), nn.ReLU())
    assert [(c.layer, c.bn, c.relu) for c in fold.find_sequential_chains(plain, fold_bn=False)] == \
        [("0", None, None), ("3", None, "4")]
    assert [(c.layer, c.bn, c.relu) for c in fold.find_sequential_chains(plain, fuse_relu=False)] == \
        [("0", "1", None), ("3", None, None)]
    assert [(c.layer, c.bn, c.relu) for c in fold.find_sequential_chains(plain, layer_types=(nn.Linear,))] == \
        [("3", None, "4")]
    plain.add_module("5", None)  # None children are skipped, not an error
    assert len(fold.find_sequential_chains(plain)) == 2


def test_find_chains_notes_only_where_a_bn_is_skipped():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c, self.r, self.d = nn.Conv2d(2, 2, 1), nn.ReLU(), nn.Conv2d(2, 2, 1)
            self.e, self.b = nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2)
            self.f, self.g = nn.Conv2d(2, 2, 1), nn.Conv2d(2, 2, 1)

        def forward(self, x):
            a = self.c(x)
            x = self.r(a) + self.d(a)          # two module users, none a BN: no note
            x = self.b(self.e(x))
            x = torch.sigmoid(self.f(x))       # one-argument functions that are not ReLU
            return self.g(x).sigmoid()

    gm = torch.fx.symbolic_trace(Net().eval())
    chains, notes = fold.find_chains(gm)
    assert notes == {}
    assert {str(c.layer.target): (c.bn is not None, c.relu is not None) for c in chains} == \
        {"c": (False, False), "d": (False, False), "e": (True, False), "f": (False, False), "g": (False, False)}
    chains, notes = fold.find_chains(gm, fold_bn=False)  # BN folding off: nothing to explain
    assert notes == {} and all(c.bn is None for c in chains)


def test_batchnorm1d_folds_into_a_linear_weight():
    torch.manual_seed(0)
    lin, bn = nn.Linear(5, 3), nn.BatchNorm1d(3).eval()
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2), bn.weight.uniform_(0.5, 2)
        bn.bias.uniform_(-1, 1)
    w, b = fold.fold_bn_params(lin.weight, lin.bias, bn)
    x = torch.randn(7, 5)
    with torch.no_grad():
        torch.testing.assert_close(x @ w.T + b, bn(lin(x)), rtol=1e-6, atol=1e-6)
