"""Structured pruning: channel surgery against torch's own ops, dependency groups,
exact channel counts and FLOPs, and the strong check that removing channels equals
zeroing them in the original network."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn
import torch.nn.functional as F

from prunecal.prune import find_channel_groups, prune, sparsity_report
from prunecal.prune.channel_surgery import (slice_bn, slice_conv_in, slice_conv_out,
                                            slice_depthwise, slice_linear_in)

STRUCTURED = ["l1_filter", "bn_channel"]


# ---------------------------------------------------------------- local nets
class ConvNet(nn.Module):
    """conv-bn-relu x2, max-pool, then a flatten (view) of a 4x4 map into the classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=True)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 12, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(12)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(12 * 4 * 4, 5)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.pool(torch.relu(self.bn2(self.conv2(x))))
        return self.fc(x.view(x.size(0), -1))


class ResNetTiny(nn.Module):
    """Stem + one residual block: only the block's internal channel is removable."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.c1 = nn.Conv2d(8, 10, 3, padding=1, bias=False)
        self.b1 = nn.BatchNorm2d(10)
        self.c2 = nn.Conv2d(10, 8, 3, padding=1, bias=False)
        self.b2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))
        y = self.b2(self.c2(F.relu(self.b1(self.c1(x)))))
        x = F.relu(x + y)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class MeanNet(nn.Module):
    """Global pooling by ``mean((2, 3))``, a depthwise conv, and a flatten by
    ``reshape(x.shape[0], -1)``."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 6, 1)
        self.b1 = nn.BatchNorm2d(6)
        self.dw = nn.Conv2d(6, 6, 3, padding=1, groups=6, bias=True)
        self.bdw = nn.BatchNorm2d(6)
        self.c2 = nn.Conv2d(6, 5, 3, stride=4)
        self.b2 = nn.BatchNorm2d(5)
        self.fc = nn.Linear(5, 3)
        self.c3 = nn.Conv2d(3, 4, 3, stride=4)
        self.b3 = nn.BatchNorm2d(4)
        self.fc3 = nn.Linear(4 * 2 * 2, 3)

    def forward(self, x):
        y = F.relu6(self.bdw(self.dw(F.relu6(self.b1(self.c1(x))))))
        y = self.fc(F.relu(self.b2(self.c2(y))).mean((2, 3)))
        z = F.relu(self.b3(self.c3(x)))
        return y + self.fc3(z.reshape(z.shape[0], -1))


class ConcatNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(3, 4, 1)
        self.c = nn.Conv2d(8, 6, 1)
        self.fc = nn.Linear(6, 2)

    def forward(self, x):
        x = self.c(torch.cat([self.a(x), self.b(x)], 1))
        return self.fc(x.mean((2, 3)))


class OnlyResidual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x):
        return x + self.conv(x)


class Dynamic(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.conv2 = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        x = self.conv(x)
        return self.conv2(x) if x.sum() > 0 else x


class NoBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 6, 3)
        self.c2 = nn.Conv2d(6, 4, 3)

    def forward(self, x):
        return self.c2(torch.relu(self.c1(x)))


def _randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.randn(n, generator=g))
                m.bias.copy_(torch.randn(n, generator=g) * 0.5)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
    return model.eval()


def _real(name: str) -> nn.Module:
    from prunecal import models  # part of the package: never skipped
    kw = {"width_mult": 0.25} if name in ("mobilenetv2", "vgg11_bn") else {}
    return _randomise_bn(models.create(name, **kw))


def _zero_removed(model: nn.Module, info: dict) -> nn.Module:
    """The original net with every removed channel zeroed in all its group's members."""
    mods = dict(model.named_modules())
    with torch.no_grad():
        for g in info["groups"].values():
            drop = sorted(set(range(g["channels"])) - set(g["kept_index"]))
            for name in g["members"]:
                m = mods[name]
                m.weight[drop] = 0
                if m.bias is not None:
                    m.bias[drop] = 0
    return model


# ---------------------------------------------------------------- surgery helpers
@settings(max_examples=12, deadline=None)
@given(cin=st.integers(1, 6), cout=st.integers(1, 6), k=st.sampled_from([1, 3]),
       stride=st.integers(1, 2), bias=st.booleans(), data=st.data())
