"""PlanModule.footprint(): the same (dense, stored) bytes as sparsify's report, without sparsify;
and the sweep, which now builds csr/bsr networks with compile_plan alone."""
from __future__ import annotations

import importlib
import pickle

import pytest
import torch
from torch import nn

from prunecal import models
from prunecal.prune import prune
from prunecal.sparse import sparsify
from prunecal.sparse.plan import PlanModule, PlanUnsupported, compile_plan

pytestmark = pytest.mark.usefixtures("native")  # a missing _C fails (conftest.require_native)

_sparsify_mod = importlib.import_module("prunecal.sparse.sparsify")


def _report_bytes(model: nn.Module, backend: str) -> tuple[int, int]:
    rep = sparsify(model, backend, plan=False).sparsify_report
    return int(rep.model_dense_bytes), int(rep.model_sparse_bytes)


@pytest.fixture
def no_sparsify(monkeypatch):
    """Fails the test if footprint() (or anything else) falls back to sparsify."""
    def boom(*a, **k):
        raise AssertionError("sparsify was called")
    monkeypatch.setattr(_sparsify_mod, "sparsify", boom)
    import prunecal.sparse as S
    monkeypatch.setattr(S, "sparsify", boom)


def _pruned(name: str, **kw) -> nn.Module:
    torch.manual_seed(3)
    m = models.create(name, **kw)
    return prune(m, "global_magnitude", 0.9, keep_first_conv=True).eval()


@pytest.fixture(scope="module")
def nets() -> dict[str, nn.Module]:
    return {"resnet20": _pruned("resnet20"),
            "vgg11_bn": _pruned("vgg11_bn", width_mult=0.25),
            "mobilenetv2": _pruned("mobilenetv2", width_mult=0.25)}  # depthwise (grouped) convs


@pytest.mark.parametrize("name", ["resnet20", "vgg11_bn", "mobilenetv2"])
@pytest.mark.parametrize("backend", ["csr", "bsr"])
def test_footprint_equals_sparsify_report(nets, name, backend, monkeypatch):
    model = nets[name]
    ref = _report_bytes(model, backend)
    with monkeypatch.context() as mp:  # computed from the plan's own weights, no sparsify
        mp.setattr(_sparsify_mod, "sparsify", lambda *a, **k: pytest.fail("sparsify was called"))
        pm = compile_plan(model, backend)
        assert isinstance(pm, PlanModule)
        fp = pm.footprint()
    assert fp == ref
    assert all(type(v) is int for v in fp)
    assert fp[1] < fp[0]  # 90% pruned: smaller than dense
    # the input model is untouched and the numbers do not depend on the plan's packing options
    assert compile_plan(model, backend, block_rows=8, threads=1).footprint() == ref
    assert _report_bytes(model, backend) == ref


def test_footprint_auto_counts_as_csr(nets, monkeypatch):
    # "auto" reports what compile_plan(..., fallback=True) would run: sparsify(model, "csr")
    ref = _report_bytes(nets["resnet20"], "csr")
    monkeypatch.setattr(_sparsify_mod, "sparsify", lambda *a, **k: pytest.fail("sparsify was called"))
    assert compile_plan(nets["resnet20"], "auto").footprint() == ref


def test_footprint_structured_and_unpruned():
    torch.manual_seed(0)
    base = models.create("resnet20")
    for m in (base, prune(base, "l1_filter", 0.5).eval()):
        for b in ("csr", "bsr"):
            assert compile_plan(m, b).footprint() == _report_bytes(m, b)


class _Small(nn.Module):
    """Conv with bias and no BN, conv+BN(+ReLU) without bias, max-pool, dropout, flatten, two
    linears; plus a module and a buffer the forward never uses (dense bytes only)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1, bias=True)
        self.c2 = nn.Conv2d(8, 12, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(12)
        self.pool = nn.MaxPool2d(2)
        self.drop = nn.Dropout(0.1)
        self.fc1 = nn.Linear(12 * 4 * 4, 20)
        self.fc2 = nn.Linear(20, 10, bias=False)
        self.unused = nn.Linear(100, 100)
        self.register_buffer("stats", torch.zeros(50))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.c1(x))
        x = self.pool(torch.relu(self.bn2(self.c2(x))))
        x = self.drop(torch.flatten(x, 1))
        return self.fc2(torch.relu(self.fc1(x)))


class _Shared(nn.Module):
    """One conv module called twice (weight sharing): sparsify folds nothing there."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        x = torch.relu(self.conv(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def _prune_half(m: nn.Module) -> nn.Module:
    torch.manual_seed(5)
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.3, 0.3)
            mod.running_var.uniform_(0.5, 1.5)
    return prune(m, "global_magnitude", 0.6).eval()


