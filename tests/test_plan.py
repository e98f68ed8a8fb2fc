"""Native whole-network plans (prunecal.sparse.plan) against torch's own dense forward."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

from prunecal import models
from prunecal.prune import prune
from prunecal.sparse import sparsify
from prunecal.sparse.plan import PlanModule, PlanUnsupported, compile_plan

pytestmark = pytest.mark.usefixtures("native")  # a missing _C fails (conftest.require_native)


def _rel(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y - ref).abs().max() / ref.abs().max().clamp_min(1e-12))


def _randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
    return model.eval()


@pytest.fixture(scope="module")
def pruned_r20() -> nn.Module:
    torch.manual_seed(1)
    m = _randomise_bn(models.create("resnet20"))
    return prune(m, "global_magnitude", 0.9, keep_first_conv=True).eval()


@pytest.fixture(scope="module")
def plans(pruned_r20):
    return {b: compile_plan(pruned_r20, b) for b in ("csr", "bsr", "auto")}


@pytest.mark.parametrize("backend, n", [("csr", 1), ("csr", 7), ("csr", 64), ("bsr", 1), ("bsr", 7), ("bsr", 64),
                                        ("auto", 7)])
def test_resnet20_random_matches_torch(pruned_r20, plans, backend, n):
    x = torch.randn(n, 3, 32, 32)
    with torch.no_grad():
        ref = pruned_r20(x)
        pm = plans[backend]
        for threads in (1, 2, 3):
            for mode in ("auto", "image", "op"):
                pm.threads, pm.mode = threads, mode
                y = pm(x)
                assert y.shape == ref.shape and y.dtype == torch.float32
                assert _rel(y, ref) < 1e-4, (threads, mode)
    pm.threads, pm.mode = None, "auto"


def test_isa_generic_matches_avx2(pruned_r20):
    # the fixed-shape tiles (32x32, 16x16, 8x8 outputs; AVX-512 ones on an AVX-512 CPU, the AVX2
    # ones elsewhere; test_isa.py runs the AVX2 tiles in a forced process) against the portable kernels
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ys = [compile_plan(pruned_r20, "csr", isa=isa, threads=2)(x) for isa in ("generic", "auto")]
    assert _rel(ys[1], ys[0]) < 1e-5


def test_plan_structure(plans):
    auto, csr = (plans[b].describe().splitlines() for b in ("auto", "csr"))
    assert auto[1:] == csr[1:] and "backend=auto" in auto[0]  # auto: CSR everywhere (measured)
    text = plans["csr"].describe()
    assert text.count("conv ") == 19 and text.count("+residual") == 9  # adds fused into conv2
    assert "shortcut" in text and "avgpool" in text and "linear" in text
    assert "bn" not in text.lower().replace("+bias", "")  # BN folded, not an op
    p = plans["csr"].plan
    assert p.n_ops == 19 + 2 + 1 + 1  # convs (9 with the residual add), 2 shortcuts, pool, linear
    assert p.arena_bytes > 0 and p.output_features == 10
    t = p.profile(torch.randn(2, 3, 32, 32).numpy(), 1)
    assert len(t) == p.n_ops + 2 and all(v >= 0 for v in t)


def test_auto_packs_layers_from_the_bsr_density_as_bsr(pruned_r20, monkeypatch):
    import prunecal.sparse.plan as plan_mod

    monkeypatch.setattr(plan_mod, "AUTO_BSR_DENSITY", 0.5)
    pm = compile_plan(pruned_r20, "auto")
    auto = pm.describe().splitlines()
    assert " bsr4 " in auto[1] and all(" csr " in ln for ln in auto[2:] if "conv " in ln)  # dense stem: BSR
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert _rel(pm(x), pruned_r20(x)) < 1e-4


def test_from_sparsify_output(pruned_r20):
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        ref = pruned_r20(x)
        for backend in ("csr", "dense"):
            fast = sparsify(pruned_r20, backend, plan=False)
            pm = compile_plan(fast, "csr", threads=2)
            assert _rel(pm(x), ref) < 1e-4


def test_pretrained_resnet20_predictions_identical(shared_data):
    w = shared_data / "weights" / "resnet20-12fca82f.th"
    z = np.load(shared_data / "cifar10" / "exact_subset.npz")
    from prunecal.data import to_tensor

    spec = models.spec("resnet20")
    x = to_tensor(z["x_test"][:128], spec.mean, spec.std)
    model = models.create("resnet20", weights=w)
    labels = z["y_test"][:128]
    for sparsity in (0.5, 0.9):
        pruned = prune(model, "global_magnitude", sparsity, keep_first_conv=True)
        with torch.no_grad():
            ref = pruned(x)
            for backend in ("csr", "bsr") if sparsity == 0.9 else ("csr",):
                y = compile_plan(pruned, backend, threads=2)(x)
                assert _rel(y, ref) < 1e-4
                assert torch.equal(y.argmax(1), ref.argmax(1))
        if sparsity == 0.5:  # still accurate: the comparison is meaningful
            assert float((ref.argmax(1).numpy() == labels).mean()) > 0.8


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("backend", ["csr", "bsr"])
def test_nonfinite_input_propagates_like_torch(pruned_r20, plans, bad, backend):
    x = torch.randn(4, 3, 32, 32)
    x[1, 0, 5, 7] = bad
    with torch.no_grad():
        ref = pruned_r20(x)
        for threads in (1, 2):
            pm = plans[backend]
            pm.threads = threads
            y = pm(x)
            assert torch.equal(torch.isnan(y), torch.isnan(ref))
            assert torch.equal(torch.isinf(y), torch.isinf(ref))
            fin = torch.isfinite(ref)
            assert _rel(y[fin], ref[fin]) < 1e-4
            assert torch.isfinite(y[[0, 2, 3]]).all()  # other images unaffected
    plans[backend].threads = None


def test_overflow_inside_network_matches_torch():
    # finite input, Inf inside: the image is re-run with dense weights, like torch's NaN*0
    m = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 3, padding=1),
                      nn.Flatten(), nn.Linear(3 * 6 * 6, 5)).eval()
    with torch.no_grad():
        m[0].weight.mul_(1e30)
        m[2].weight[:, 1].zero_()
    x = torch.randn(2, 2, 6, 6) * 1e10
    with torch.no_grad():
        ref = m(x)
        y = compile_plan(m, "csr", input_size=(2, 6, 6))(x)
    assert torch.equal(torch.isnan(y), torch.isnan(ref))


def test_other_input_size_and_noncontiguous(pruned_r20, plans):
    x = torch.randn(3, 3, 40, 24)
    with torch.no_grad():
        ref = pruned_r20(x)
        assert _rel(plans["csr"](x), ref) < 1e-4
        xt = torch.randn(32, 32, 2, 3).permute(2, 3, 0, 1)  # non-contiguous (2, 3, 32, 32)
        assert _rel(plans["csr"](xt), pruned_r20(xt)) < 1e-4
        assert plans["csr"](torch.zeros(0, 3, 32, 32)).shape == (0, 10)


def test_copy_pickle_and_model_edits(pruned_r20):
    import copy
    import pickle

    m = copy.deepcopy(pruned_r20)
    pm = compile_plan(m, "csr")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = pruned_r20(x)
        for other in (copy.deepcopy(pm), pickle.loads(pickle.dumps(pm))):
            assert _rel(other(x), ref) < 1e-4
        m.conv1.weight.mul_(2)  # the plan holds its own copy of the weights
        assert _rel(pm(x), ref) < 1e-4


def test_torch_prune_reparametrisation():
    from torch.nn.utils import prune as tprune

    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1)).eval()
    tprune.l1_unstructured(m[2], "weight", amount=0.8)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        pm = compile_plan(m, "csr", input_size=(3, 8, 8))
        assert _rel(pm(x), m(x)) < 1e-4
    line = [ln for ln in pm.describe().splitlines() if "conv     _2" in ln][0]
    assert abs(float(line.split("density ")[1].split()[0]) - 0.2) < 0.01  # the mask is baked in


def test_bad_inputs(plans):
    pm = plans["csr"]
    with pytest.raises(TypeError, match="float32"):
        pm(torch.zeros(1, 3, 32, 32, dtype=torch.float64))
    with pytest.raises(TypeError):
        pm(np.zeros((1, 3, 32, 32), np.float32))
    with pytest.raises(ValueError, match="4-D"):
        pm(torch.zeros(3, 32, 32))
    with pytest.raises(ValueError, match="input"):
        pm(torch.zeros(1, 5, 32, 32))
    with pytest.raises(RuntimeError, match="inference"):
        pm(torch.zeros(1, 3, 32, 32, requires_grad=True))
    with pytest.raises(ValueError, match="threads"):
        pm.threads = 0
        pm(torch.zeros(1, 3, 32, 32))
    pm.threads = None
    with pytest.raises(TypeError), torch.no_grad():
        pm.plan.run(torch.zeros(1, 3, 32, 32, dtype=torch.float64).numpy(), np.zeros((1, 10), np.float32))
    with pytest.raises(ValueError, match="out"):
        pm.plan.run(np.zeros((2, 3, 32, 32), np.float32), np.zeros((1, 10), np.float32))
    with pytest.raises(ValueError, match="mode"):
        pm.plan.run(np.zeros((1, 3, 32, 32), np.float32), np.zeros((1, 10), np.float32), 1, "fast")


def test_bad_arguments(pruned_r20):
    with pytest.raises(ValueError, match="backend"):
        compile_plan(pruned_r20, "dense")
    with pytest.raises(TypeError):
        compile_plan("resnet20")
    with pytest.raises(ValueError, match="block_rows"):
        compile_plan(pruned_r20, "bsr", block_rows=3)
    with pytest.raises(ValueError, match="training"):
        compile_plan(models.create("resnet20").train())
    bad = models.create("resnet20")
    with torch.no_grad():
        bad.layer1[0].conv1.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        compile_plan(bad)


class _Gate(nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: does not trace
            return x
        return -x


@pytest.mark.parametrize("model, node", [
    (nn.Sequential(nn.Conv2d(3, 4, 3), nn.Sigmoid()), "1"),
    (nn.Sequential(nn.Conv2d(3, 4, 3), nn.MaxPool2d(3, ceil_mode=True)), "1"),
    (nn.Sequential(nn.Conv2d(3, 4, 3), nn.AvgPool2d(2)), "1"),
    (nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.BatchNorm2d(4)), "2"),  # BN not after a conv
    (nn.Sequential(nn.Conv2d(3, 4, 3, padding_mode="reflect", padding=1)), "0"),
    (nn.Sequential(nn.Conv2d(3, 4, 3, stride=(2, 1))), "0"),
    (_Gate(), "_Gate"),
])
def test_unsupported_raises(model, node):
    with pytest.raises(PlanUnsupported) as e:
        compile_plan(model.eval())
    assert isinstance(e.value, NotImplementedError)
    if node is not None:
        assert e.value.node == node or node in str(e.value)


def test_fallback_to_sparsify():
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Sigmoid(), nn.Conv2d(4, 2, 1)).eval()
    fast = compile_plan(m, "csr", input_size=(3, 8, 8), fallback=True)
    assert not isinstance(fast, PlanModule) and "Sigmoid" in fast.plan_unsupported
    assert fast.sparsify_report.runs_as == "layers" and "Sigmoid" in fast.sparsify_report.plan_unsupported
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert _rel(fast(x), m(x)) < 1e-4


@pytest.mark.parametrize("name", ["vgg11_bn", "mobilenetv2"])
def test_other_families_compile_or_raise_cleanly(name):
    m = _randomise_bn(models.create(name, width_mult=0.25) if name != "vgg11_bn" else models.create(name))
    pm = compile_plan(m, "csr")  # both families are plan-supported: losing that must fail here
    assert isinstance(pm, PlanModule)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert _rel(pm(x), m(x)) < 1e-4


def _check_against_torch(m: nn.Module, density: float, backend: str, threads: int, shape: tuple) -> None:
    """Zero a random (1 - density) of every conv weight of m, then plan output == torch output."""
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.Conv2d):
                mod.weight.mul_((torch.rand_like(mod.weight) < density).float())
        x = torch.randn(*shape)
        ref = m(x).flatten(1)
        y = compile_plan(m, backend, threads=threads, input_size=shape[1:])(x).flatten(1)
    assert torch.allclose(y, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max().clamp_min(1)))


@settings(max_examples=25, deadline=None)
@given(
    cin=st.integers(1, 6), cout=st.sampled_from([1, 3, 4, 8, 12]), k=st.sampled_from([1, 3, 5]),
    stride=st.integers(1, 3), pad=st.integers(0, 2), dil=st.integers(1, 2), h=st.integers(5, 13),
    w=st.integers(5, 13), bn=st.booleans(), relu=st.booleans(), density=st.sampled_from([0.05, 0.3, 1.0]),
    backend=st.sampled_from(["csr", "bsr"]), threads=st.sampled_from([1, 2]), n=st.integers(1, 5),
)
def test_random_conv_stacks(cin, cout, k, stride, pad, dil, h, w, bn, relu, density, backend, threads, n):
    assume((h + 2 * pad - dil * (k - 1) - 1) >= 0 and (w + 2 * pad - dil * (k - 1) - 1) >= 0)
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, pad, dil, bias=not bn)]
    if bn:
        layers.append(nn.BatchNorm2d(cout))
    if relu:
        layers.append(nn.ReLU(inplace=True))
    layers += [nn.Conv2d(cout, cout, 3, 1, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cout, 3)]
    _check_against_torch(_randomise_bn(nn.Sequential(*layers)), density, backend, threads, (n, cin, h, w))


def test_maxpool_and_clamp_with_nan():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv2d(3, 8, 3, padding=1)
            self.p1 = nn.MaxPool2d(3, stride=2, padding=1)
            self.c2 = nn.Conv2d(8, 8, 3, padding=1, groups=4)
            self.act = nn.ReLU6()

        def forward(self, x):
            y = self.act(self.p1(self.c1(x)))
            y = F.max_pool2d(self.c2(y), 2)
            return F.hardtanh(y, -0.5, 0.5)

    m = Net().eval()
    x = torch.randn(3, 3, 11, 12)
    x[2, 1, 4, 4] = float("nan")
    with torch.no_grad():
        ref = m(x)
        y = compile_plan(m, "csr", input_size=(3, 11, 12))(x)
    assert torch.equal(torch.isnan(y), torch.isnan(ref)) and torch.isnan(ref).any()
    fin = torch.isfinite(ref)
    assert torch.allclose(y[fin], ref[fin], rtol=1e-4, atol=1e-5)


def test_non_square_kernel():
    m = nn.Sequential(nn.Conv2d(3, 4, (3, 1), padding=1), nn.ReLU(), nn.Conv2d(4, 2, (1, 5))).eval()
    x = torch.randn(2, 3, 9, 11)
    with torch.no_grad():
        assert _rel(compile_plan(m, "bsr", input_size=(3, 9, 11))(x), m(x)) < 1e-4


@pytest.mark.parametrize("left,right", [(4, 4), (7, 3)])  # channel padding before / after (F.pad's 5th, 6th)
def test_traced_shortcut_and_residual_forms(left, right):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 16 - left - right, 3, padding=1)
            self.b = nn.Conv2d(16 - left - right, 16, 3, stride=2, padding=1)
            self.fc = nn.Linear(16 * 4 * 4, 4)

        def forward(self, x):
            y = torch.relu(self.a(x)).contiguous()
            z = self.b(y)
            s = F.pad(y[:, :, ::2, ::2], (0, 0, 0, 0, left, right), "constant", 0)
            z = (z + s).relu()
            z = z.add(s)
            return self.fc(z.view(z.size(0), -1))

    m = Net().eval()
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        pm = compile_plan(m, "csr", input_size=(3, 8, 8))
        assert _rel(pm(x), m(x)) < 1e-4
    assert isinstance(pm, PlanModule) and "shortcut" in pm.describe()


def test_native_plan_rejects_bad_structure():
    from prunecal import _C
    from prunecal.sparse.formats import CSRWeight

    w = CSRWeight.from_dense(torch.randn(4, 3, 3, 3))
    p = _C.Plan()
    a, b = p.add_buffer(3, 8, 8, 1), p.add_buffer(4, 8, 8, 0)
    with pytest.raises(ValueError, match="input/output"):
        p.run(np.zeros((1, 3, 8, 8), np.float32), np.zeros((1, 256), np.float32))
    args = ("c", "csr", w.values, w.indptr, w.indices, [4, 3, 3, 3], 1, None, 1, 1, 1, 1, False)
    c = p.add_buffer(5, 8, 8, 0)
    with pytest.raises(ValueError, match="channels"):
        p.add_conv(*args, c, b)
    with pytest.raises(ValueError, match="does not match"):
        p.add_conv(*args[:9], 2, *args[10:], a, b)  # stride 2: 4x4 output, buffer is 8x8
    with pytest.raises(ValueError, match="no buffer"):
        p.add_conv(*args, a, 7)
    with pytest.raises(ValueError, match="bias"):
        p.add_conv(*args[:7], np.zeros(3, np.float32), *args[8:], a, b)
    with pytest.raises(TypeError, match="int32"):
        p.add_conv("c", "csr", w.values, w.indptr.astype(np.int64), w.indices, [4, 3, 3, 3], 1, None, 1, 1, 1, 1,
                   False, a, b)
    bad_idx = w.indices.copy()
    bad_idx[0] = 99
    with pytest.raises(ValueError, match="indices"):
        p.add_conv("c", "csr", w.values, w.indptr, bad_idx, [4, 3, 3, 3], 1, None, 1, 1, 1, 1, False, a, b)
    with pytest.raises(ValueError, match="shapes differ"):
        p.add_add("s", a, b, b, False)
    with pytest.raises(ValueError):
        p.add_buffer(0, 8, 8, 0)
    p.add_conv(*args, a, b)
    p.set_io(a, b)
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    out = np.zeros((2, 256), np.float32)
    p.run(x, out, 2)
    ref = F.conv2d(torch.from_numpy(x), torch.from_numpy(w.to_dense()), padding=1)
    assert torch.allclose(torch.from_numpy(out).reshape(2, 4, 8, 8), ref, atol=1e-5)
    with pytest.raises(ValueError, match="x: expected shape"):
        p.run(np.zeros((1, 3, 9, 8), np.float32), np.zeros((1, 256), np.float32))


_AVX512_OFF_SCRIPT = """
import sys, numpy as np, torch
from prunecal import models, _C
from prunecal.prune import prune
from prunecal.sparse.plan import compile_plan
assert not _C.plan_avx512_active()
torch.manual_seed(1)
m = prune(models.create("resnet20"), "global_magnitude", 0.9, keep_first_conv=True).eval()
x = torch.from_numpy(np.load(sys.argv[1]))
np.save(sys.argv[2], compile_plan(m, "csr", threads=2)(x).numpy())
"""


def test_avx512_tiles_match_avx2_path(tmp_path, run_python):
    """The runtime-dispatched AVX-512 tiles against the AVX2 tiles (PRUNECAL_NO_AVX512=1, another process)."""
    from prunecal import _C

    if not _C.plan_avx512_active():
        pytest.skip("this CPU (or PRUNECAL_NO_AVX512) does not use the AVX-512 tiles")
    torch.manual_seed(1)
    m = prune(models.create("resnet20"), "global_magnitude", 0.9, keep_first_conv=True).eval()
    x = torch.randn(5, 3, 32, 32)
    np.save(tmp_path / "x.npy", x.numpy())
    run_python(_AVX512_OFF_SCRIPT, str(tmp_path / "x.npy"), str(tmp_path / "y.npy"), PRUNECAL_NO_AVX512="1")
    with torch.no_grad():
        y512 = compile_plan(m, "csr", threads=2)(x)
        ref = m(x)
    y256 = torch.from_numpy(np.load(tmp_path / "y.npy"))
    assert _rel(y512, y256) < 1e-5
    assert _rel(y512, ref) < 1e-4


class _Block(nn.Module):
    """conv -> relu -> 3x3 conv + residual (the shapes the aligned layout and fused epilogue serve)."""

    def __init__(self, c: int, k: int, pad: int, stride: int) -> None:
        super().__init__()
        self.a = nn.Conv2d(c, c, k, stride, pad)
        self.b = nn.Conv2d(c, c, 3, 1, 1)

    def forward(self, x):
        y = torch.relu(self.a(x))
        return torch.relu(self.b(y) + y)


@settings(max_examples=20, deadline=None)
@given(
    c=st.sampled_from([1, 3, 8, 16]), w=st.sampled_from([16, 32, 48]), h=st.integers(3, 18),
    k=st.sampled_from([1, 3, 5]), pad=st.integers(0, 2), stride=st.sampled_from([1, 2]),
    density=st.sampled_from([0.05, 0.3, 1.0]), backend=st.sampled_from(["csr", "bsr"]),
    threads=st.sampled_from([1, 2]), n=st.integers(1, 3),
)
def test_aligned_layout_blocks(c, w, h, k, pad, stride, density, backend, threads, n):
    """Widths that take the aligned layout (rows of 16 floats, shifted copies, fused residual)."""
    assume(h + 2 * pad >= k and w + 2 * pad >= k)
    _check_against_torch(_Block(c, k, pad, stride).eval(), density, backend, threads, (n, c, h, w))


def test_plain_and_aligned_layouts_agree(pruned_r20, monkeypatch):
    """Fixed kernels: PRUNECAL_PLAN_PLAIN_LAYOUT=1 (the unpadded-row layout) gives the same logits,
    NaN images included."""
    from prunecal import _C

    if not _C.plan_avx512_active():
        pytest.skip("the aligned layout is used only with the AVX-512 tiles")
    x = torch.randn(6, 3, 32, 32)
    x[2, 1, 5, 7] = float("nan")
    x[4, 0, 0, 0] = float("inf")
    with torch.no_grad():
        aligned = compile_plan(pruned_r20, "csr", threads=2, jit=False)  # (generated kernels: plain layout)
        assert any("A16x3" in line for line in aligned.plan_for((3, 32, 32)).describe())
        monkeypatch.setenv("PRUNECAL_PLAN_PLAIN_LAYOUT", "1")
        plain = compile_plan(pruned_r20, "csr", threads=2, jit=False)
        assert not any(",A16" in line for line in plain.plan_for((3, 32, 32)).describe())
        for threads, mode in ((1, "auto"), (2, "op"), (2, "image")):
            aligned.threads = plain.threads = threads
            aligned.mode = plain.mode = mode
            ya, yp = aligned(x), plain(x)
            assert torch.equal(torch.isnan(ya), torch.isnan(yp))
            assert torch.isnan(ya[2]).all() and torch.isnan(ya[4]).all()
            fin = torch.isfinite(ya[0]).all()
            assert fin and _rel(ya[[0, 1, 3, 5]], yp[[0, 1, 3, 5]]) < 1e-6


def test_more_team_members_than_cores(pruned_r20):
    """Per-op mode with more threads than cores: members that do not get a core have their
    slots taken by the others (TeamSteps); the result must not change."""
    x = torch.randn(3, 3, 32, 32)
    x[1, 0, 3, 3] = float("nan")
    with torch.no_grad():
        ref = pruned_r20(x)
        pm = compile_plan(pruned_r20, "csr", threads=8)
        pm.mode = "op"
        for _ in range(3):
            y = pm(x)
            assert torch.isnan(y[1]).all()
            assert _rel(y[[0, 2]], ref[[0, 2]]) < 1e-4


def test_auto_small_batch_picks_team_or_one_thread_same_bits(pruned_r20):
    """Auto mode below one image per thread measures the team against one thread and runs the
    faster (csrc/plan.cpp): every call, whichever ran it, gives the 1-thread bits."""
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        one = compile_plan(pruned_r20, "csr", threads=1)(x)
        pm = compile_plan(pruned_r20, "csr", threads=2)
        outs = [pm(x) for _ in range(70)]  # alternating first calls, then the pick and a re-probe
        pm.threads = 3  # another thread count starts afresh
        outs += [pm(x) for _ in range(10)]
        assert _rel(one, pruned_r20(x)) < 1e-4
    for y in outs:
        assert torch.equal(y, one)
