"""prunecal.models: registry, architectures, pretrained CIFAR ResNets."""
from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from torch import nn

from prunecal import models
from prunecal.models import MissingDependencyError, ModelSpec, OptionAShortcut
from prunecal.models.torchvision_models import has_torchvision
from prunecal.registry import UnknownNameError

PRETRAINED = {  # depth: (file, accuracy % on the 846 original test images, from the data README)
    20: ("resnet20-12fca82f.th", 91.7),
    32: ("resnet32-d509ac18.th", 93.0),
    44: ("resnet44-014dd654.th", 93.7),
    56: ("resnet56-4bfd9763.th", 93.3),
}
CIFAR_NAMES = ["resnet20", "resnet32", "resnet44", "resnet56", "vgg11_bn", "vgg16_bn", "mobilenetv2"]


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def resnet_params_formula(depth: int, classes: int = 10) -> int:
    """Parameter count of a CIFAR ResNet written out by hand (convs, BN affine, linear)."""
    n = (depth - 2) // 6
    total = 3 * 16 * 9 + 2 * 16  # stem conv + bn
    c_in = 16
    for c in (16, 32, 64):
        for _ in range(n):
            total += c_in * c * 9 + 2 * c + c * c * 9 + 2 * c
            c_in = c
    return total + 64 * classes + classes


@pytest.fixture(scope="module")
def exact_test(shared_data):
    from prunecal.data import load_cifar10, to_tensor

    x, y = load_cifar10(shared_data / "cifar10" / "exact_subset.npz", "test")
    s = models.spec("resnet20")
    return to_tensor(x, s.mean, s.std), y


@pytest.mark.parametrize("depth", [20])
def test_pretrained_accuracy_on_original_pixels(depth, shared_data, exact_test):
    fname, expected = PRETRAINED[depth]
    net = models.create(f"resnet{depth}", weights=shared_data / "weights" / fname)
    assert not net.training
    x, y = exact_test
    with torch.inference_mode():
        pred = torch.cat([net(x[i:i + 512]) for i in range(0, len(x), 512)]).argmax(1).numpy()
    acc = 100.0 * float((pred == y).mean())
    assert len(y) == 846
    assert abs(acc - expected) <= 0.3, acc


@pytest.mark.parametrize("depth", [32, 44, 56])
def test_pretrained_checkpoints_load(depth, shared_data, exact_test):
    net = models.create(f"resnet{depth}", weights=shared_data / "weights" / PRETRAINED[depth][0])
    x, y = exact_test
    with torch.inference_mode():
        pred = net(x[:64]).argmax(1).numpy()
    assert (pred == y[:64]).mean() >= 0.85


def test_available_and_specs():
    names = models.available()
    for n in CIFAR_NAMES:
        assert n in names
    s = models.spec("resnet20")
    assert isinstance(s, ModelSpec)
    assert s == ModelSpec("resnet20", 10, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), (3, 32, 32),
                          "resnet_cifar")
    assert models.spec("vgg16_bn").family == "vgg_cifar"
    assert models.spec("mobilenetv2").family == "mobilenetv2_cifar"
    assert models.spec("resnet56", num_classes=100).num_classes == 100


def test_unknown_name_lists_valid_names():
    with pytest.raises(UnknownNameError, match="resnet20") as e:
        models.create("resnet21")
    assert isinstance(e.value, ValueError)
    with pytest.raises(UnknownNameError):
        models.spec("nope")


@pytest.mark.parametrize("name,expected", [
    ("resnet20", 269_722), ("resnet32", 464_154), ("resnet44", 658_586), ("resnet56", 853_018),
])
def test_resnet_param_counts(name, expected):
    net = models.create(name)
    assert n_params(net) == expected == resnet_params_formula(int(name[6:]))


