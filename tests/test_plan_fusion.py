"""The plan's fusion matcher (prunecal.sparse.plan: _fold_bn, _fuse, _fuse_residual) against torch.

Every graph pattern the matcher accepts or must reject is built as a small network, compiled
and compared with torch's own eval-mode forward (the reference is torch, never the plan's IR).
Each case also pins how many residual adds the plan fuses into a conv epilogue (``+residual``
in ``describe()``), so that a matcher that stops fusing, or fuses where it must not, fails here
even when the native kernels happen to agree.

The audit's bug: without the guard ``not prod.relu``, ``relu(conv(t)) + t`` became
``relu(conv(t) + t)`` (0.78 away from torch); no test built that pattern.
"""
from __future__ import annotations

from typing import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunecal.sparse import sparsify
from prunecal.sparse.plan import PlanModule, PlanUnsupported, compile_plan

pytestmark = pytest.mark.usefixtures("native")

C, H, W = 8, 9, 11  # odd spatial size: no kernel's fixed 8-lane shape hides an edge


class Net(nn.Module):
    """Convs ``c0..c3`` (3x3, pad 1, C -> C), BNs ``b0..b3``, a stride-2 conv ``s2`` (C -> 2C),
    a 1x1 stride-2 shortcut conv ``p2`` (C -> 2C), a 5x5 pad-2 conv ``c5``, a depthwise conv
    ``dw``, a linear ``fc`` (C -> C) and ``fw`` (W -> W); ``body(self, x)`` wires them into the pattern under test."""

    def __init__(self, body: Callable, seed: int = 0, density: float = 0.6) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        for i in range(4):
            setattr(self, f"c{i}", nn.Conv2d(C, C, 3, padding=1, bias=i % 2 == 0))
            setattr(self, f"b{i}", nn.BatchNorm2d(C))
        self.s2 = nn.Conv2d(C, 2 * C, 3, stride=2, padding=1)
        self.p2 = nn.Conv2d(C, 2 * C, 1, stride=2, bias=False)
        self.bp = nn.BatchNorm2d(2 * C)
        self.c5 = nn.Conv2d(C, C, 5, padding=2)
        self.dw = nn.Conv2d(C, C, 3, padding=1, groups=C)
        self.fc = nn.Linear(C, C)
        self.fw = nn.Linear(W, W)
        self.body = body
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.4)
                    m.weight.mul_((torch.rand(m.weight.shape, generator=g) < density).float())
                    if m.bias is not None:
                        m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.3)
                elif isinstance(m, nn.BatchNorm2d):
                    n = m.num_features
                    m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
                    m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
                    m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                    m.bias.copy_(torch.rand(n, generator=g) - 0.5)
        self.eval()

    def forward(self, x):
        return self.body(self, x)


def _ia(s, x):  # a non-trivial (signed) value to add to: conv + BN, no ReLU
    return s.b3(s.c3(x))


def _double_use(s, x):
    t = _ia(s, x)
    c = s.c0(t)
    return (c + t) + c  # c read twice: must not be fused


def _dead_add(s, x):
    t = _ia(s, x)
    c = s.c0(t)
    _ = torch.relu(c + t)  # dead code: fx keeps it; c itself is the output
    return c


def _iadd_block(s, x):  # the torchvision BasicBlock idiom: out += identity; relu_
    t = _ia(s, x)
    out = s.b1(s.c1(torch.relu(s.b0(s.c0(t)))))
    out += t
    return torch.relu_(out)


def _late_candidate(s, x):  # the only fusable conv (a) is the earlier operand; b has a ReLU
    t = _ia(s, x)
    a = s.c0(t)
    b = torch.relu(s.c1(t))
    return a + b


def _unfused_relu(s, x):  # the add's output has two readers: the ReLU stays an op
    t = _ia(s, x)
    y = s.c0(t) + t
    return torch.relu(y) + y


def _chain(s, x):  # two basic blocks in a row
    t = _ia(s, x)
    y = torch.relu(s.b0(s.c0(t)) + t)
    return torch.relu(s.b1(s.c1(y)) + y)


