"""sparsify(model, "csr" | "bsr"): the one public door. It returns the compiled whole-network plan
(the model compile_plan returns) whenever the network compiles, the per-layer model otherwise
with the reason in its report; outputs equal torch's own forward either way."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from prunecal import models
from prunecal.prune import prune
from prunecal.sparse import sparsify
from prunecal.sparse.plan import PlanModule, compile_plan

pytestmark = pytest.mark.usefixtures("native")  # a missing _C fails (conftest.require_native)


def _rel(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y - ref).norm() / ref.norm().clamp_min(1e-12))


def _randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    return model.eval()


def _pruned(name: str, sparsity: float = 0.9, **kw) -> nn.Module:
    torch.manual_seed(0)
    return prune(_randomise_bn(models.create(name, **kw)), "global_magnitude", sparsity, keep_first_conv=True).eval()


@pytest.fixture(scope="module")
def nets() -> dict[str, nn.Module]:
    return {n: _pruned(n) for n in ("resnet20", "resnet56")}


@pytest.mark.parametrize("name", ["resnet20", "resnet56"])
@pytest.mark.parametrize("backend", ["csr", "bsr"])
def test_cifar_resnets_get_the_plan(nets, name, backend):
    m = nets[name]
    fast = sparsify(m, backend)
    assert isinstance(fast, PlanModule) and fast.backend == backend
    rep = fast.sparsify_report
    assert rep.runs_as == "plan" and rep.plan_unsupported is None and rep.backend == backend
    assert "runs as: one native plan" in str(rep)
    # the same plan as the explicit form, and the same footprint as the per-layer model's report
    assert fast.describe() == compile_plan(m, backend).describe()
    layers = sparsify(m, backend, plan=False)
    assert not isinstance(layers, PlanModule) and layers.sparsify_report.runs_as == "layers"
    assert fast.footprint() == (layers.sparsify_report.model_dense_bytes, layers.sparsify_report.model_sparse_bytes)
    assert len(rep.layers) == len(layers.sparsify_report.layers)


@pytest.mark.parametrize("name", ["resnet20", "resnet56"])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("n", [1, 8])
def test_plan_door_matches_torch(nets, name, threads, n):
    m = nets[name]
    fast = sparsify(m, "csr", threads=threads)
    x = torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(n + threads))
    with torch.no_grad():
        ref = m(x)
        y = fast(x)
    assert y.shape == ref.shape and _rel(y, ref) <= 1e-4
    assert torch.equal(y.argmax(1), ref.argmax(1))


@pytest.mark.parametrize("name,kw", [("vgg11_bn", {}), ("mobilenetv2", {"width_mult": 0.25})])
def test_other_families_get_the_plan(name, kw):
    m = _pruned(name, 0.7, **kw)
    fast = sparsify(m, "csr", threads=2)
    assert isinstance(fast, PlanModule), fast.sparsify_report.plan_unsupported
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert _rel(fast(x), m(x)) <= 1e-4


class _Gated(nn.Module):
    """A custom op the plan has no native form for (sigmoid gating)."""

    def __init__(self) -> None:
        super().__init__()
        self.c0 = nn.Conv2d(3, 8, 3, padding=1)
        self.c1 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        h = torch.relu(self.c0(x))
        h = self.c1(h) * torch.sigmoid(h)
        return self.fc(h.mean((2, 3)))


def test_refused_network_gets_layers_with_the_reason():
    torch.manual_seed(4)
    m = prune(_Gated().eval(), "global_magnitude", 0.8).eval()
    with pytest.raises(Exception, match="sigmoid"):
        compile_plan(m, "csr")
    fast = sparsify(m, "csr", threads=2)
    rep = fast.sparsify_report
    assert not isinstance(fast, PlanModule)
    assert rep.runs_as == "layers" and "sigmoid" in rep.plan_unsupported
    assert "no plan: " in str(rep) and {r.name for r in rep.layers} == {"c0", "c1", "fc"}
    for n in (1, 8):
        x = torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(n))
        with torch.no_grad():
            assert _rel(fast(x), m(x)) <= 1e-4


def test_preresnet_gets_layers_with_the_reason():
    torch.manual_seed(5)
    m = prune(_randomise_bn(models.create("preresnet110", width_mult=0.25)), "global_magnitude", 0.9).eval()
    fast = sparsify(m, "csr", threads=2)
    assert not isinstance(fast, PlanModule)
    assert fast.sparsify_report.runs_as == "layers" and fast.sparsify_report.plan_unsupported
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        ref = m(x)
        assert _rel(fast(x), ref) <= 1e-4


def test_other_backends_and_options_keep_to_layers(nets):
    m = nets["resnet20"]
    for backend in ("dense", "torch"):
        rep = sparsify(m, backend).sparsify_report
        assert rep.runs_as == "layers" and backend in rep.plan_unsupported
    for kw, word in (({"fold_bn": False}, "fold_bn"), ({"min_sparsity": 0.5}, "min_sparsity"), ({"plan": False}, "plan=False")):
        fast = sparsify(m, "csr", **kw)
        assert not isinstance(fast, PlanModule) and word in fast.sparsify_report.plan_unsupported


def test_input_size_the_model_cannot_take_gives_layers():
    m = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, 3)).eval()
    fast = sparsify(m, "csr")  # (3, 32, 32) does not fit: per-layer, with the reason
    assert not isinstance(fast, PlanModule) and "input" in fast.sparsify_report.plan_unsupported
    fast = sparsify(m, "csr", input_size=(1, 28, 28))
    assert isinstance(fast, PlanModule)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert _rel(fast(x), m(x)) <= 1e-4


def test_bad_arguments(nets):
    m = nets["resnet20"]
    with pytest.raises(ValueError, match="input_size"):
        sparsify(m, "csr", input_size=(3, 32))
    with pytest.raises(ValueError, match="input_size"):
        sparsify(m, "csr", input_size="big")
    with pytest.raises(TypeError, match="plan"):
        sparsify(m, "csr", plan="yes")


def test_plan_output_goes_through_the_doors_again(nets):
    m = nets["resnet20"]
    fast = sparsify(m, "csr")
    again, explicit = sparsify(fast, "bsr"), compile_plan(fast, "csr", threads=1)
    assert isinstance(again, PlanModule) and again.backend == "bsr" and isinstance(explicit, PlanModule)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = m(x)
        assert _rel(again(x), ref) <= 1e-4 and _rel(explicit(x), ref) <= 1e-4
