"""The seed paper's CIFAR architectures: resnet110, preresnet110/164 (with network slimming's
channel selection), vgg16_bn_l1, vgg19_bn — sizes against hand-written formulas and the
published counts, forward against torch's own ops, a few training steps, every pruning method
(exactness where it must hold, expected sizes, save / reload), and the native paths."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunecal import models, prune
from prunecal.models import ChannelSelection, save_checkpoint
from prunecal.models.preresnet_cifar import PreActBasicBlock, PreActBottleneck, preresnet_cifar
from prunecal.models.vgg_cifar import vgg_cifar
from prunecal.prune import find_channel_groups
from prunecal.prune.channel_surgery import slice_selection

PAPER = ["resnet110", "preresnet110", "preresnet164", "vgg16_bn_l1", "vgg19_bn"]
METHODS = ["global_magnitude", "layer_magnitude", "random", "l1_filter", "bn_channel"]
X = None


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def x_batch(n: int = 4) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def calibrated(name: str, **kw) -> nn.Module:
    """A network whose BatchNorms hold non-trivial running statistics and affine values (as a
    trained one would), so that activations stay of order one through 110+ layers."""
    net = models.create(name, **kw)
    g = torch.Generator().manual_seed(2)
    bns = [m for m in net.modules() if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d))]
    for m in bns:
        m.weight.data = torch.rand(m.num_features, generator=g) * 0.8 + 0.2
        m.bias.data = torch.randn(m.num_features, generator=g) * 0.1
        m.reset_running_stats()
        m.momentum = None  # cumulative: one pass sets the statistics of that batch
    for m in net.modules():
        if isinstance(m, nn.Linear):
            m.weight.data = torch.randn(m.weight.shape, generator=g) / m.in_features ** 0.5
    net.train()
    with torch.no_grad():
        net(torch.randn(16, 3, 32, 32, generator=g))
    for m in bns:
        m.momentum = 0.1
    return net.eval()


def small(name: str) -> dict:
    """Builder options for a narrower copy (same depth and layout) where full width is not
    what a test is about."""
    return {"widths": (8, 16, 32)} if name == "resnet110" else {"width_mult": 0.5}


# ---------------------------------------------------------------------------------------------
# Sizes written out by hand
def resnet_formula(n: int, inner=(16, 32, 64), classes: int = 10) -> int:
    """Option-A CIFAR ResNet with n blocks per stage; ``inner`` = conv1 widths per stage."""
    total = 3 * 16 * 9 + 2 * 16
    c_in = 16
    for c, w in zip((16, 32, 64), inner):
        for _ in range(n):
            total += c_in * w * 9 + 2 * w + w * c * 9 + 2 * c
            c_in = c
    return total + 64 * classes + classes


def preresnet_bottleneck_formula(n: int, frac_in: float = 1.0, frac_inner: float = 1.0,
                                 classes: int = 10) -> int:
    """Bottleneck PreResNet; conv1 sees ``frac_in`` of its input channels (channel
    selection), the block's inner widths keep ``frac_inner``."""
    total = 3 * 16 * 9
    c_in = 16
    for p in (16, 32, 64):
        for i in range(n):
            q = int(p * frac_inner)
            total += 2 * c_in + int(c_in * frac_in) * q + 2 * q + q * q * 9 + 2 * q + q * 4 * p
            if i == 0:
                total += c_in * 4 * p  # 1x1 downsample conv
            c_in = 4 * p
    return total + 2 * 256 + int(256 * frac_in) * classes + classes


def preresnet_basic_formula(n: int, classes: int = 10) -> int:
    total = 3 * 16 * 9
    c_in = 16
    for p in (16, 32, 64):
        for i in range(n):
            total += 2 * c_in + c_in * p * 9 + 2 * p + p * p * 9
            if i == 0 and c_in != p:
                total += c_in * p
            c_in = p
    return total + 2 * 64 + 64 * classes + classes


def vgg_formula(cfg, classes: int = 10, mlp: bool = False, frac: float = 1.0) -> int:
    total, c = 0, 3
    for v in cfg:
        if v != "M":
            w = int(v * frac)
            total += c * w * 9 + 2 * w
            c = w
    if mlp:
        return total + c * 512 + 512 + 2 * 512 + 512 * classes + classes
    return total + c * classes + classes


VGG19 = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512]
VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]