def test_surgery_matches_torch(cin, cout, k, stride, bias, data):
    conv = nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=bias)
    x = torch.randn(2, cin, 7, 7)
    keep_out = sorted(data.draw(st.sets(st.integers(0, cout - 1), min_size=1)))
    keep_in = sorted(data.draw(st.sets(st.integers(0, cin - 1), min_size=1)))
    ref = conv(x)
    c = slice_conv_out(_copy(conv), torch.tensor(keep_out))
    assert c.out_channels == len(keep_out)
    torch.testing.assert_close(c(x), ref[:, keep_out])
    zeroed = _copy(conv)
    with torch.no_grad():
        zeroed.weight[:, [i for i in range(cin) if i not in keep_in]] = 0
    c = slice_conv_in(_copy(conv), torch.tensor(keep_in))
    torch.testing.assert_close(c(x[:, keep_in]), zeroed(x))
    bn = _randomise_bn(nn.BatchNorm2d(cout))
    b = slice_bn(_copy(bn), torch.tensor(keep_out))
    torch.testing.assert_close(b(ref[:, keep_out].detach()), bn(ref.detach())[:, keep_out])
    dw = nn.Conv2d(cout, cout, 3, padding=1, groups=cout, bias=bias)
    d = slice_depthwise(_copy(dw), torch.tensor(keep_out))
    assert d.groups == d.in_channels == d.out_channels == len(keep_out)
    torch.testing.assert_close(d(ref[:, keep_out].detach()), dw(ref.detach())[:, keep_out])
    spatial = data.draw(st.integers(1, 4))
    lin = nn.Linear(cout * spatial, 3)
    feats = torch.randn(2, cout, spatial)
    lz = _copy(lin)
    drop = [i for i in range(cout) if i not in keep_out]
    with torch.no_grad():
        lz.weight.view(3, cout, spatial)[:, drop] = 0
    li = slice_linear_in(_copy(lin), torch.tensor(keep_out), spatial)
    torch.testing.assert_close(li(feats[:, keep_out].flatten(1)), lz(feats.flatten(1)))


def _copy(m):
    import copy
    return copy.deepcopy(m)


def test_surgery_bad_input():
    conv = nn.Conv2d(3, 4, 3)
    with pytest.raises(ValueError, match="at least 1"):
        slice_conv_out(conv, torch.tensor([], dtype=torch.long))
    with pytest.raises(ValueError, match="out of range"):
        slice_conv_out(conv, torch.tensor([4]))
    with pytest.raises(ValueError, match="duplicate"):
        slice_conv_in(conv, torch.tensor([0, 0]))
    with pytest.raises(ValueError, match="depthwise"):
        slice_depthwise(conv, torch.tensor([0]))
    with pytest.raises(ValueError, match="grouped"):
        slice_conv_out(nn.Conv2d(4, 4, 1, groups=2), torch.tensor([0]))
    with pytest.raises(ValueError, match="multiple"):
        slice_linear_in(nn.Linear(10, 2), torch.tensor([0]), spatial=3)


# ---------------------------------------------------------------- dependency groups
def test_groups_local_nets():
    g = find_channel_groups(ConvNet())
    assert [(x.producer, x.members, x.consumer, x.spatial) for x in g] == [
        ("conv1", ("conv1", "bn1"), "conv2", 1), ("conv2", ("conv2", "bn2"), "fc", 16)]
    g = find_channel_groups(MeanNet())
    assert [(x.producer, x.members, x.consumer, x.spatial) for x in g] == [
        ("c1", ("c1", "b1", "dw", "bdw"), "c2", 1), ("c2", ("c2", "b2"), "fc", 1),
        ("c3", ("c3", "b3"), "fc3", 4)]
    g = find_channel_groups(ResNetTiny())
    assert [(x.producer, x.consumer) for x in g] == [("c1", "c2")]
    # channels meeting a concatenation are coupled: only the conv after it is prunable
    assert [x.producer for x in find_channel_groups(ConcatNet())] == ["c"]
    with pytest.raises(ValueError, match="OnlyResidual.*no channel group"):
        find_channel_groups(OnlyResidual())
    with pytest.raises(ValueError, match="Dynamic"):
        prune(Dynamic(), "l1_filter", 0.5)
    nested = nn.Sequential(nn.Conv2d(3, 3, 1), nn.Sequential(Dynamic()))
    with pytest.raises(ValueError, match=r"module '1.0' \(Dynamic\)"):
        prune(nested, "l1_filter", 0.5)
    with pytest.raises(ValueError, match="c1"):  # bn_channel needs a BN: names the layer
        prune(NoBN(), "bn_channel", 0.5)
    out = prune(NoBN(), "l1_filter", 0.5)
    assert out.c1.out_channels == 3 and out.c2.in_channels == 3


