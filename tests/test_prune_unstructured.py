"""Unstructured pruning: exactness, magnitude order, idempotence, determinism, torch interop."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn
from torch.nn.utils import prune as torch_prune

from prunecal.prune import (apply_masks, apply_masks_torch, available, deepcopy_model,
                            get_masks, masks_from_torch, prune)
from prunecal.registry import UnknownNameError

UNSTRUCTURED = ["global_magnitude", "layer_magnitude", "random"]


class TinyNet(nn.Module):
    def __init__(self, c1: int = 6, c2: int = 10, classes: int = 5) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, c1, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(c1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c2)
        self.fc = nn.Linear(c2, classes)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


def _weights(model, names):
    mods = dict(model.named_modules())
    return {n: mods[n].weight.detach().clone() for n in names}


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_registry_lists_all_methods():
    assert set(available()) >= set(UNSTRUCTURED + ["l1_filter", "bn_channel"])
    with pytest.raises(UnknownNameError, match="global_magnitude"):
        prune(TinyNet(), "nope", 0.5)


@settings(max_examples=25, deadline=None)
@given(s=st.floats(0.0, 0.99), method=st.sampled_from(UNSTRUCTURED),
       c1=st.integers(1, 8), c2=st.integers(1, 8), seed=st.integers(0, 3))
def test_exact_sparsity_and_magnitude_order(s, method, c1, c2, seed):
    torch.manual_seed(seed)
    model = TinyNet(c1, c2)
    before = _state(model)
    out = prune(model, method, s, seed=seed)
    info = out.prune_info
    names = ["conv1", "conv2", "fc"]
    assert info["layers"] == names and info["method"] == method and info["seed"] == seed
    orig = _weights(model, names)
    new = _weights(out, names)
    masks = get_masks(out)
    total = sum(w.numel() for w in orig.values())
    zeros = sum(int((w == 0).sum()) for w in new.values())
    if method == "global_magnitude":
        assert zeros == round(s * total)
        kept = torch.cat([orig[n][masks[n]].abs() for n in names])
        pruned = torch.cat([orig[n][~masks[n]].abs() for n in names])
        if kept.numel() and pruned.numel():
            assert kept.min() >= pruned.max()
    else:
        for n in names:
            assert int((new[n] == 0).sum()) == round(s * orig[n].numel()), n
            if method == "layer_magnitude" and masks[n].any() and (~masks[n]).any():
                assert orig[n][masks[n]].abs().min() >= orig[n][~masks[n]].abs().max()
    assert info["achieved_sparsity"] == pytest.approx(zeros / total)
    for n in names:  # kept weights are unchanged
        assert torch.equal(new[n][masks[n]], orig[n][masks[n]])
    # input untouched, no reparametrisation left behind
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not any(hasattr(m, "weight_orig") or m._forward_pre_hooks for m in out.modules())


@pytest.mark.parametrize("method", UNSTRUCTURED)
def test_idempotent_and_deterministic(method):
    model = TinyNet()
    a = prune(model, method, 0.6, seed=3)
    b = prune(model, method, 0.6, seed=3)
    again = prune(a, method, 0.6, seed=3 if method != "random" else 7)
    for (ka, va), vb, vc in zip(a.state_dict().items(), b.state_dict().values(),
                                again.state_dict().values()):
        assert torch.equal(va, vb), ka
        assert torch.equal(va, vc), ka
    # lower sparsity on a pruned model changes nothing either: zeros count as pruned
    lower = prune(a, method, 0.3)
    for va, vl in zip(a.state_dict().values(), lower.state_dict().values()):
        assert torch.equal(va, vl)


def test_random_depends_on_seed():
    model = TinyNet()
    a, b = prune(model, "random", 0.5, seed=0), prune(model, "random", 0.5, seed=1)
    assert not torch.equal(a.conv2.weight, b.conv2.weight)
    total = sum(w.numel() for w in _weights(model, ["conv1", "conv2", "fc"]).values())
    rs = prune(model, "random", 0.5, scope="global")
    zeros = sum(int((m.weight == 0).sum()) for m in (rs.conv1, rs.conv2, rs.fc))
    assert zeros == round(0.5 * total)
    with pytest.raises(ValueError, match="scope"):
        prune(model, "random", 0.5, scope="bad")


def test_ties_broken_by_index():
    model = TinyNet()
    with torch.no_grad():
        for m in (model.conv1, model.conv2, model.fc):
            m.weight.fill_(0.5)
    out = prune(model, "global_magnitude", 0.5)
    flat = torch.cat([m.weight.reshape(-1) for m in (out.conv1, out.conv2, out.fc)])
    k = round(0.5 * flat.numel())
    assert torch.all(flat[:k] == 0) and torch.all(flat[k:] == 0.5)


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan"), float("inf")])
def test_bad_sparsity_value(bad):
    with pytest.raises(ValueError, match="sparsity"):
        prune(TinyNet(), "global_magnitude", bad)


@pytest.mark.parametrize("method", UNSTRUCTURED + ["l1_filter", "bn_channel"])
@pytest.mark.parametrize("where,bad", [("conv2.weight", float("nan")), ("fc.weight", float("inf")),
                                       ("bn1.weight", float("nan"))])
def test_non_finite_weights_are_refused(method, where, bad):
    """NaN sorts last, so a magnitude ranking would silently keep it: a clear error instead."""
    model = TinyNet()
    with torch.no_grad():
        model.get_parameter(where).view(-1)[0] = bad
    with pytest.raises(ValueError, match=where.replace(".", r"\.")):
        prune(model, method, 0.5)
    # a NaN behind a torch.nn.utils.prune mask is not hidden: torch computes with
    # orig * mask = NaN * 0 = NaN as well, so it is refused too
    clean = TinyNet()
    torch_prune.custom_from_mask(clean.conv2, "weight", torch.ones_like(clean.conv2.weight))
    with torch.no_grad():
        clean.conv2.weight_orig.view(-1)[0] = float("nan")
        clean.conv2.weight_mask.view(-1)[0] = 0
    with pytest.raises(ValueError, match="conv2"):
        prune(clean, method, 0.5)


@pytest.mark.parametrize("bad", ["0.5", None, True])
def test_bad_sparsity_type(bad):
    with pytest.raises(TypeError, match="sparsity"):
        prune(TinyNet(), "layer_magnitude", bad)


def test_layer_selection_options():
    model = TinyNet()
    out = prune(model, "global_magnitude", 0.5, keep_first_conv=True, keep_classifier=True)
    assert out.prune_info["layers"] == ["conv2"]
    assert torch.equal(out.conv1.weight, model.conv1.weight)
    assert torch.equal(out.fc.weight, model.fc.weight)
    assert int((out.conv2.weight == 0).sum()) == round(0.5 * model.conv2.weight.numel())
    out = prune(model, "layer_magnitude", 0.5, layers=["fc", "conv1"])
    assert out.prune_info["layers"] == ["conv1", "fc"]
    assert torch.equal(out.conv2.weight, model.conv2.weight)
    assert set(get_masks(out)) == {"conv1", "fc"}
    with pytest.raises(ValueError, match="nope"):
        prune(model, "global_magnitude", 0.5, layers=["nope"])
    with pytest.raises(ValueError, match="bn1"):
        prune(model, "global_magnitude", 0.5, layers=["bn1"])
    with pytest.raises(TypeError, match="layers"):
        prune(model, "global_magnitude", 0.5, layers="conv1")
    with pytest.raises(TypeError, match="model"):
        prune("not a model", "global_magnitude", 0.5)


@pytest.mark.parametrize("s", [0.2, 0.55, 0.9])
def test_matches_torch_prune(s):
    """Independent reference: torch's L1Unstructured (per layer) and global_unstructured."""
    model = TinyNet()
    names = ["conv1", "conv2", "fc"]
    ref = copy.deepcopy(model)
    for n in names:
        torch_prune.l1_unstructured(getattr(ref, n), "weight", amount=s)
    ours = get_masks(prune(model, "layer_magnitude", s))
    theirs = masks_from_torch(ref)
    for n in names:
        assert torch.equal(ours[n], theirs[n]), n
    ref = copy.deepcopy(model)
    torch_prune.global_unstructured([(getattr(ref, n), "weight") for n in names],
                                    pruning_method=torch_prune.L1Unstructured, amount=s)
    ours = get_masks(prune(model, "global_magnitude", s))
    theirs = masks_from_torch(ref)
    for n in names:
        assert torch.equal(ours[n], theirs[n]), n