@pytest.mark.parametrize("name,kw,expected,published", [
    ("resnet110", {}, resnet_formula(18), 1.7e6),             # He et al. 2016: 1.7M
    ("preresnet164", {}, preresnet_bottleneck_formula(18), 1.70e6),  # Liu et al. 2017: 1.70M
    ("preresnet110", {}, preresnet_bottleneck_formula(12), None),
    ("preresnet110", {"block": "basic"}, preresnet_basic_formula(18), 1.7e6),
    ("vgg19_bn", {}, vgg_formula(VGG19), 20.04e6),            # Liu et al. 2017: 20.04M
    ("vgg16_bn_l1", {}, vgg_formula(VGG16, mlp=True), 1.5e7),  # Li et al. 2017: 1.5e7
])
def test_parameter_counts(name, kw, expected, published):
    net = models.create(name, **kw)
    assert n_params(net) == expected
    if published is not None:
        assert abs(expected - published) / published < 0.02, expected


def test_registry_and_specs():
    names = models.available()
    for n in PAPER:
        assert n in names
        s = models.spec(n)
        assert s.input_size == (3, 32, 32) and s.num_classes == 10
    assert models.spec("preresnet164").family == "preresnet_cifar"
    assert models.spec("vgg19_bn").family == "vgg_cifar"
    assert models.spec("resnet110").family == "resnet_cifar"


def test_layouts():
    r = models.create("resnet110")
    assert len(r.layer1) == len(r.layer2) == len(r.layer3) == 18
    p164 = models.create("preresnet164")
    assert len(p164.layer3) == 18 and isinstance(p164.layer1[0], PreActBottleneck)
    assert all(float(m.weight.detach()[0]) == 0.5 for m in p164.modules() if isinstance(m, nn.BatchNorm2d))
    p110 = models.create("preresnet110")
    assert len(p110.layer2) == 12 and isinstance(p110.layer2[0], PreActBottleneck)
    b110 = models.create("preresnet110", block="basic")
    assert len(b110.layer2) == 18 and isinstance(b110.layer2[0], PreActBasicBlock)
    v19 = models.create("vgg19_bn")
    convs = [m for m in v19.features if isinstance(m, nn.Conv2d)]
    assert len(convs) == 16 and all(c.bias is None for c in convs)
    assert sum(isinstance(m, nn.MaxPool2d) for m in v19.features) == 4
    assert isinstance(v19.features[-1], nn.ReLU)  # no pool after the last conv (slimming cfg)
    assert (v19.classifier.in_features, v19.classifier.out_features) == (512, 10)
    v16 = models.create("vgg16_bn_l1")
    assert sum(isinstance(m, nn.Conv2d) for m in v16.features) == 13
    assert [type(m) for m in v16.classifier] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    # state-dict keys of network slimming's PreResNet
    keys = set(p164.state_dict())
    for k in ("conv1.weight", "layer1.0.bn1.weight", "layer1.0.select.indexes", "layer1.0.conv3.weight",
              "layer1.0.downsample.0.weight", "layer2.0.downsample.0.weight", "bn.running_var",
              "select.indexes", "fc.weight"):
        assert k in keys, k
    assert "layer1.1.downsample.0.weight" not in keys


@pytest.mark.parametrize("name", PAPER)
def test_forward_shapes(name):
    net = models.create(name, num_classes=7)
    assert not net.training
    with torch.no_grad():
        out = net(x_batch(2))
    assert out.shape == (2, 7) and torch.isfinite(out).all()


def test_vgg19_equals_slimming_forward():
    """vgg19_bn: features, then AvgPool2d(2) on the 2x2 map, view, Linear — as network slimming."""
    net = calibrated("vgg19_bn")
    x = x_batch(3)
    with torch.no_grad():
        f = net.features(x)
        assert f.shape == (3, 512, 2, 2)
        ref = net.classifier(F.avg_pool2d(f, 2).view(3, -1))
        torch.testing.assert_close(net(x), ref, rtol=0, atol=0)


def _bn(x, bn):
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)


def test_preact_bottleneck_against_torch_ops():
    net = calibrated("preresnet164", width_mult=0.25)
    blk = net.layer2[0]
    x = torch.randn(2, blk.bn1.num_features, 16, 16)
    keep = torch.tensor([0, 2, 3, 7, 9])
    slice_selection(blk.select, keep)
    w1 = blk.conv1.weight.detach()[:, keep]
    blk.conv1.weight.data = w1.clone()
    blk.conv1.in_channels = len(keep)
    with torch.no_grad():
        h = F.relu(_bn(x, blk.bn1))[:, keep]
        h = F.conv2d(h, w1)
        h = F.conv2d(F.relu(_bn(h, blk.bn2)), blk.conv2.weight, stride=2, padding=1)
        h = F.conv2d(F.relu(_bn(h, blk.bn3)), blk.conv3.weight)
        ref = h + F.conv2d(x, blk.downsample[0].weight, stride=2)
        torch.testing.assert_close(blk(x), ref, rtol=1e-5, atol=1e-5)