def test_groups_real_models():
    assert [g.producer for g in find_channel_groups(_real("resnet20"))] == [
        f"layer{s}.{b}.conv1" for s in (1, 2, 3) for b in range(3)]
    vgg = find_channel_groups(_real("vgg11_bn"))
    assert len(vgg) == 8 and vgg[-1].consumer == "classifier"
    mb = _real("mobilenetv2")
    groups = {g.producer: g for g in find_channel_groups(mb)}
    expand = [f"layers.{i}.conv1" for i, blk in enumerate(mb.layers) if blk.conv1 is not None]
    assert set(expand) <= set(groups)
    g = groups["layers.1.conv1"]
    assert g.members == ("layers.1.conv1", "layers.1.bn1", "layers.1.conv2", "layers.1.bn2")
    assert g.consumer == "layers.1.conv3"
    # channels coupled through residual sums are never in a group
    for i, blk in enumerate(mb.layers):
        if blk.use_residual:
            assert f"layers.{i}.conv3" not in groups


# ---------------------------------------------------------------- pruning results
NETS = ["ConvNet", "ResNetTiny", "MeanNet", "resnet20", "vgg11_bn", "mobilenetv2"]
SMALL_INPUT = {"ConvNet": (3, 8, 8), "MeanNet": (3, 8, 8)}


def _net(name):
    return {"ConvNet": lambda: _randomise_bn(ConvNet()),
            "MeanNet": lambda: _randomise_bn(MeanNet()),
            "ResNetTiny": lambda: _randomise_bn(ResNetTiny())}.get(name, lambda: _real(name))()


def _x(name, n):
    return torch.randn(n, *SMALL_INPUT.get(name, (3, 32, 32)))


@pytest.mark.parametrize("name", NETS)
@pytest.mark.parametrize("method", STRUCTURED)
def test_removing_equals_zeroing(name, method):
    """The strong check: the smaller net computes exactly what the original computes with
    the removed channels' conv filters and BN gamma/beta zeroed."""
    model = _net(name)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = prune(model, method, 0.4, seed=0)
    x = _x(name, 3)
    for k, v in model.state_dict().items():  # input untouched
        assert torch.equal(v, before[k]), k
    info = out.prune_info
    assert info["kind"] == "structured" and info["method"] == method
    assert 0 < info["param_fraction"] < 1
    y = out(x)
    ref = _zero_removed(_copy(model), info)(x)
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-4)
    assert sum(p.numel() for p in out.parameters()) == info["params_after"]


@settings(max_examples=10, deadline=None)
@given(name=st.sampled_from(["ConvNet", "MeanNet", "ResNetTiny"]),
       method=st.sampled_from(STRUCTURED), scope=st.sampled_from(["global", "layer"]),
       s=st.floats(0.0, 0.99), seed=st.integers(0, 5))