def test_torch_reparametrised_input_and_round_trip():
    model = TinyNet().eval()
    torch_prune.random_unstructured(model.conv2, "weight", amount=0.4)
    masked = ~model.conv2.weight_mask.bool()
    out = prune(model, "layer_magnitude", 0.4)
    # the existing torch mask counts as already pruned: exactly those weights are zero
    assert torch.equal(out.conv2.weight == 0, masked)
    assert not hasattr(out.conv2, "weight_orig")
    assert hasattr(model.conv2, "weight_orig")  # input untouched
    # round trip: our masks -> torch reparametrisation -> masks
    masks = get_masks(out)
    tm = apply_masks_torch(copy.deepcopy(TinyNet().eval()), masks)
    back = masks_from_torch(tm)
    assert set(back) == set(masks)
    for n in masks:
        assert torch.equal(back[n], masks[n])
    # masks installed through torch on the dense model compute the pruned function
    twin = apply_masks_torch(deepcopy_model(model), masks)
    x = torch.randn(2, 3, 8, 8)
    assert torch.allclose(twin(x), out(x), atol=1e-6)
    with pytest.raises(ValueError, match="shape"):
        apply_masks_torch(TinyNet(), {"conv1": torch.ones(3, 3, dtype=torch.bool)})
    with pytest.raises(ValueError, match="nope"):
        apply_masks_torch(TinyNet(), {"nope": torch.ones(3, dtype=torch.bool)})