def test_preact_basic_block_against_torch_ops():
    net = calibrated("preresnet110", block="basic", width_mult=0.5)
    blk = net.layer1[3]
    x = torch.randn(2, 8, 8, 8)
    with torch.no_grad():
        h = F.conv2d(F.relu(_bn(x, blk.bn1)), blk.conv1.weight, padding=1)
        ref = F.conv2d(F.relu(_bn(h, blk.bn2)), blk.conv2.weight, padding=1) + x
        torch.testing.assert_close(blk(x), ref, rtol=1e-5, atol=1e-5)
    assert blk.downsample is None and net.layer2[0].downsample is not None


def test_channel_selection():
    sel = ChannelSelection(6)
    x = torch.randn(2, 6, 3, 3)
    assert torch.equal(sel(x), x)
    slice_selection(sel, torch.tensor([1, 4, 5]))
    assert sel.indexes.tolist() == [0, 1, 0, 0, 1, 1]
    assert torch.equal(sel(x), x[:, [1, 4, 5]])
    slice_selection(sel, torch.tensor([0, 2]))  # indexes of the current output
    assert torch.equal(sel(x), x[:, [1, 5]]) and sel.selected().tolist() == [1, 5]
    assert dict(sel.named_buffers()).keys() == {"indexes"} and not list(sel.parameters())
    traced = torch.fx.symbolic_trace(nn.Sequential(nn.BatchNorm2d(6), sel).eval())
    assert traced(x).shape == (2, 2, 3, 3)
    with pytest.raises(ValueError, match="at least 1"):
        slice_selection(sel, torch.tensor([], dtype=torch.int64))
    with pytest.raises(ValueError, match="out of range"):
        slice_selection(sel, torch.tensor([2]))


def test_bad_arguments():
    with pytest.raises(ValueError, match="9n\\+2"):
        preresnet_cifar(100)
    with pytest.raises(ValueError, match="6n\\+2"):
        preresnet_cifar(164 + 1, block="basic")
    with pytest.raises(ValueError, match="block"):
        models.create("preresnet164", block="wide")
    with pytest.raises(ValueError, match="width_mult"):
        models.create("preresnet110", width_mult=0)
    with pytest.raises(ValueError, match="num_classes"):
        models.create("preresnet164", num_classes=0)
    with pytest.raises(ValueError, match="num_channels"):
        ChannelSelection(0)
    with pytest.raises(ValueError, match="classifier"):
        vgg_cifar("vgg19", paper=True, classifier="conv")
    with pytest.raises(ValueError, match="unknown VGG config"):
        vgg_cifar("vgg11", paper=True)
    with pytest.raises(TypeError):
        models.create("vgg19_bn", no_such_option=1)


# ---------------------------------------------------------------------------------------------
# Training
@pytest.mark.parametrize("name", PAPER)
def test_a_few_training_steps_reduce_the_loss(name):
    from prunecal.data import to_tensor
    from prunecal.train import train

    torch.manual_seed(0)
    net = models.create(name, **small(name))
    s = models.spec(name)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    labels = np.array([0, 3, 5, 9])
    x, y = to_tensor(images, s.mean, s.std), torch.as_tensor(labels)

    def loss() -> float:
        net.train()
        with torch.no_grad():
            return float(F.cross_entropy(net(x), y))

    before = loss()
    # the post-activation ResNet-110 starts with large logits: a smaller step keeps it stable
    lr = 0.005 if name == "resnet110" else 0.05
    hist = train(net, images, labels, epochs=3, lr=lr, batch_size=4, mean=s.mean, std=s.std,
                 augment=False, progress=False, weight_decay=0.0)
    steps = hist["step_loss"]
    assert len(steps) == 3 and not net.training
    assert steps[0] == pytest.approx(before, rel=1e-4)  # the loop saw the same batch
    after = loss()
    assert steps[2] < steps[1] < steps[0] and after < steps[2], (before, steps, after)


