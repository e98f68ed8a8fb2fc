"""sparsify(): whole models through every backend, folding/fusion legality, reports, errors."""
from __future__ import annotations

import copy
import io
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune as torch_prune

from prunecal.sparse import BACKENDS, SparsifyReport
from prunecal.sparse import sparsify as _sparsify
from prunecal.sparse.modules import (FoldedConv2d, FoldedLinear, InferenceOnlyError, SparseConv2d,
                                     SparseLinear)


# csr/bsr need the native core: a missing or broken _C FAILS these cases (conftest.require_native;
# PRUNECAL_ALLOW_NO_NATIVE=1 skips them for pure-Python work)
needs_native = pytest.mark.native
ALL = [pytest.param(b, marks=needs_native) if b in ("csr", "bsr") else b for b in BACKENDS]


def sparsify(model, backend="csr", **kw):
    """The per-layer model (this file tests it; tests/test_sparsify_plan.py tests sparsify's
    default door, the whole-network plan)."""
    kw.setdefault("plan", False)
    return _sparsify(model, backend, **kw)


# ---- a CIFAR ResNet-20 with the option-A shortcut (as in the pretrained checkpoints) --------
class LambdaLayer(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != planes:
            self.shortcut = LambdaLayer(
                lambda x: F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4), "constant", 0))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, n: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        cin, stages = 16, []
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(n):
                blocks.append(BasicBlock(cin, planes, stride if i == 0 else 1))
                cin = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(64, num_classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.avg_pool2d(out, out.size()[3])
        return self.linear(out.view(out.size(0), -1))


def randomise_bn(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return model.eval()


def magnitude_prune(model: nn.Module, sparsity: float) -> nn.Module:
    """Per-layer magnitude pruning of every conv/linear weight, zeros left in plain weights."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                w = m.weight
                k = int(round(sparsity * w.numel()))
                if k:
                    thr = w.abs().flatten().kthvalue(k).values
                    w[w.abs() <= thr] = 0
    return model


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


@pytest.fixture(scope="module")
def resnet20() -> nn.Module:
    torch.manual_seed(1)
    return magnitude_prune(randomise_bn(CifarResNet(3)), 0.9)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))


# ---- whole ResNet --------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ALL)
def test_resnet20_all_backends_match_dense(resnet20, images, backend):
    before = copy.deepcopy(resnet20.state_dict())
    with torch.no_grad():
        ref = resnet20(images)
        fast = sparsify(resnet20, backend)
        out = fast(images)
        one = fast(images[:1])
    assert rel_err(out, ref) <= 1e-4
    assert rel_err(one, ref[:1]) <= 1e-4
    rep = fast.sparsify_report
    assert isinstance(rep, SparsifyReport) and rep.graph == "fx" and rep.backend == backend
    assert len(rep.layers) == 20 and not rep.skipped
    assert sum(r.folded_bn is not None for r in rep.layers) == 19
    # ReLU fused after the stem and after each block's conv1, never after conv2 (residual add)
    fused = {r.name for r in rep.layers if r.fused_relu}
    assert fused == {"conv1"} | {f"layer{s}.{b}.conv1" for s in (1, 2, 3) for b in range(3)}
    assert all(0.09 <= r.density <= 0.11 for r in rep.layers)
    # no BatchNorm left, input model untouched
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    assert not fast.training
    assert all(isinstance(m, nn.BatchNorm2d) for n, m in resnet20.named_modules() if n.endswith("bn1"))
    for k, v in resnet20.state_dict().items():
        assert torch.equal(v, before[k]), k
    if backend != "dense":
        assert rep.model_sparse_bytes < rep.model_dense_bytes / 2
        assert rep.layer_sparse_bytes < rep.layer_dense_bytes


@pytest.mark.parametrize("backend", ["dense"] + [b for b in ALL if b not in ("dense", "torch")])
@pytest.mark.parametrize("threads", [1, 2])
def test_threads(resnet20, images, backend, threads):
    fast = sparsify(resnet20, backend, threads=threads)
    with torch.no_grad():
        assert rel_err(fast(images), resnet20(images)) <= 1e-4
    if backend in ("csr", "bsr"):
        assert all(m.threads == threads for m in fast.modules() if isinstance(m, SparseConv2d))


def test_pretrained_resnet20_on_real_images(shared_data, native):
    ckpt = torch.load(shared_data / "weights" / "resnet20-12fca82f.th", map_location="cpu", weights_only=True)
    model = CifarResNet(3)
    model.load_state_dict({k.removeprefix("module."): v for k, v in ckpt["state_dict"].items()})
    model = magnitude_prune(model.eval(), 0.9)
    with np.load(shared_data / "cifar10" / "exact_subset.npz") as z:
        x = torch.from_numpy(z["x_test"][:16]).permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor([0.485, 0.456, 0.406]).reshape(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).reshape(1, 3, 1, 1)
    x = (x - mean) / std
    for backend in ("torch", "csr"):
        with torch.no_grad():
            ref, out = model(x), sparsify(model, backend)(x)
        assert rel_err(out, ref) <= 1e-4
        assert torch.equal(out.argmax(1), ref.argmax(1))


# ---- other architectures --------------------------------------------------------------------
def _vgg_like() -> nn.Module:
    feats = []
    cin = 3
    for c in (8, "M", 16, 16, "M"):
        if c == "M":
            feats.append(nn.MaxPool2d(2))
        else:
            feats += [nn.Conv2d(cin, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            cin = c

    class VGG(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(*feats)
            self.classifier = nn.Sequential(nn.Linear(16 * 4 * 4, 32), nn.ReLU(True), nn.Dropout(),
                                            nn.Linear(32, 10))

        def forward(self, x):
            return self.classifier(torch.flatten(self.features(x), 1))

    return magnitude_prune(randomise_bn(VGG()), 0.8)


class _InvertedResidual(nn.Module):
    def __init__(self, c: int, expand: int = 4) -> None:
        super().__init__()
        h = c * expand
        self.conv = nn.Sequential(
            nn.Conv2d(c, h, 1, bias=False), nn.BatchNorm2d(h), nn.ReLU6(inplace=True),
            nn.Conv2d(h, h, 3, padding=1, groups=h, bias=False), nn.BatchNorm2d(h), nn.ReLU6(inplace=True),
            nn.Conv2d(h, c, 1, bias=False), nn.BatchNorm2d(c),
        )

    def forward(self, x):
        return x + self.conv(x)


def _mobilenet_like() -> nn.Module:
    return magnitude_prune(randomise_bn(nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU6(inplace=True),
        _InvertedResidual(8), _InvertedResidual(8),
        nn.Conv2d(8, 12, 3, padding=2, dilation=2, groups=4), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 5),
    )), 0.7)


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("make", [_vgg_like, _mobilenet_like], ids=["vgg", "mobilenet"])
def test_other_architectures(make, backend):
    torch.manual_seed(3)
    model = make()
    x = torch.randn(3, 3, 16, 16)
    fast = sparsify(model, backend)
    with torch.no_grad():
        assert rel_err(fast(x), model(x)) <= 1e-4
    rep = fast.sparsify_report
    assert not rep.skipped, str(rep)
    convs = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(rep.layers) == len(convs)
    assert all(r.folded_bn for r in rep.layers if r.kind == "Conv2d" and r.shape[0] != 12)


def test_vgg_report_details():
    fast = sparsify(_vgg_like(), "torch")
    rep = {r.name: r for r in fast.sparsify_report.layers}
    assert rep["features.0"].folded_bn == "features.1" and rep["features.0"].fused_relu
    assert rep["classifier.0"].fused_relu and not rep["classifier.3"].fused_relu
    assert isinstance(fast.get_submodule("classifier.0"), SparseLinear)


@pytest.mark.parametrize("backend", ALL)
def test_linear_on_3d_input(backend):
    model = nn.Sequential(nn.Linear(6, 9), nn.ReLU(), nn.Linear(9, 4)).eval()
    magnitude_prune(model, 0.5)
    x = torch.randn(2, 5, 6)
    fast = sparsify(model, backend)
    with torch.no_grad():
        assert rel_err(fast(x), model(x)) <= 1e-4


@pytest.mark.parametrize("name", ["vgg11_bn", "mobilenetv2"])
def test_project_models(name, native):
    from prunecal import models

    model = magnitude_prune(randomise_bn(models.create(name)), 0.8)
    x = torch.randn(2, 3, 32, 32)
    backend = "csr"
    fast = sparsify(model, backend)
    with torch.no_grad():
        assert rel_err(fast(x), model(x)) <= 1e-4
    rep = fast.sparsify_report
    assert rep.graph == "fx" and not rep.skipped
    assert len(rep.layers) == sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules())


# ---- legality of fusion -------------------------------------------------------------------
class _Residual(nn.Module):
    """conv1's output feeds a BN *and* the residual; bn2's output feeds a ReLU *and* an add."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.relu = nn.ReLU(inplace=False)

    def forward(self, x):
        c = self.conv1(x)
        y = self.relu(self.bn1(c)) + c
        z = self.bn2(self.conv2(y))
        return self.relu(z) - z


@pytest.mark.parametrize("backend", ALL)
def test_no_fusion_where_output_is_reused(backend):
    model = randomise_bn(_Residual())
    x = torch.randn(2, 4, 8, 8)
    fast = sparsify(model, backend)
    with torch.no_grad():
        assert rel_err(fast(x), model(x)) <= 1e-4
    rep = {r.name: r for r in fast.sparsify_report.layers}
    assert rep["conv1"].folded_bn is None and not rep["conv1"].fused_relu
    assert rep["conv2"].folded_bn == "bn2" and not rep["conv2"].fused_relu
    assert any("conv1" in n for n in fast.sparsify_report.notes)


def test_fold_and_fuse_switches(resnet20, images):
    for fold_bn, fuse_relu in ((False, True), (True, False), (False, False)):
        fast = sparsify(resnet20, "torch", fold_bn=fold_bn, fuse_relu=fuse_relu)
        with torch.no_grad():
            assert rel_err(fast(images), resnet20(images)) <= 1e-4
        rep = fast.sparsify_report
        assert any(r.folded_bn for r in rep.layers) == fold_bn
        assert any(r.fused_relu for r in rep.layers) == (fold_bn and fuse_relu)


# ---- untraceable models, unsupported layers, pruning reparametrisation --------------------
class _Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.Conv2d(8, 8, 3, padding=1))
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        y = self.body(x)
        if y.mean() > 0:  # data-dependent control flow: fx cannot trace this
            y = y * 2
        return self.head(self.bn(y).mean((2, 3)))


@pytest.mark.parametrize("backend", ALL)
def test_untraceable_model_falls_back_to_module_walk(backend):
    model = magnitude_prune(randomise_bn(_Untraceable()), 0.5)
    fast = sparsify(model, backend)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert rel_err(fast(x), model(x)) <= 1e-4
    rep = fast.sparsify_report
    assert rep.graph == "module walk" and rep.trace_error
    layers = {r.name: r for r in rep.layers}
    assert layers["body.0"].folded_bn == "body.1" and layers["body.0"].fused_relu
    assert layers["body.3"].folded_bn is None  # its BN lives outside the Sequential: not provable
    assert set(layers) == {"body.0", "body.3", "head"}
    assert type(fast) is _Untraceable and "module walk" in str(rep)


class _Mixed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.reflect = nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect")
        self.bn = nn.BatchNorm2d(4)
        self.up = nn.ConvTranspose2d(4, 4, 2, stride=2)
        self.c1d = nn.Conv1d(4, 4, 3, padding=1)
        self.ok = nn.Conv2d(4, 4, 3, padding="same")
        self.rect = nn.Conv2d(4, 4, (1, 3), stride=(1, 2), padding=(0, 1))

    def forward(self, x):
        x = self.up(F.relu(self.bn(self.reflect(x))))
        n, c, h, w = x.shape
        x = self.c1d(x.reshape(n, c, h * w)).reshape(n, c, h, w)
        return self.rect(self.ok(x))


@pytest.mark.parametrize("backend", ALL)
def test_unsupported_layers_stay_and_are_reported(backend):
    model = randomise_bn(_Mixed())
    x = torch.randn(2, 3, 6, 6)
    fast = sparsify(model, backend)
    with torch.no_grad():
        assert rel_err(fast(x), model(x)) <= 1e-4
    rep = fast.sparsify_report
    skipped = {s.name: s.reason for s in rep.skipped}
    assert "padding_mode" in skipped["reflect"]
    assert "ConvTranspose2d" in skipped["up"] and "Conv1d" in skipped["c1d"]
    if backend in ("csr", "bsr"):
        assert [r.name for r in rep.layers] == ["ok"] and "non-square stride" in skipped["rect"]
    else:
        assert [r.name for r in rep.layers] == ["ok", "rect"] and "rect" not in skipped
    assert type(fast.get_submodule("reflect")) is nn.Conv2d and hasattr(fast, "bn")
    text = str(rep)
    assert "skipped" in text and "padding_mode" in text


def test_modules_with_hooks_are_kept():
    model = randomise_bn(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 1),
                                       nn.BatchNorm2d(4)))
    model[0].register_forward_hook(lambda m, i, o: o * 2)
    model[4].register_forward_hook(lambda m, i, o: o + 1)
    x = torch.randn(2, 3, 6, 6)
    for graph_model in (model, _NoTrace(model)):
        fast = sparsify(graph_model, "torch")
        with torch.no_grad():
            assert rel_err(fast(x), graph_model(x)) <= 1e-4
        rep = fast.sparsify_report
        assert "hooks" in {s.name: s.reason for s in rep.skipped}[rep.skipped[0].name]
        assert [r.folded_bn for r in rep.layers] == [None]