def test_real_models_exact():
    from prunecal import models  # part of the package: never skipped
    for name in ["resnet20", "mobilenetv2"]:
        kw = {"width_mult": 0.25} if name == "mobilenetv2" else {}
        m = models.create(name, **kw)
        out = prune(m, "global_magnitude", 0.7)
        total = sum(mod.weight.numel() for mod in out.modules()
                    if isinstance(mod, (nn.Conv2d, nn.Linear)))
        zeros = sum(int((mod.weight == 0).sum()) for mod in out.modules()
                    if isinstance(mod, (nn.Conv2d, nn.Linear)))
        assert zeros == round(0.7 * total)
        assert out(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_pretrained_resnet20_keeps_accuracy_at_mild_sparsity(shared_data):
    from prunecal import models  # part of the package: never skipped
    from prunecal.data import load_cifar10
    from prunecal.train import evaluate

    x, y = load_cifar10(shared_data / "cifar10" / "exact_subset.npz", split="test")
    x, y = x[:128], y[:128]
    sp = models.spec("resnet20")
    dense = models.create("resnet20", weights=shared_data / "weights" / "resnet20-12fca82f.th")
    acc = evaluate(dense, x, y, sp.mean, sp.std)
    assert acc > 0.85
    pruned = prune(dense, "global_magnitude", 0.3)
    assert evaluate(pruned, x, y, sp.mean, sp.std) > acc - 0.05
    assert math.isclose(pruned.prune_info["achieved_sparsity"], 0.3, abs_tol=1e-5)


def test_apply_masks_transfers_a_pattern():
    src = prune(TinyNet(), "global_magnitude", 0.5)
    dst = apply_masks(TinyNet(), get_masks(src))
    for n, m in get_masks(src).items():
        assert torch.equal(get_masks(dst)[n], m), n
    with pytest.raises(TypeError, match="conv1"):
        apply_masks(TinyNet(), {"conv1": [[1]]})


# ---------------------------------------------------------------- prunable_layers / bake_torch_pruning
class _Mixed(nn.Module):
    """Layers registered out of call order, a nested Sequential, two Linears and a BN."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(4, 3)  # registered first, but a Linear: never the "first conv"
        self.stem = nn.Conv2d(3, 4, 3)
        self.body = nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 1))
        self.fc = nn.Linear(4, 2)


def test_prunable_layers_default_and_keep_options():
    from prunecal.prune import prunable_layers

    m = _Mixed()
    every = ["head", "stem", "body.0", "body.3", "fc"]  # every Conv2d / Linear in module order
    assert prunable_layers(m) == every
    assert prunable_layers(m, keep_first_conv=True) == ["head", "body.0", "body.3", "fc"]
    assert prunable_layers(m, keep_classifier=True) == ["head", "stem", "body.0", "body.3"]  # the LAST Linear
    assert prunable_layers(m, keep_first_conv=True, keep_classifier=True) == ["head", "body.0", "body.3"]
    assert prunable_layers(nn.Sequential(nn.Linear(2, 2)), keep_first_conv=True) == ["0"]  # no conv: nothing kept
    with pytest.raises(ValueError, match="no prunable"):
        prunable_layers(nn.Sequential(nn.Conv2d(1, 1, 1)), keep_first_conv=True)
    with pytest.raises(ValueError, match="no prunable"):
        prunable_layers(nn.Sequential(nn.ReLU()))


def test_prunable_layers_explicit_names():
    from prunecal.prune import prunable_layers

    m = _Mixed()
    # explicit names: duplicates dropped, returned in module order, keep_* options ignored
    assert prunable_layers(m, ["fc", "stem", "fc"], keep_first_conv=True) == ["stem", "fc"]
    assert prunable_layers(m, ("body.3",)) == ["body.3"]
    with pytest.raises(ValueError, match="'nope'"):
        prunable_layers(m, ["stem", "nope"])
    with pytest.raises(ValueError, match="BatchNorm2d"):
        prunable_layers(m, ["body.1"])
    with pytest.raises(ValueError, match="empty"):
        prunable_layers(m, [])
    with pytest.raises(TypeError, match="string"):
        prunable_layers(m, "stem")


def test_bake_torch_pruning_equals_orig_times_mask():
    from prunecal.prune import bake_torch_pruning

    torch.manual_seed(3)
    m = TinyNet().eval()
    torch_prune.l1_unstructured(m.conv1, "weight", amount=0.5)
    torch_prune.random_unstructured(m.conv2, "weight", amount=0.7)
    torch_prune.l1_unstructured(m.conv2, "weight", amount=0.3)  # a PruningContainer: two masks combined
    torch_prune.l1_unstructured(m.fc, "bias", amount=0.4)       # not only weights
    expected = {
        "conv1.weight": (m.conv1.weight_orig * m.conv1.weight_mask).detach().clone(),
        "conv2.weight": (m.conv2.weight_orig * m.conv2.weight_mask).detach().clone(),
        "fc.bias": (m.fc.bias_orig * m.fc.bias_mask).detach().clone(),
    }
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        ref = m(x)
    out = bake_torch_pruning(m)
    assert out is m  # in place
    for mod in m.modules():
        assert not any(isinstance(h, torch_prune.BasePruningMethod) for h in mod._forward_pre_hooks.values())
        assert not any(k.endswith(("_orig", "_mask")) for k in dict(mod.named_parameters(recurse=False)))
        assert not any(k.endswith("_mask") for k in dict(mod.named_buffers(recurse=False)))
    params = dict(m.named_parameters())
    for name, want in expected.items():
        assert isinstance(params[name], nn.Parameter)
        assert torch.equal(params[name].detach(), want)
    assert float((m.conv2.weight == 0).float().mean()) == pytest.approx(1 - 0.3 * 0.7, abs=0.05)
    with torch.no_grad():
        assert torch.equal(m(x), ref)
    assert set(m.state_dict()) == set(TinyNet().state_dict())  # plain keys again
    assert bake_torch_pruning(m) is m  # nothing left to bake: a no-op