def _option_a(s, x):  # stride-2 conv + the traced option-A shortcut (subsample + channel pad)
    t = torch.relu(_ia(s, x))
    y = s.s2(t)
    sc = F.pad(t[:, :, ::2, ::2], (0, 0, 0, 0, C // 2, C // 2), "constant", 0)
    return torch.relu(y + sc)


def _option_b(first_shortcut: bool):
    def body(s, x):  # projection shortcut: 1x1 stride-2 conv + BN, both operands are convs
        t = torch.relu(_ia(s, x))
        if first_shortcut:
            sc = s.bp(s.p2(t))
            y = s.s2(t)
        else:
            y = s.s2(t)
            sc = s.bp(s.p2(t))
        return torch.relu(y + sc)
    return body


# name -> (body, fused residual adds, a conv whose output the plan must keep relu'd)
CASES: dict[str, tuple[Callable, int]] = {
    # the audit's pattern: the ReLU belongs to the conv, the add comes after it
    "relu(conv(t)) + t": (lambda s, x: (lambda t: torch.relu(s.c0(t)) + t)(_ia(s, x)), 0),
    # t recomputed by a second call of c3: that conv (not the relu'd c0) takes the add
    "relu(conv(t)) + conv3(x)": (lambda s, x: torch.relu(s.c0(_ia(s, x))) + _ia(s, x), 1),
    "relu(bn(conv(t))) + t": (lambda s, x: (lambda t: F.relu(s.b0(s.c0(t))) + t)(_ia(s, x)), 0),
    "t + relu(conv(t))": (lambda s, x: (lambda t: t + s.c0(t).relu())(_ia(s, x)), 0),
    "relu(relu(conv(t)) + t)": (lambda s, x: (lambda t: torch.relu(torch.relu(s.c0(t)) + t))(_ia(s, x)), 0),
    "nn.ReLU module: relu(conv(t)) + t": (lambda s, x: (lambda t: nn.functional.relu(s.c0(t), inplace=False) + t)(
        _ia(s, x)), 0),
    # fusable: conv output feeds only the add
    "conv(t) + t": (lambda s, x: (lambda t: s.c0(t) + t)(_ia(s, x)), 1),
    "t + conv(t)": (lambda s, x: (lambda t: t + s.c0(t))(_ia(s, x)), 1),
    "relu(conv(t) + t)": (lambda s, x: (lambda t: torch.relu(s.c0(t) + t))(_ia(s, x)), 1),
    "relu(bn(conv(t)) + t)": (lambda s, x: (lambda t: torch.relu(s.b0(s.c0(t)) + t))(_ia(s, x)), 1),
    "(conv(t) + t).relu_() method add": (lambda s, x: (lambda t: s.c0(t).add(t).relu_())(_ia(s, x)), 1),
    "relu6(conv(t) + t)": (lambda s, x: (lambda t: F.relu6(s.c0(t) + t))(_ia(s, x)), 1),
    "basic block relu(bn(conv(relu(bn(conv(t))))) + t)":
        (lambda s, x: (lambda t: torch.relu(s.b1(s.c1(torch.relu(s.b0(s.c0(t))))) + t))(_ia(s, x)), 1),
    "residual on the network input: conv(x) + x": (lambda s, x: s.c0(x) + x, 1),
    "relu(conv(x) + x) on the network input": (lambda s, x: torch.relu(s.b0(s.c0(x)) + x), 1),
    "residual read by a 5x5 pad-2 conv too": (lambda s, x: (lambda t: s.c5(t) + (s.c0(t) + t))(_ia(s, x)), 2),
    "depthwise conv + t": (lambda s, x: (lambda t: torch.relu(s.dw(t) + t))(_ia(s, x)), 1),
    "iadd basic block": (_iadd_block, 1),
    "earlier conv is the candidate": (_late_candidate, 1),
    "add output read twice": (_unfused_relu, 1),
    "two blocks": (_chain, 2),
    "stride-2 conv + option-A shortcut": (_option_a, 1),
    "option-B shortcut after the branch": (_option_b(False), 1),
    "option-B shortcut before the branch": (_option_b(True), 1),
    "two convs: conv(t) + conv(t)": (lambda s, x: (lambda t: s.c0(t) + s.c1(t))(_ia(s, x)), 1),
    "chained adds (conv(t) + t) + u": (lambda s, x: (lambda t, u: (s.c0(t) + t) + u)(_ia(s, x), torch.relu(x)), 1),
    "chained adds u + (conv(t) + t)": (lambda s, x: (lambda t, u: u + (s.c0(t) + t))(_ia(s, x), torch.relu(x)), 1),
    # not fusable
    "conv output read twice": (_double_use, 0),
    "c + c": (lambda s, x: (lambda c: c + c)(s.c0(_ia(s, x))), 0),
    "linear(v) + v": (lambda s, x: (lambda v: torch.relu(s.fc(v) + v))(
        torch.flatten(F.adaptive_avg_pool2d(_ia(s, x), 1), 1)), 0),
    "relu(t) + t (no conv)": (lambda s, x: (lambda t: torch.relu(t) + t)(_ia(s, x)), 0),
    "dead add, conv is the output": (_dead_add, 0),
    "dead relu, conv is the output": (lambda s, x: (lambda c: (torch.relu(c), c)[1])(s.c0(_ia(s, x))), 0),
    # other fusions of the same pass
    "relu(relu(x)) on the input": (lambda s, x: s.c0(torch.relu(torch.relu(x))), 0),
    "fc(relu(fc(v)))": (lambda s, x: s.fc(torch.relu(s.fc(torch.flatten(F.adaptive_avg_pool2d(_ia(s, x), 1), 1)))),
                        0),
    "two subsampling shortcuts, two channel pads": (lambda s, x: F.pad(F.pad(
        _ia(s, x)[:, :, ::2, ::2], (0, 0, 0, 0, 1, 3))[:, :, ::2, ::2], (0, 0, 0, 0, 2, 0)), 0),
    "an unfusable add, then a fusable one": (lambda s, x: (lambda u: torch.relu(s.c0(u) + u))(
        (lambda t: torch.relu(t) + t)(_ia(s, x))), 1),
    "subsample read twice": (lambda s, x: (lambda u: u[:, :, ::2, ::2] + F.pad(u, (0, 0, 0, 0, 0, 0))[:, :, ::2, ::2])(
        _ia(s, x)[:, :, ::2, ::2]), 0),
}


def _describe(pm: PlanModule) -> str:
    return pm.describe()


@pytest.mark.parametrize("name", list(CASES))
def test_pattern_matches_torch(name):
    body, fused = CASES[name]
    m = Net(body)
    x = torch.randn(4, C, H, W, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = m(x)
        assert ref.abs().max() > 0.5  # the comparison is not of near-zeros
        for backend, jit in (("csr", True), ("csr", False), ("bsr", False)):
            pm = compile_plan(m, backend, input_size=(C, H, W), jit=jit)
            assert isinstance(pm, PlanModule)
            assert _describe(pm).count("+residual") == fused, (backend, jit, _describe(pm))
            for threads, mode in ((1, "image"), (2, "op")):
                pm.threads, pm.mode = threads, mode
                y = pm(x)
                assert y.shape == ref.shape
                torch.testing.assert_close(y, ref, rtol=1e-5, atol=2e-5 * float(ref.abs().max()),
                                           msg=lambda s: f"{name} {backend} jit={jit} threads={threads}: {s}")
        pm_generic = compile_plan(m, "csr", input_size=(C, H, W), isa="generic")
        torch.testing.assert_close(pm_generic(x), ref, rtol=1e-5, atol=2e-5 * float(ref.abs().max()))


@pytest.mark.parametrize("name", ["relu(conv(t)) + t", "relu(bn(conv(t))) + t", "conv(t) + t",
                                  "relu(bn(conv(t)) + t)", "basic block relu(bn(conv(relu(bn(conv(t))))) + t)",
                                  "option-B shortcut after the branch", "two blocks"])
def test_pattern_through_sparsify(name):
    """sparsify() first (BN folded, ReLU fused into FoldedConv2d/SparseConv2d: ``relu=True`` on
    the layer itself), then the plan: a layer that already carries its ReLU must not take the add."""
    body, fused = CASES[name]
    m = Net(body)
    x = torch.randn(3, C, H, W, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = m(x)
        for backend in ("dense", "csr"):
            fast = sparsify(m, backend, plan=False)
            pm = compile_plan(fast, "csr", input_size=(C, H, W))
            assert pm.describe().count("+residual") == fused
            torch.testing.assert_close(pm(x), ref, rtol=1e-5, atol=2e-5 * float(ref.abs().max()))


def test_audit_pattern_differs_when_fused():
    """The pattern is a real trap: fusing the add under the ReLU is far from torch (so the
    comparison above can tell the two apart)."""
    m = Net(CASES["relu(conv(t)) + t"][0])
    x = torch.randn(4, C, H, W, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        t = m.b3(m.c3(x))
        right = torch.relu(m.c0(t)) + t
        wrong = torch.relu(m.c0(t) + t)
        assert float((right - wrong).abs().max()) > 0.1
        torch.testing.assert_close(m(x), right)


@pytest.mark.parametrize("body", [
    lambda s, x: s.b0(s.c0(x) + x),                      # BN after the add: no conv to fold into
    lambda s, x: s.b0(torch.relu(s.c0(x))),               # BN after a ReLU
    lambda s, x: (lambda c: s.b0(c) + c)(s.c0(x)),        # conv output read by the BN and the add
    lambda s, x: s.b0(x),                                  # BN on the input
    lambda s, x: s.c0(x) + x[:, :, :, :1],                # broadcasting add
    lambda s, x: (lambda c: torch.relu_(c) + c)(s.c0(x)),  # in-place ReLU of a value read again
    lambda s, x: s.fw(s.c0(x)),                          # Linear over the last axis of (N, C, H, W)
    lambda s, x: (lambda c: (s.b0(c), c)[1])(s.c0(x)),     # dead BN of the output conv
    lambda s, x: (lambda c: (torch.relu_(c), c)[1])(s.c0(x)),  # in-place ReLU of the returned value
    lambda s, x: (lambda c: (c.add_(x), c)[1])(s.c0(x)),   # in-place add into the returned value
])
def test_rejected_patterns(body):
    m = Net(body)
    with pytest.raises(PlanUnsupported):
        compile_plan(m, "csr", input_size=(C, H, W))
    fast = compile_plan(m, "csr", input_size=(C, H, W), fallback=True)  # sparsify gets it right
    x = torch.randn(2, C, H, W)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), m(x), rtol=1e-4, atol=1e-4)


def test_bn_folded_into_conv_with_residual_matches_torch_per_channel():
    """Folding a BN before the residual add: the bias of channel k is (b - mean) * s + beta, added
    before the residual. A per-channel check that an off-by-one channel or a missing eps in the
    fold would break (eps large here so that dropping it shows)."""
    def body(s, x):
        return torch.relu(s.b0(s.c0(x)) + x)

    m = Net(body)
    m.b0.eps = 0.5
    x = torch.randn(2, C, H, W)
    with torch.no_grad():
        ref = m(x)
        y = compile_plan(m, "csr", input_size=(C, H, W))(x)
    for k in range(C):
        torch.testing.assert_close(y[:, k], ref[:, k], rtol=1e-5, atol=1e-5)


def test_bn_after_a_sparsify_layer_that_carries_its_relu():
    """sparsify() fuses the ReLU of ``bn(relu(conv(x)))`` into the conv layer and leaves the BN:
    the plan must not fold that BN into the layer (it would run before the ReLU)."""
    m = Net(lambda s, x: s.b0(torch.relu(s.c0(x))))
    x = torch.randn(2, C, H, W)
    with torch.no_grad():
        ref = m(x)
        for backend in ("dense", "csr"):
            fast = sparsify(m, backend, plan=False)
            assert any(getattr(mod, "relu", False) is True for mod in fast.modules())  # the ReLU is in the layer
            with pytest.raises(PlanUnsupported, match="BatchNorm"):
                compile_plan(fast, "csr", input_size=(C, H, W))
            torch.testing.assert_close(compile_plan(fast, "csr", input_size=(C, H, W), fallback=True)(x), ref,
                                       rtol=1e-4, atol=1e-4)


def _signature(pm: PlanModule) -> str:
    """The plan's native ops, one word each: kind, +relu where a ReLU is fused, +res where the
    residual add is in the conv's epilogue (flatten is no op: the same buffer)."""
    words = []
    for line in pm.describe().splitlines()[1:]:
        w = line.split()[0]
        w += "+relu" if " +relu" in line else ""
        w += "+res" if " +residual" in line else ""
        words.append(w)
    return " ".join(words)


# worked out by hand from the fusion rules (module docstring of prunecal.sparse.plan): c3 + b3
# (the `_ia` prefix) is always one conv, BN folded away
SIGNATURES = {
    "relu(conv(t)) + t": "conv conv+relu add",
    "relu(relu(conv(t)) + t)": "conv conv+relu add+relu",
    "relu(conv(t) + t)": "conv conv+relu+res",
    "conv(t) + t": "conv conv+res",
    "relu6(conv(t) + t)": "conv conv+res clamp",
    "add output read twice": "conv conv+res relu add",
    "basic block relu(bn(conv(relu(bn(conv(t))))) + t)": "conv conv+relu conv+relu+res",
    "two blocks": "conv conv+relu+res conv+relu+res",
    "stride-2 conv + option-A shortcut": "conv+relu shortcut conv+relu+res",
    "fc(relu(fc(v)))": "conv avgpool linear+relu linear",
    "linear(v) + v": "conv avgpool linear add+relu",
    "relu(t) + t (no conv)": "conv relu add",
    "relu(relu(x)) on the input": "relu conv",
    "two subsampling shortcuts, two channel pads": "conv shortcut",
    "conv output read twice": "conv conv add add",
    "c + c": "conv conv add",
    "dead relu, conv is the output": "conv conv relu",
    "an unfusable add, then a fusable one": "conv relu add conv+relu+res",
}


@pytest.mark.parametrize("name", list(SIGNATURES))
def test_fused_op_sequence(name):
    """What the matcher fuses (outputs alone cannot tell a missed fusion from a fused one)."""
    pm = compile_plan(Net(CASES[name][0]), "csr", input_size=(C, H, W))
    assert _signature(pm) == SIGNATURES[name]


@pytest.mark.parametrize("body, node, op, why", [
    (lambda s, x: s.b0(s.c0(x) + x), "b0", "BatchNorm2d", "a BatchNorm is supported only right after a conv"),
    (lambda s, x: s.b0(torch.relu(s.c0(x))), "b0", "BatchNorm2d", "a BatchNorm is supported only right after a conv"),
    (lambda s, x: (lambda c: (s.b0(c), c)[1])(s.c0(x)), "b0", "BatchNorm2d",
     "a BatchNorm is supported only right after a conv"),
    (lambda s, x: (lambda c: torch.relu_(c) + c)(s.c0(x)), "relu_", "relu",
     "in-place op on a value that is read again later"),
    (lambda s, x: (lambda c: (c.add_(x), c)[1])(s.c0(x)), "add_", "add",
     "in-place op on a value that is read again later"),
])
def test_rejection_names_the_node(body, node, op, why):
    with pytest.raises(PlanUnsupported) as e:
        compile_plan(Net(body), "csr", input_size=(C, H, W))
    assert (e.value.node, e.value.op) == (node, op)
    assert str(e.value) == f"plan: unsupported node {node!r} ({op}): {why}"


def test_batchnorm1d_after_linear_folds_and_elsewhere_is_refused():
    class Mlp(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c0, self.pool = nn.Conv2d(3, 8, 3, padding=1), nn.AdaptiveAvgPool2d(1)
            self.fc, self.bn, self.out = nn.Linear(8, 6), nn.BatchNorm1d(6), nn.Linear(6, 2)

        def forward(self, x):
            return self.out(torch.relu(self.bn(self.fc(self.pool(self.c0(x)).flatten(1)))))

    torch.manual_seed(0)
    net = Mlp().eval()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-1, 1), net.bn.running_var.uniform_(0.5, 2)
    pm = compile_plan(net, "csr", input_size=(3, 8, 8))
    assert "BatchNorm" not in pm.describe() and "+relu" in [ln for ln in pm.describe().splitlines() if "fc" in ln][0]
    x = torch.randn(5, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(pm(x), net(x), rtol=1e-5, atol=1e-6)

    class BnAfterRelu(Mlp):
        def forward(self, x):
            return self.out(self.bn(torch.relu(self.fc(self.pool(self.c0(x)).flatten(1)))))

    with pytest.raises(PlanUnsupported, match="a BatchNorm1d is supported only right after a linear layer"):
        compile_plan(BnAfterRelu().eval(), "csr", input_size=(3, 8, 8))


def test_bn_without_running_statistics_is_unsupported_not_a_crash():
    m = Net(lambda s, x: torch.relu(s.bn_batch(s.c0(x))))
    m.bn_batch = nn.BatchNorm2d(C, track_running_stats=False).eval()
    with pytest.raises(PlanUnsupported) as e:
        compile_plan(m, "csr", input_size=(C, H, W))
    assert e.value.node == "bn_batch" and e.value.op == "BatchNorm2d"
    assert str(e.value).endswith("BatchNorm without running statistics (track_running_stats=False)")
    x = torch.randn(2, C, H, W)
    with torch.no_grad():  # and the fallback computes it as torch does (batch statistics)
        torch.testing.assert_close(compile_plan(m, "csr", input_size=(C, H, W), fallback=True)(x), m(x),
                                   rtol=1e-4, atol=1e-4)