class _NoTrace(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        for _ in range(int(x.shape[0] > 0)):  # proxy-dependent loop: not traceable
            x = self.inner(x)
        return x


@pytest.mark.filterwarnings("ignore:Using padding='same'")
def test_asymmetric_same_padding_is_skipped():
    model = nn.Sequential(nn.Conv2d(2, 3, 2, padding="same")).eval()
    fast = sparsify(model, "torch")
    assert "asymmetric" in fast.sparsify_report.skipped[0].reason
    x = torch.randn(1, 2, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x))


def test_torch_prune_reparametrisation_is_applied():
    model = randomise_bn(nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                                       nn.Linear(8 * 4 * 4, 4)))
    torch_prune.l1_unstructured(model[0], "weight", amount=0.8)
    torch_prune.random_unstructured(model[4], "weight", amount=0.5)
    torch_prune.l1_unstructured(model[4], "weight", amount=0.5)  # a PruningContainer
    x = torch.randn(2, 3, 6, 6)
    fast = sparsify(model, "torch")
    with torch.no_grad():
        assert rel_err(fast(x), model(x)) <= 1e-4
    rep = {r.name: r for r in fast.sparsify_report.layers}
    assert abs(rep["0"].density - 0.2) < 0.01 and abs(rep["4"].density - 0.25) < 0.01
    assert hasattr(model[0], "weight_orig") and hasattr(model[4], "weight_mask")  # original untouched