@pytest.mark.parametrize("backend", ["csr", "bsr"])
def test_footprint_small_net(backend, monkeypatch):
    torch.manual_seed(1)
    m = _prune_half(_Small())
    ref = _report_bytes(m, backend)
    monkeypatch.setattr(_sparsify_mod, "sparsify", lambda *a, **k: pytest.fail("sparsify was called"))
    pm = compile_plan(m, backend, input_size=(3, 8, 8))
    assert pm.footprint() == ref
    # the unused module and buffer count in the dense bytes only
    dense, stored = ref
    assert dense >= (100 * 100 + 100 + 50) * 4 + stored


@pytest.mark.parametrize("backend", ["csr", "bsr"])
def test_footprint_falls_back_to_sparsify_where_it_must(backend):
    torch.manual_seed(2)
    shared = _prune_half(_Shared())
    pm = compile_plan(shared, backend, input_size=(4, 6, 6))
    assert isinstance(pm, PlanModule) and pm._footprint is None  # no fast path: asks sparsify
    assert pm.footprint() == _report_bytes(shared, backend)
    # a sparsify output (already packed layers, kept as they are by a second sparsify)
    sm = sparsify(_pruned("resnet20"), "csr", plan=False)
    pm = compile_plan(sm, backend)
    assert pm._footprint is None
    assert pm.footprint() == _report_bytes(sm, backend)


def test_footprint_survives_pickle(nets, no_sparsify):
    pm = compile_plan(nets["resnet20"], "bsr")
    again = pickle.loads(pickle.dumps(pm))
    assert again.footprint() == pm.footprint()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(again(x), pm(x))


# ---------------------------------------------------------------------------------------------
# the sweep
ARGS = ["--limit", "20", "--methods", "global_magnitude", "--sparsities", "0.5",
        "--corruptions", "gaussian_noise", "--severities", "1", "--sparse-backend", "csr,bsr,dense",
        "--batch-size", "16", "--n-bootstrap", "10", "--threads", "1", "--quiet"]


def _sweep(tmp_path):
    from prunecal.eval import config as C
    from prunecal.eval.cli import build_parser, config_from_args
    from prunecal.eval.store import Store
    from prunecal.eval.sweep import Sweep, prepare

    cfg = C.resolve(config_from_args(build_parser().parse_args(ARGS + ["--out", str(tmp_path)])))
    store = Store(tmp_path / "results.sqlite")
    return Sweep(cfg, store), prepare(cfg), store


def test_sweep_builds_plans_once_and_stores_their_bytes(tmp_path, monkeypatch):
    import prunecal.sparse as S

    calls: list[str] = []
    real = _sparsify_mod.sparsify

    def spy(model, backend="csr", **kw):
        calls.append(backend)
        return real(model, backend, **kw)

    monkeypatch.setattr(S, "sparsify", spy)
    monkeypatch.setattr(_sparsify_mod, "sparsify", spy)
    sweep, prep, store = _sweep(tmp_path)
    try:
        assert sweep.run(prep) > 0
        units = store.units()
    finally:
        store.close()
    assert calls and set(calls) == {"dense"}  # csr/bsr: compile_plan alone
    monkeypatch.undo()
    seen = set()
    nets = sweep.runner(prep)._nets
    assert nets
    for key, net in nets.items():
        method, sparsity = key.method, key.sparsity
        for backend in ("csr", "bsr"):
            model, dense, stored = net.by_backend[backend]
            assert isinstance(model, PlanModule)
            ref = _report_bytes(net.result.model, backend)
            assert (dense, stored) == ref
            rows = [u for u in units if u["method"] == method and u["sparsity"] == sparsity
                    and u["backend"] == backend]
            assert rows
            for u in rows:
                assert (u["bytes_dense"], u["bytes_sparse"]) == ref
                seen.add(backend)
    assert seen == {"csr", "bsr"}
    dense_rows = [u for u in units if u["backend"] == "dense"]
    assert dense_rows and all(u["bytes_sparse"] > 0 and u["bytes_dense"] > 0 for u in dense_rows)


def test_sweep_falls_back_to_sparsify_on_plan_unsupported(tmp_path, monkeypatch):
    import prunecal.sparse.plan as plan_mod

    def unsupported(*a, **k):
        raise PlanUnsupported("x", "test", "forced")

    monkeypatch.setattr(plan_mod, "compile_plan", unsupported)
    sweep, prep, store = _sweep(tmp_path)
    try:
        from prunecal.eval.stages import Network

        runner = sweep.runner(prep)
        net = runner.network(Network("global_magnitude", 0.5, 0, 0))
        for backend in ("csr", "bsr"):
            model, dense, stored = runner.backend_model(net, backend)
            assert not isinstance(model, PlanModule)
            assert model.sparsify_report.backend == backend
            assert (dense, stored) == _report_bytes(net.result.model, backend)
            assert runner.backend_model(net, backend)[0] is model  # cached
    finally:
        store.close()