# ---------------------------------------------------------------------------------------------
# Pruning
@pytest.mark.parametrize("name", PAPER)
@pytest.mark.parametrize("method", METHODS)
def test_every_method_at_sparsity_zero_is_the_identity(name, method):
    net = calibrated(name, **small(name))
    x = x_batch()
    with torch.no_grad():
        ref = net(x)
        out = prune.prune(net, method, 0.0)(x)
    assert torch.equal(out, ref)


@pytest.mark.parametrize("name", PAPER)
@pytest.mark.parametrize("method", ["global_magnitude", "layer_magnitude", "random"])
def test_unstructured_methods(name, method):
    net = calibrated(name, **small(name))
    pruned = prune.prune(net, method, 0.6, seed=3)
    w = [m.weight for m in pruned.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    zeros = sum(int((t == 0).sum()) for t in w) / sum(t.numel() for t in w)
    assert abs(zeros - 0.6) < 0.01
    assert n_params(pruned) == n_params(net)
    with torch.no_grad():
        out = pruned(x_batch())
    assert out.shape == (4, 10) and torch.isfinite(out).all()


@pytest.mark.parametrize("name,method,expected", [
    ("resnet110", "l1_filter", resnet_formula(18, inner=(8, 16, 32))),
    ("resnet110", "bn_channel", resnet_formula(18, inner=(8, 16, 32))),
    ("preresnet164", "l1_filter", preresnet_bottleneck_formula(18, frac_inner=0.5)),
    ("preresnet164", "bn_channel", preresnet_bottleneck_formula(18, frac_in=0.5, frac_inner=0.5)),
    ("preresnet110", "bn_channel", preresnet_bottleneck_formula(12, frac_in=0.5, frac_inner=0.5)),
    ("vgg19_bn", "l1_filter", vgg_formula(VGG19, frac=0.5)),
    ("vgg19_bn", "bn_channel", vgg_formula(VGG19, frac=0.5)),
    ("vgg16_bn_l1", "l1_filter", vgg_formula(VGG16, mlp=True, frac=0.5)),
])
def test_structured_sizes_and_reload(name, method, expected, tmp_path):
    """scope='layer' at 0.5 halves every prunable group: the sizes written out by hand; the
    smaller network runs, saves and comes back from create(weights=...) with equal output."""
    net = calibrated(name)
    pruned = prune.prune(net, method, 0.5, scope="layer")
    assert n_params(pruned) == expected == pruned.prune_info["params_after"]
    x = x_batch()
    with torch.no_grad():
        out = pruned(x)
    assert out.shape == (4, 10) and torch.isfinite(out).all()
    path = save_checkpoint(pruned, tmp_path / "p.pt")
    back = models.create(name, weights=path)
    assert n_params(back) == expected
    with torch.no_grad():
        assert torch.equal(back(x), out)


def test_preresnet_groups():
    net = models.create("preresnet164")
    groups = find_channel_groups(net)
    sel = [g for g in groups if g.kind == "select"]
    conv = [g for g in groups if g.kind == "conv"]
    assert len(sel) == 3 * 18 + 1 and len(conv) == 2 * 3 * 18
    g0 = sel[0]
    assert (g0.producer, g0.source, g0.consumer, g0.channels) == \
        ("layer1.0.select", "layer1.0.bn1", "layer1.0.conv1", 16)
    assert (sel[-1].producer, sel[-1].source, sel[-1].consumer, sel[-1].channels) == ("select", "bn", "fc", 256)
    assert {g.producer.rsplit(".", 1)[-1] for g in conv} == {"conv1", "conv2"}
    assert {g.members[1].rsplit(".", 1)[-1] for g in conv} == {"bn2", "bn3"}


def _zero_lowest_half(bn: nn.BatchNorm2d, idx: torch.Tensor) -> None:
    bn.weight.data[idx] = 0.0
    bn.bias.data[idx] = 0.0


@pytest.mark.parametrize("name", ["preresnet164", "preresnet110"])
def test_bn_channel_removes_dead_channels_exactly(name):
    """Channels whose BN has gamma = beta = 0 output exactly zero (ReLU(0) = 0): network slimming
    removes them, selection channels included, and the logits must not change."""
    net = calibrated(name, **small(name))
    mods = dict(net.named_modules())
    g = torch.Generator().manual_seed(5)
    for grp in find_channel_groups(net):
        bn = mods[grp.source] if grp.kind == "select" else mods[grp.members[1]]
        _zero_lowest_half(bn, torch.randperm(grp.channels, generator=g)[: grp.channels // 2])
    x = x_batch()
    with torch.no_grad():
        ref = net(x)
    pruned = prune.prune(net, "bn_channel", 0.5)  # global ranking: exactly the zeroed half
    info = pruned.prune_info
    assert all(v["kept"] == v["channels"] - v["channels"] // 2 for v in info["groups"].values())
    assert info["params_after"] < 0.5 * info["params_before"]
    sel = pruned.layer3[1].select
    assert int(sel.indexes.sum()) == sel.num_channels // 2 and sel.num_channels == pruned.layer3[1].bn1.num_features
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["resnet110", "preresnet164", "vgg19_bn", "vgg16_bn_l1"])
def test_l1_filter_removes_zero_filters_exactly(name):
    """Zero filters whose BN maps 0 to 0 output exactly zero: L1-filter ranks them lowest and
    removing them must not change the logits. Channel selections are left alone."""
    net = calibrated(name, **small(name))
    mods = dict(net.named_modules())
    g = torch.Generator().manual_seed(6)
    groups = find_channel_groups(net)
    for grp in groups:
        if grp.kind != "conv":
            continue
        idx = torch.randperm(grp.channels, generator=g)[: grp.channels // 2]
        mods[grp.producer].weight.data[idx] = 0.0
        bn = mods[grp.members[1]]
        bn.bias.data[idx] = 0.0
        bn.running_mean[idx] = 0.0
    x = x_batch()
    with torch.no_grad():
        ref = net(x)
    pruned = prune.prune(net, "l1_filter", 0.5)
    assert all(v.get("kind", "conv") == "conv" for v in pruned.prune_info["groups"].values())
    if name.startswith("preresnet"):
        assert all(float(m.indexes.min()) == 1.0 for m in pruned.modules() if isinstance(m, ChannelSelection))
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), ref, rtol=1e-5, atol=1e-5)


def test_l1_filter_rejects_selection_layers_and_chains_with_unstructured(tmp_path):
    net = calibrated("preresnet164", width_mult=0.25)
    with pytest.raises(ValueError, match="not prunable channel groups"):
        prune.prune(net, "l1_filter", 0.5, layers=["layer1.0.select"])
    one = prune.prune(net, "bn_channel", 0.3, layers=["layer1.0.select", "select"], scope="layer")
    assert one.fc.in_features == 64 - round(0.3 * 64) and one.layer1[0].conv1.in_channels == 4 - 1
    two = prune.prune(one, "bn_channel", 0.3)  # prune the pruned network again
    three = prune.prune(two, "global_magnitude", 0.5)
    path = save_checkpoint(three, tmp_path / "c.pt")
    back = models.create("preresnet164", weights=path, width_mult=0.25)
    x = x_batch()
    with torch.no_grad():
        assert torch.equal(back(x), three(x))


# ---------------------------------------------------------------------------------------------
# Native paths
@pytest.mark.parametrize("name", ["resnet110", "vgg19_bn", "vgg16_bn", "vgg16_bn_l1"])
@pytest.mark.parametrize("method", ["global_magnitude", "l1_filter"])
def test_compile_plan_matches_torch(name, method):
    from prunecal.sparse.plan import compile_plan

    net = calibrated(name, **small(name))
    opts = {"keep_classifier": True} if method == "global_magnitude" else {}
    pruned = prune.prune(net, method, 0.7, **opts)
    x = x_batch(4)
    with torch.no_grad():
        ref = pruned(x)
        out = compile_plan(pruned, "csr", threads=2)(x)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))


@pytest.mark.parametrize("name,node", [("preresnet164", "index_select"), ("preresnet110", "index_select")])
@pytest.mark.parametrize("method", ["global_magnitude", "bn_channel"])
def test_plan_unsupported_then_sparsify_matches_torch(name, node, method):
    from prunecal.sparse import sparsify
    from prunecal.sparse.plan import PlanUnsupported, compile_plan

    net = calibrated(name, **small(name))
    pruned = prune.prune(net, method, 0.6)
    with pytest.raises(PlanUnsupported, match=node):
        compile_plan(pruned, "csr")
    fast = sparsify(pruned, "csr", threads=2)  # the per-layer model: the plan refuses these nets
    assert fast.sparsify_report.runs_as == "layers" and node in fast.sparsify_report.plan_unsupported
    n_layers = sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in pruned.modules())
    assert len(fast.sparsify_report.layers) == n_layers and not fast.sparsify_report.skipped
    x = x_batch(4)
    with torch.no_grad():
        ref = pruned(x)
        torch.testing.assert_close(fast(x), ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