def test_min_sparsity_keeps_dense_layers_dense():
    torch.manual_seed(0)
    model = randomise_bn(nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1)))
    magnitude_prune(model[3:], 0.9)
    fast = sparsify(model, "torch", min_sparsity=0.5)
    assert isinstance(fast.get_submodule("0"), FoldedConv2d) and fast.get_submodule("0").relu
    assert isinstance(fast.get_submodule("3"), SparseConv2d)
    (skip,) = fast.sparsify_report.skipped
    assert skip.name == "0" and "too dense" in skip.reason and skip.fallback == "dense (folded)"
    x = torch.randn(2, 3, 5, 5)
    with torch.no_grad():
        assert rel_err(fast(x), model(x)) <= 1e-4


# ---- modules: repr, state_dict, grads --------------------------------------------------------
@pytest.mark.parametrize("backend", ALL)
def test_state_dict_roundtrip_and_deepcopy(resnet20, images, backend):
    fast = sparsify(resnet20, backend)
    with torch.no_grad():
        ref = fast(images)
    buf = io.BytesIO()
    torch.save(fast.state_dict(), buf)
    other = sparsify(resnet20, backend)
    with torch.no_grad():  # scramble, then restore from the saved state dict
        for t in other.state_dict().values():
            if t.is_floating_point():
                t.mul_(0.5)
    buf.seek(0)
    other.load_state_dict(torch.load(buf, weights_only=True))
    with torch.no_grad():
        torch.testing.assert_close(other(images), ref)
        torch.testing.assert_close(copy.deepcopy(fast)(images), ref)
    layer = fast.get_submodule("layer1.0.conv1")
    assert backend in repr(layer) and "density=0.1" in repr(layer) and "relu=True" in repr(layer)
    if backend != "dense":
        dense_w = layer.to_dense_weight()
        assert dense_w.shape == (16, 16, 3, 3) and (dense_w != 0).float().mean() < 0.12