@pytest.mark.parametrize("name,kw,lo,hi", [
    ("resnet20", {}, 0.26e6, 0.28e6),
    ("resnet56", {}, 0.84e6, 0.86e6),
    ("vgg11_bn", {}, 9.2e6, 9.3e6),
    ("vgg16_bn", {}, 14.7e6, 14.8e6),
    ("mobilenetv2", {}, 2.2e6, 2.3e6),
    ("vgg11_bn", {"width_mult": 0.125}, 0.1e6, 0.2e6),
    ("mobilenetv2", {"width_mult": 0.25}, 0.1e6, 1.6e6),
])
def test_every_model_builds_and_runs(name, kw, lo, hi):
    net = models.create(name, num_classes=7, **kw)
    assert not net.training
    assert lo <= n_params(net) <= hi, n_params(net)
    with torch.no_grad():
        out = net(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 7) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", [n for n in models.available() if not n.startswith(("tv_", "test_"))])
def test_every_registered_model_forward(name):
    kw = {} if name.startswith("resnet") else {"width_mult": 0.25}
    net = models.create(name, **kw)
    s = models.spec(name)
    with torch.no_grad():
        out = net(torch.randn(1, *s.input_size))
    assert out.shape == (1, s.num_classes) and torch.isfinite(out).all()
    assert not any(m.training for m in net.modules())


def test_vgg_classifier_is_linear_512_to_classes():
    net = models.create("vgg16_bn")
    assert isinstance(net.classifier, nn.Linear)
    assert (net.classifier.in_features, net.classifier.out_features) == (512, 10)
    convs = [m for m in net.features if isinstance(m, nn.Conv2d)]
    bns = [m for m in net.features if isinstance(m, nn.BatchNorm2d)]
    assert len(convs) == len(bns) == 13
    assert sum(isinstance(m, nn.MaxPool2d) for m in net.features) == 5


def test_mobilenetv2_depthwise_and_residuals():
    net = models.create("mobilenetv2", width_mult=0.5)
    dw = [m for m in net.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert len(dw) == 17 and all(m.groups == m.in_channels == m.out_channels for m in dw)
    assert sum(b.use_residual for b in net.layers) == 10
    assert net.conv1.stride == (1, 1)


@pytest.mark.parametrize("name", CIFAR_NAMES[:1] + ["vgg11_bn", "mobilenetv2"])
def test_trainable_fx_traceable_copyable(name):
    kw = {} if name.startswith("resnet") else {"width_mult": 0.25}
    net = models.create(name, **kw).train()
    x = torch.randn(4, 3, 32, 32)
    loss = F.cross_entropy(net(x), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert all(p.grad is not None for p in net.parameters())
    net.eval()
    with torch.no_grad():
        ref = net(x)
        traced = torch.fx.symbolic_trace(net)
        torch.testing.assert_close(traced(x), ref)
        torch.testing.assert_close(copy.deepcopy(net)(x), ref)
        torch.testing.assert_close(pickle.loads(pickle.dumps(net))(x), ref)


@settings(max_examples=25, deadline=None)
@given(c=st.integers(1, 12), extra=st.integers(0, 9), stride=st.sampled_from([1, 2, 3]),
       h=st.integers(1, 9), n=st.integers(1, 3))
def test_option_a_shortcut_matches_manual(c, extra, stride, h, n):
    x = torch.randn(n, c, h, h + 1)
    sc = OptionAShortcut(c, c + extra, stride)
    sub = x[:, :, ::stride, ::stride]
    left = extra // 2
    zeros = lambda k: torch.zeros(n, k, *sub.shape[2:])  # noqa: E731
    expected = torch.cat([zeros(left), sub, zeros(extra - left)], 1)
    assert torch.equal(sc(x), expected)
    if stride == 1 and extra == 0:
        assert sc.is_identity and sc(x) is x


def test_option_a_original_padding_is_planes_over_4():
    sc = models.create("resnet20").layer2[0].shortcut
    assert (sc.in_planes, sc.out_planes, sc.stride) == (16, 32, 2)
    x = torch.randn(2, 16, 32, 32)
    assert torch.equal(sc(x), F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 8, 8)))