def test_removing_equals_zeroing_any_sparsity(name, method, scope, s, seed):
    torch.manual_seed(seed)
    model = _randomise_bn({"ConvNet": ConvNet, "MeanNet": MeanNet, "ResNetTiny": ResNetTiny}[name](),
                          seed)
    out = prune(model, method, s, scope=scope)
    info = out.prune_info
    total = sum(g["channels"] for g in info["groups"].values())
    removed = total - sum(g["kept"] for g in info["groups"].values())
    room = sum(g["channels"] - 1 for g in info["groups"].values())
    if scope == "global":  # exact up to the keep-one-channel floor
        assert removed == min(round(s * total), room)
    else:
        assert removed == sum(min(round(s * g["channels"]), g["channels"] - 1)
                              for g in info["groups"].values())
    x = _x(name, 2)
    torch.testing.assert_close(out(x), _zero_removed(_copy(model), info)(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", NETS)
def test_sparsity_zero_is_identical(name):
    model = _net(name)
    x = _x(name, 2)
    for method in STRUCTURED:
        out = prune(model, method, 0.0)
        assert torch.equal(out(x), model(x))
        assert out.prune_info["param_fraction"] == 1.0


def _expected_macs(model: nn.Module, info: dict, input_size) -> float:
    """Independent FLOPs expectation: each conv/linear of the original scales by the kept
    fraction of its output channels (group members) and of its input channels (consumer)."""
    rep = sparsity_report(model, input_size)
    mods = dict(model.named_modules())
    f_out, f_in = {}, {}
    for g in info["groups"].values():
        frac = g["kept"] / g["channels"]
        for m in g["members"]:
            f_out[m] = frac
        f_in[g["consumer"]] = frac
    total = 0.0
    for layer in rep.layers:
        scale = f_out.get(layer.name, 1.0) * f_in.get(layer.name, 1.0)
        assert not (layer.name in f_in and getattr(mods[layer.name], "groups", 1) > 1)
        total += layer.macs * scale
    return total


@pytest.mark.parametrize("name", ["resnet20", "vgg11_bn", "mobilenetv2"])
def test_channel_counts_and_flops(name):
    model = _net(name)
    out = prune(model, "l1_filter", 0.5)
    info = out.prune_info
    mods = dict(out.named_modules())
    for producer, g in info["groups"].items():
        assert g["kept"] == g["channels"] - round(0.5 * g["channels"])  # layer scope: per group
        assert mods[producer].out_channels == g["kept"]
        c = mods[g["consumer"]]
        assert (c.in_channels if isinstance(c, nn.Conv2d) else c.in_features) % g["kept"] == 0
    assert info["achieved_sparsity"] == pytest.approx(
        sum(round(0.5 * g["channels"]) for g in info["groups"].values())
        / sum(g["channels"] for g in info["groups"].values()))
    got = sparsity_report(out).dense_macs
    assert got == pytest.approx(_expected_macs(model, info, (3, 32, 32)), rel=1e-9)
    assert got < sparsity_report(model).dense_macs


def test_resnet20_known_counts():
    out = prune(_net("resnet20"), "l1_filter", 0.5)
    assert [out.get_submodule(f"layer{s}.0.conv1").out_channels for s in (1, 2, 3)] == [8, 16, 32]
    # residual-coupled channels untouched
    assert out.get_submodule("layer3.2.conv2").out_channels == 64 and out.linear.in_features == 64


def test_bn_channel_global_picks_smallest_gamma_and_keeps_one():
    model = _randomise_bn(ConvNet())
    with torch.no_grad():
        model.bn1.weight.copy_(torch.linspace(0.1, 0.8, 8))
        model.bn2.weight.copy_(-torch.linspace(0.15, 1.25, 12))
    out = prune(model, "bn_channel", 0.25)  # 5 of 20 channels, |gamma| 0.1 .. 0.35
    assert out.prune_info["groups"]["conv1"]["kept_index"] == [3, 4, 5, 6, 7]
    assert out.prune_info["groups"]["conv2"]["kept_index"] == list(range(2, 12))
    out = prune(model, "bn_channel", 0.99)
    assert out.conv1.out_channels == 1 and out.conv2.out_channels == 1
    assert out(torch.randn(1, 3, 8, 8)).shape == (1, 5)
    out = prune(model, "bn_channel", 0.5, scope="layer")
    assert out.conv1.out_channels == 4 and out.conv2.out_channels == 6


def test_options_and_errors():
    model = _randomise_bn(ConvNet())
    out = prune(model, "l1_filter", 0.5, layers=["conv2"])
    assert out.conv1.out_channels == 8 and out.conv2.out_channels == 6
    assert list(out.prune_info["groups"]) == ["conv2"]
    with pytest.raises(ValueError, match="conv1"):
        prune(model, "l1_filter", 0.5, layers=["bn1"])
    with pytest.raises(ValueError, match="scope"):
        prune(model, "l1_filter", 0.5, scope="everywhere")
    with pytest.raises(ValueError, match="min_channels"):
        prune(model, "l1_filter", 0.5, min_channels=0)
    with pytest.raises(ValueError, match="min_channels"):
        prune(model, "bn_channel", 0.5, min_channels=2.5)
    for method in STRUCTURED:  # was a ZeroDivisionError / torch.cat error
        with pytest.raises(ValueError, match="empty list.*prunable: \\['conv1'"):
            prune(model, method, 0.5, layers=[])
    for bad in (1.0, -0.5, float("nan")):
        with pytest.raises(ValueError, match="sparsity"):
            prune(model, "bn_channel", bad)
    out = prune(model, "l1_filter", 0.9, min_channels=3)
    assert out.conv1.out_channels == 3 and out.conv2.out_channels == 3
    a, b = prune(model, "l1_filter", 0.5, scope="global"), prune(model, "l1_filter", 0.5, scope="global")
    assert a.prune_info["groups"] == b.prune_info["groups"]
    assert a.prune_info["achieved_sparsity"] == 0.5


def test_structured_then_unstructured():
    model = _randomise_bn(ConvNet())
    small = prune(model, "l1_filter", 0.5)
    both = prune(small, "global_magnitude", 0.5)
    assert both.prune_info["previous"]["method"] == "l1_filter"
    assert both.conv1.out_channels == 4
    rep = sparsity_report(both, (3, 8, 8))
    assert rep.sparsity == pytest.approx(0.5, abs=1 / rep.prunable_params)
    assert rep.effective_macs < rep.dense_macs < sparsity_report(model, (3, 8, 8)).dense_macs


def test_l1_ranks_by_filter_norm():
    model = _randomise_bn(ConvNet())
    with torch.no_grad():
        norms = torch.tensor([5., 1., 4., 2., 8., 3., 7., 6.])
        model.conv1.weight.copy_(torch.sign(torch.randn_like(model.conv1.weight)).abs()
                                 * (norms / 27).view(8, 1, 1, 1))
    out = prune(model, "l1_filter", 0.5, layers=["conv1"])
    assert out.prune_info["groups"]["conv1"]["kept_index"] == [0, 4, 6, 7]  # norms 5, 8, 7, 6


def test_pretrained_resnet20_structured(shared_data):
    """Real weights: mild L1-filter pruning keeps most accuracy, stronger pruning loses more
    (measured on all 846 original images: dense 91.7 %, l1_filter 0.1 -> 86.9 %, 0.3 -> 62.2 %)."""
    from prunecal import models  # part of the package: never skipped
    from prunecal.data import load_cifar10
    from prunecal.train import evaluate

    x, y = load_cifar10(shared_data / "cifar10" / "exact_subset.npz", split="test")
    x, y = x[:128], y[:128]
    sp = models.spec("resnet20")
    dense = models.create("resnet20", weights=shared_data / "weights" / "resnet20-12fca82f.th")
    mild = evaluate(prune(dense, "l1_filter", 0.1), x, y, sp.mean, sp.std)
    strong = evaluate(prune(dense, "l1_filter", 0.3), x, y, sp.mean, sp.std)
    assert 0.8 < mild and strong < mild
    out = prune(dense, "bn_channel", 0.1)
    assert out.prune_info["param_fraction"] < 0.95
    assert evaluate(out, x, y, sp.mean, sp.std) > 0.7


@pytest.mark.parametrize("method", STRUCTURED)
@pytest.mark.parametrize("scope", ["global", "layer"])
def test_deterministic_and_repruning_semantics(method, scope):
    """Same input -> bit-identical result (state and prune_info); pruning a pruned net at
    sparsity 0 changes nothing (idempotent), at s > 0 removes s of the *remaining*
    channels and records the first pruning under ``previous``."""
    model = _net("mobilenetv2")
    a = prune(model, method, 0.3, scope=scope, seed=1)
    b = prune(model, method, 0.3, scope=scope, seed=1)
    assert a.prune_info == b.prune_info
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k
    x = _x("mobilenetv2", 2)
    same = prune(a, method, 0.0, scope=scope)
    assert torch.equal(same(x), a(x))
    assert [g["kept"] for g in same.prune_info["groups"].values()] == \
        [g["channels"] for g in same.prune_info["groups"].values()]
    twice = prune(a, method, 0.3, scope=scope)
    assert twice.prune_info["previous"]["achieved_sparsity"] == a.prune_info["achieved_sparsity"]
    ch_a = sum(g["kept"] for g in a.prune_info["groups"].values())
    ch_2 = sum(g["kept"] for g in twice.prune_info["groups"].values())
    assert ch_2 < ch_a and sum(g["channels"] for g in twice.prune_info["groups"].values()) == ch_a