@pytest.mark.parametrize("backend", ALL)
def test_inference_only(resnet20, images, backend):
    fast = sparsify(resnet20, backend)
    assert not any(p.requires_grad for p in fast.parameters()) or list(fast.parameters()) == []
    with pytest.raises(InferenceOnlyError, match="inference-only"):
        fast(images.clone().requires_grad_(True))
    with torch.inference_mode():
        assert fast(images).shape == (4, 10)
    out = fast(images)  # grad mode on, input without grad: fine, no graph recorded
    assert not out.requires_grad


def test_layer_input_checks():
    layer = FoldedLinear(torch.randn(3, 4))
    with pytest.raises(ValueError, match="x"):
        SparseLinear(torch.randn(3, 4), backend="torch")(torch.randn(2, 5))
    with pytest.raises(ValueError, match="channels"):
        SparseConv2d(torch.randn(3, 4, 1, 1), backend="torch")(torch.randn(1, 5, 2, 2))
    with pytest.raises(TypeError, match="x"):
        layer(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="backend"):
        SparseLinear(torch.randn(3, 4), backend="dense")


# ---- report and errors -----------------------------------------------------------------------
def test_report_to_dict_and_str(resnet20):
    rep = sparsify(resnet20, "torch").sparsify_report
    d = rep.to_dict()
    json.dumps(d)
    assert d["backend"] == "torch" and len(d["layers"]) == 20 and d["layers"][0]["shape"] == [16, 3, 3, 3]
    assert d["model_dense_bytes"] > d["model_sparse_bytes"] > 0 and d["compression"] > 2
    text = str(rep)
    assert "layer3.2.conv2" in text and "whole model" in text and "KiB" in text