def test_block_survives_structured_changes():
    """A pruner may shrink a block's inner width and, adapting the shortcut, its output."""
    net = models.create("resnet20")
    blk = net.layer2[0]
    keep = torch.arange(0, 32, 2)  # inner width 32 -> 16
    conv1 = nn.Conv2d(16, 16, 3, 2, 1, bias=False)
    conv1.weight.data = blk.conv1.weight.data[keep].clone()
    blk.conv1, blk.bn1 = conv1, nn.BatchNorm2d(16).eval()
    conv2 = nn.Conv2d(16, 32, 3, 1, 1, bias=False)
    conv2.weight.data = blk.conv2.weight.data[:, keep].clone()
    blk.conv2 = conv2
    x = torch.randn(2, 16, 16, 16)
    assert blk(x).shape == (2, 32, 8, 8)
    # Output channels 0..7 and 24..31 hold only padding on the shortcut: dropping 8 of
    # them is legal when the shortcut pad follows.
    out_keep = torch.arange(4, 28)
    conv2b = nn.Conv2d(16, 24, 3, 1, 1, bias=False)
    conv2b.weight.data = conv2.weight.data[out_keep].clone()
    blk.conv2, blk.bn2 = conv2b, nn.BatchNorm2d(24).eval()
    blk.shortcut.out_planes = 24
    assert blk(x).shape == (2, 24, 8, 8)
    blk.shortcut.pad = (2, 6)
    assert torch.equal(blk.shortcut(x)[:, :2], torch.zeros(2, 2, 8, 8))


def test_bad_builder_arguments():
    with pytest.raises(ValueError, match="num_classes"):
        models.create("resnet20", num_classes=0)
    with pytest.raises(ValueError, match="width_mult"):
        models.create("vgg11_bn", width_mult=0)
    with pytest.raises(ValueError, match="width_mult"):
        models.create("mobilenetv2", width_mult=-1.0)
    from prunecal.models.resnet_cifar import resnet_cifar
    with pytest.raises(ValueError, match="6n\\+2"):
        resnet_cifar(21)
    with pytest.raises(TypeError):
        models.create("resnet20", no_such_option=1)


def test_register_custom_model():
    name = "test_tiny_net"
    if name not in models.MODELS:
        @models.register_model(name, family="custom", input_size=(3, 8, 8))
        def tiny(num_classes=10):
            return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, num_classes))
    assert name in models.available()
    assert models.spec(name).input_size == (3, 8, 8)
    assert models.create(name, num_classes=3)(torch.randn(1, 3, 8, 8)).shape == (1, 3)


@pytest.mark.skipif(has_torchvision(), reason="torchvision installed")
def test_torchvision_missing_gives_clear_error():
    assert not any(n.startswith("tv_") for n in models.available())
    with pytest.raises(MissingDependencyError, match=r"prunecal\[vision\]"):
        models.create("tv_resnet18")
    with pytest.raises(ImportError, match="torchvision"):
        models.spec("tv_resnet18")


@pytest.mark.skipif(not has_torchvision(), reason="torchvision not installed")
def test_torchvision_models_when_installed():
    assert "tv_resnet18" in models.available()
    net = models.create("tv_resnet18", num_classes=10)
    assert models.spec("tv_resnet18").input_size == (3, 224, 224)
    with torch.no_grad():
        assert net(torch.randn(1, 3, 64, 64)).shape == (1, 10)


def test_build_torchvision_passes_no_weights(monkeypatch):
    """The tv_* builder asks torchvision for the bare architecture (nothing downloads)."""
    import sys
    import types

    from prunecal.models.torchvision_models import build_torchvision

    calls = []
    fake = types.ModuleType("torchvision.models")
    fake.get_model = lambda name, **kw: calls.append((name, kw)) or nn.Linear(2, kw["num_classes"])
    pkg = types.ModuleType("torchvision")
    pkg.models = fake
    monkeypatch.setitem(sys.modules, "torchvision", pkg)
    monkeypatch.setitem(sys.modules, "torchvision.models", fake)
    net = build_torchvision("resnet18", 5)
    assert calls == [("resnet18", {"weights": None, "num_classes": 5})]
    assert net.out_features == 5