def test_bad_arguments(resnet20):
    with pytest.raises(ValueError, match="dense, torch, csr, bsr"):
        sparsify(resnet20, "cusparse")
    with pytest.raises(ValueError, match="threads"):
        sparsify(resnet20, "dense", threads=0)
    with pytest.raises(ValueError, match="min_sparsity"):
        sparsify(resnet20, "dense", min_sparsity=1.5)
    with pytest.raises(TypeError, match="model"):
        sparsify("resnet20", "dense")


def test_nan_weights_rejected(resnet20):
    bad = copy.deepcopy(resnet20)
    with torch.no_grad():
        bad.layer2[1].conv1.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="layer2.1.conv1"):
        sparsify(bad, "torch")


@pytest.mark.parametrize("backend", ALL)
def test_folded_bn_eps_and_channels_against_torch(backend):
    """conv -> BN (large eps, per-channel statistics) -> ReLU, folded by sparsify, against torch
    channel by channel: dropping eps from the fold, or pairing a channel with another's
    statistics, is far outside the tolerance (the default eps 1e-5 would hide the former)."""
    torch.manual_seed(5)
    m = randomise_bn(nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, bias=True), nn.BatchNorm2d(6, eps=0.5),
                                   nn.ReLU(), nn.Conv2d(6, 4, 1, bias=False), nn.BatchNorm2d(4, eps=0.25)))
    with torch.no_grad():
        m[1].running_var.uniform_(0.05, 0.5)  # eps is a large part of var + eps
        m[4].running_var.uniform_(0.05, 0.5)
    fast = sparsify(m, backend)
    x = torch.randn(3, 3, 7, 9)
    with torch.no_grad():
        ref, out = m(x), fast(x)
    assert not any(isinstance(mod, nn.BatchNorm2d) for mod in fast.modules())  # folded, not run
    for k in range(4):
        torch.testing.assert_close(out[:, k], ref[:, k], rtol=1e-5, atol=1e-5)
