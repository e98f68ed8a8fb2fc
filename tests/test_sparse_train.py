"""prunecal.sparse.train: sparse fine-tuning through the native kernels.

Expected values come from torch's own dense ops on the masked weight (``F.conv2d`` / ``F.linear``
and autograd). The kernels compute in float32 only, so there is no float64 gradcheck: every
gradient is compared in float32 (relative error <= 1e-4).
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prunecal import models, prune, sparse
from prunecal.sparse.train import SparseConv2d, SparseLinear, SparseTrainable, trainable

pytestmark = pytest.mark.native


def _isas() -> list[str]:
    from prunecal import _C

    out = ["generic"]
    for isa in ("avx2", "avx512"):
        try:
            if _C.train_isa(isa) == isa:
                out.append(isa)
        except ValueError:
            pass
    return out


ISAS = _isas()


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| (0 when both are zero)."""
    a, b = a.detach().double(), b.detach().double()
    d, n = float((a - b).norm()), float(b.norm())
    return d / n if n > 0 else d


def pruned_weight(shape: tuple[int, ...], density: float, gen: torch.Generator) -> torch.Tensor:
    w = torch.randn(shape, generator=gen)
    return w * (torch.rand(shape, generator=gen) < density)


def check_conv(n, c_in, c_out, h, w, k, stride, pad, groups, density, isa, threads, *, zero_row=False,
               bias=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    wt = pruned_weight((c_out, c_in // groups, k, k), density, gen)
    if zero_row:
        wt[c_out // 2] = 0
    conv = nn.Conv2d(c_in, c_out, k, stride=stride, padding=pad, groups=groups, bias=bias)
    with torch.no_grad():
        conv.weight.copy_(wt)
    layer = SparseConv2d(conv, threads=threads, isa=isa)
    x = torch.randn(n, c_in, h, w, generator=gen)
    # reference: torch dense conv on the masked weight
    xr, wr = x.clone().requires_grad_(), wt.clone().requires_grad_()
    br = conv.bias.detach().clone().requires_grad_() if bias else None
    yr = F.conv2d(xr, wr, br, stride=stride, padding=pad, groups=groups)
    gy = torch.randn(yr.shape, generator=gen)
    yr.backward(gy)
    xs = x.clone().requires_grad_()
    ys = layer(xs)
    ys.backward(gy)
    mask = wt.reshape(c_out, -1) != 0
    assert ys.shape == yr.shape
    assert rel(ys, yr) <= 1e-4
    assert rel(xs.grad, xr.grad) <= 1e-4
    assert layer.values.grad.shape == (int(mask.sum()),)
    assert rel(layer.values.grad, wr.grad.reshape(c_out, -1)[mask]) <= 1e-4
    if bias:
        assert rel(layer.bias.grad, br.grad) <= 1e-4
    assert torch.equal(layer.dense_weight(), wt)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("n,c_in,c_out,hw,k,stride,pad", [
    (1, 16, 16, 32, 3, 1, 1),   # ResNet stage 1, batch 1
    (64, 16, 32, 8, 3, 2, 1),   # stride 2, batch 64
    (4, 32, 32, 16, 3, 1, 1),
    (3, 8, 12, 9, 1, 1, 0),     # 1x1
    (2, 8, 12, 9, 1, 2, 0),     # 1x1 stride 2
    (2, 6, 4, 7, 3, 1, 0),      # padding 0
    (2, 6, 4, 7, 3, 2, 0),
])
@pytest.mark.parametrize("density", [1.0, 0.5, 0.1, 0.01])
def test_conv_grads_match_masked_torch(isa, threads, n, c_in, c_out, hw, k, stride, pad, density):
    check_conv(n, c_in, c_out, hw, hw, k, stride, pad, 1, density, isa, threads)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(1, 6), cg_in=st.integers(1, 9), cg_out=st.integers(1, 9), h=st.integers(1, 14),
       w=st.integers(1, 14), k=st.sampled_from([1, 2, 3, 5]), stride=st.integers(1, 3), pad=st.integers(0, 2),
       groups=st.integers(1, 3), density=st.sampled_from([0.0, 0.01, 0.05, 0.3, 0.7, 1.0]),
       isa=st.sampled_from(ISAS), threads=st.integers(1, 2), zero_row=st.booleans(), bias=st.booleans(),
       seed=st.integers(0, 2**16))
def test_conv_grads_random_shapes(n, cg_in, cg_out, h, w, k, stride, pad, groups, density, isa, threads, zero_row,
                                  bias, seed):
    h, w = max(h, k - 2 * pad), max(w, k - 2 * pad)
    check_conv(n, cg_in * groups, cg_out * groups, h, w, k, stride, pad, groups, density, isa, threads,
               zero_row=zero_row, bias=bias, seed=seed)


def test_train_uses_channels_last_when_every_conv_is_sparse():
    """prunecal.train's channels_last switch also covers a model whose convs are all sparse
    layers (no 4-D parameter left): the layers see NHWC inputs, the training equals NCHW's."""
    from prunecal.train import train

    def net():
        torch.manual_seed(0)
        conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        with torch.no_grad():
            conv.weight.mul_(torch.rand_like(conv.weight) < 0.5)
        return nn.Sequential(SparseConv2d(conv, threads=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(8, 10))

    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (64, 8, 8, 3), dtype=np.uint8), rng.integers(0, 10, 64)
    kw = dict(epochs=1, lr=0.05, batch_size=16, mean=(0.5,) * 3, std=(0.25,) * 3, seed=1, progress=False)
    out = {}
    for cl in (True, False):
        m, seen = net(), []
        m[0].register_forward_pre_hook(lambda mod, a: seen.append(a[0].is_contiguous(memory_format=torch.channels_last)
                                                                  and not a[0].is_contiguous()))
        out[cl] = (train(m, x, y, channels_last=cl, **kw)["step_loss"], seen)
    assert all(out[True][1]) and not any(out[False][1])
    np.testing.assert_allclose(out[True][0], out[False][0], rtol=1e-4)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("channels_last", [False, True])
def test_two_thread_gradients_are_deterministic(isa, channels_last):
    """The weight gradient sums per-run partial sums: the same bits on every call with the same
    thread count, whichever thread ran which images (it was dynamic once)."""
    gen = torch.Generator().manual_seed(3)
    conv = nn.Conv2d(16, 24, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(pruned_weight(conv.weight.shape, 0.3, gen))
    layer = SparseConv2d(conv, threads=2, isa=isa)
    x = torch.randn(13, 16, 12, 12, generator=gen)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    gy = torch.randn(13, 24, 12, 12, generator=gen)
    grads = []
    for _ in range(12):
        layer.values.grad = None
        xs = x.clone().requires_grad_()
        layer(xs).backward(gy)
        grads.append((layer.values.grad.clone(), xs.grad.clone()))
    for gv, gx in grads[1:]:
        assert torch.equal(gv, grads[0][0])
        assert torch.equal(gx, grads[0][1])


@pytest.mark.parametrize("isa", ISAS)
def test_all_zero_weight(isa):
    conv = nn.Conv2d(4, 6, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
    layer = SparseConv2d(conv, isa=isa)
    assert layer.nnz == 0
    x = torch.randn(2, 4, 5, 5, requires_grad=True)
    y = layer(x)
    assert torch.equal(y, torch.zeros(2, 6, 5, 5))
    y.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))
    assert layer.values.grad.shape == (0,)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("n,density", [(1, 0.3), (7, 0.05), (64, 0.5), (3, 0.0)])
def test_linear_grads_match_masked_torch(isa, n, density):
    gen = torch.Generator().manual_seed(n)
    wt = pruned_weight((10, 37), density, gen)
    lin = nn.Linear(37, 10)
    with torch.no_grad():
        lin.weight.copy_(wt)
    layer = SparseLinear(lin, isa=isa)
    x = torch.randn(n, 37, generator=gen)
    xr, wr, br = x.clone().requires_grad_(), wt.clone().requires_grad_(), lin.bias.detach().clone().requires_grad_()
    yr = F.linear(xr, wr, br)
    gy = torch.randn(yr.shape, generator=gen)
    yr.backward(gy)
    xs = x.clone().requires_grad_()
    ys = layer(xs)
    ys.backward(gy)
    assert rel(ys, yr) <= 1e-4 and rel(xs.grad, xr.grad) <= 1e-4
    assert rel(layer.values.grad, wr.grad[wt != 0]) <= 1e-4
    assert rel(layer.bias.grad, br.grad) <= 1e-4
    # leading dims are kept
    assert layer(torch.randn(2, 3, 37)).shape == (2, 3, 10)


def test_noncontiguous_input_and_empty_batch():
    conv = nn.Conv2d(4, 6, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.mul_(torch.rand_like(conv.weight) < 0.3)
    layer = SparseConv2d(conv)
    x = torch.randn(3, 4, 9, 9).to(memory_format=torch.channels_last)[:, :, 1:8, ::2]
    torch.testing.assert_close(layer(x), conv(x), rtol=1e-4, atol=1e-5)
    e = torch.zeros(0, 4, 9, 9, requires_grad=True)
    y = layer(e)
    assert y.shape == (0, 6, 9, 9)
    y.sum().backward()
    assert torch.equal(layer.values.grad, torch.zeros_like(layer.values))


def _pruned_resnet20(sparsity: float) -> nn.Module:
    torch.manual_seed(1)
    return prune.prune(models.create("resnet20"), "global_magnitude", sparsity)


@pytest.mark.parametrize("opt_name,channels_last", [("sgd", False), ("adam", True)])
def test_resnet20_training_matches_masked_torch(opt_name, channels_last):
    pruned = _pruned_resnet20(0.9)
    ref = copy.deepcopy(pruned).train()
    model = trainable(pruned).train()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    ref, model = ref.to(memory_format=fmt), model.to(memory_format=fmt)
    assert isinstance(model, SparseTrainable) and len(model.converted) == 20 and not model.skipped
    masks = {n: p.detach() != 0 for n, p in ref.named_parameters() if p.dim() > 1}
    # the trainable parameters: only the stored nonzeros plus BN / biases
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == sum(int(m.sum()) for m in masks.values()) + sum(
        p.numel() for n, p in ref.named_parameters() if n not in masks)

    def make_opt(params):
        if opt_name == "sgd":
            return torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=5e-4)
        return torch.optim.Adam(params, lr=1e-3)

    opt_r, opt_s = make_opt(ref.parameters()), make_opt(model.parameters())
    gen = torch.Generator().manual_seed(0)
    losses_r, losses_s = [], []
    for _ in range(3):
        x = torch.randn(12, 3, 32, 32, generator=gen).contiguous(memory_format=fmt)
        y = torch.randint(0, 10, (12,), generator=gen)
        loss = F.cross_entropy(ref(x), y)
        opt_r.zero_grad()
        loss.backward()
        for n, p in ref.named_parameters():  # masked torch: pruned weights get no update
            if n in masks:
                p.grad.mul_(masks[n])
        opt_r.step()
        losses_r.append(loss.item())
        loss = F.cross_entropy(model(x), y)
        opt_s.zero_grad()
        loss.backward()
        opt_s.step()
        losses_s.append(loss.item())
    np.testing.assert_allclose(losses_s, losses_r, rtol=1e-3)
    dense = model.to_torch()
    assert not any(isinstance(m, (SparseConv2d, SparseLinear)) for m in dense.modules())
    sd_r, sd_d = ref.state_dict(), dense.state_dict()
    assert list(sd_r) == list(sd_d)
    for name, m in masks.items():
        assert torch.all(sd_d[name][~m] == 0), name  # zeros stay exactly zero
        # (Adam's m / sqrt(v) turns float32 noise in near-zero gradients into full-size steps)
        assert rel(sd_d[name], sd_r[name]) <= (1e-3 if opt_name == "sgd" else 1e-2), name
    # same forward in eval mode
    model.eval(), dense.eval()
    x = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(model(x), dense(x), rtol=1e-4, atol=1e-4)


def test_checkpoint_reload(tmp_path):
    pruned = _pruned_resnet20(0.8)
    model = trainable(pruned).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x = torch.randn(8, 3, 32, 32)
    for _ in range(2):
        opt.zero_grad()
        F.cross_entropy(model(x), torch.arange(8)).backward()
        opt.step()
    torch.save(model.state_dict(), tmp_path / "sparse.pt")
    torch.save(model.to_torch().state_dict(), tmp_path / "dense.pt")
    again = trainable(pruned)
    again.load_state_dict(torch.load(tmp_path / "sparse.pt"))
    model.eval(), again.eval()
    assert torch.equal(model(x), again(x))
    plain = models.create("resnet20").eval()
    plain.load_state_dict(torch.load(tmp_path / "dense.pt"))
    torch.testing.assert_close(plain(x), model(x), rtol=1e-4, atol=1e-4)
    # a pattern of another layer with the same nnz is picked up (no stale native pattern)
    layer = again.model.layer1[0].conv1
    other = nn.Conv2d(16, 16, 3, padding=1, bias=False)
    with torch.no_grad():
        other.weight.copy_(layer.dense_weight().roll(1, dims=0) * 2)
    layer.load_state_dict(SparseConv2d(other).state_dict())
    x16 = torch.randn(2, 16, 8, 8)
    torch.testing.assert_close(layer(x16), other(x16), rtol=1e-4, atol=1e-5)


def test_dense_layers_stay_torch():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, dilation=2),
                        nn.Flatten(), nn.Linear(8 * 28 * 28, 4))
    with torch.no_grad():
        net[2].weight[0] = 0
        net[4].weight[:, ::2] = 0
    m = trainable(net)
    assert m.converted == ["4"]
    assert set(m.skipped) == {"0", "2"} and "dense" in m.skipped["0"] and "dilation" in m.skipped["2"]
    assert isinstance(m.model[0], nn.Conv2d) and isinstance(m.model[4], SparseLinear)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(m(x), net(x), rtol=1e-4, atol=1e-4)
    assert isinstance(sparse.trainable, type(trainable)) and sparse.trainable is trainable


# ---- bad input -------------------------------------------------------------------------------

@pytest.fixture
def layer():
    conv = nn.Conv2d(4, 6, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.mul_(torch.rand_like(conv.weight) < 0.5)
    return SparseConv2d(conv)


def test_bad_inputs(layer):
    with pytest.raises(TypeError, match="x: expected dtype torch.float32"):
        layer(torch.zeros(1, 4, 5, 5, dtype=torch.float64))
    with pytest.raises(TypeError, match="x: expected a torch.Tensor"):
        layer(np.zeros((1, 4, 5, 5), np.float32))
    with pytest.raises(ValueError, match=r"x: expected shape \(N, 4, H, W\)"):
        layer(torch.zeros(1, 5, 5, 5))
    with pytest.raises(ValueError, match=r"x: expected shape"):
        layer(torch.zeros(4, 5, 5))
    with pytest.raises(ValueError, match="smaller than the kernel"):
        SparseConv2d(nn.Conv2d(4, 6, 3, bias=False))(torch.zeros(1, 4, 2, 2))
    x = torch.zeros(1, 4, 5, 5)
    x[0, 1, 2, 3] = float("nan")
    with pytest.raises(ValueError, match="x: holds NaN or Inf"):
        layer(x)
    x = torch.randn(1, 4, 5, 5, requires_grad=True)
    y = layer(x)
    with pytest.raises(ValueError, match="grad_output: holds NaN or Inf"):
        y.backward(torch.full_like(y, float("inf")))
    with pytest.raises(TypeError, match="values: expected float32"):
        copy.deepcopy(layer).double()(torch.zeros(1, 4, 5, 5))


def test_bad_arguments():
    net = nn.Sequential(nn.Conv2d(3, 4, 3))
    with pytest.raises(TypeError, match="model: expected an nn.Module"):
        trainable("resnet20")
    with pytest.raises(ValueError, match="backend: expected one of"):
        trainable(net, "bsr")
    with pytest.raises(ValueError, match="threads"):
        trainable(net, threads=0)
    with pytest.raises(ValueError, match="isa"):
        trainable(net, isa="sse9")
    conv = nn.Conv2d(3, 4, 3)
    with torch.no_grad():
        conv.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="weight: holds NaN"):
        SparseConv2d(conv)
    with pytest.raises(ValueError, match="dilation"):
        SparseConv2d(nn.Conv2d(3, 4, 3, dilation=2))
    with pytest.raises(TypeError, match="linear: expected nn.Linear"):
        SparseLinear(nn.Conv2d(3, 4, 3))


def test_native_checks():
    from prunecal import _C

    ip, ix = np.array([0, 1, 2], np.int32), np.array([0, 3], np.int32)
    with pytest.raises(TypeError, match="indptr: expected dtype int32"):
        _C.TrainConv(ip.astype(np.int64), ix, [2, 1, 2, 2])
    with pytest.raises(ValueError, match="C-contiguous"):
        _C.TrainConv(np.array([0, 9, 1, 9, 2], np.int32)[::2], ix, [2, 1, 2, 2])
    with pytest.raises(ValueError, match="indices: column out of range"):
        _C.TrainConv(ip, np.array([0, 4], np.int32), [2, 1, 2, 2])
    with pytest.raises(ValueError, match="indptr"):
        _C.TrainConv(np.array([0, 2, 1], np.int32), ix, [2, 1, 2, 2])
    with pytest.raises(ValueError, match="strictly increasing"):
        _C.TrainConv(np.array([0, 2], np.int32), np.array([1, 1], np.int32), [1, 1, 2, 2])
    with pytest.raises(ValueError, match="groups"):
        _C.TrainConv(ip, ix, [2, 1, 2, 2], 3)
    tc = _C.TrainConv(ip, ix, [2, 1, 2, 2])
    x, v, y = torch.zeros(1, 1, 4, 4), torch.ones(2), torch.zeros(1, 2, 3, 3)
    with pytest.raises(ValueError, match="x: null address"):
        tc._forward_ptr(0, 1, 1, 4, 4, v.data_ptr(), y.data_ptr(), 1, 0, 1)
    with pytest.raises(ValueError, match="input channels"):
        tc._forward_ptr(x.data_ptr(), 1, 2, 4, 4, v.data_ptr(), y.data_ptr(), 1, 0, 1)
    with pytest.raises(ValueError, match="threads"):
        tc._forward_ptr(x.data_ptr(), 1, 1, 4, 4, v.data_ptr(), y.data_ptr(), 1, 0, 0)
    with pytest.raises(ValueError, match="stride"):
        tc._forward_ptr(x.data_ptr(), 1, 1, 4, 4, v.data_ptr(), y.data_ptr(), 0, 0, 1)
    with pytest.raises(ValueError, match="isa"):
        tc._forward_ptr(x.data_ptr(), 1, 1, 4, 4, v.data_ptr(), y.data_ptr(), 1, 0, 1, "mmx")
    tc._forward_ptr(x.data_ptr(), 1, 1, 4, 4, v.data_ptr(), y.data_ptr(), 1, 0, 1)
    assert tc.output_hw(4, 4, 1, 0) == (3, 3) and tc.nnz == 2 and tc.shape == (2, 1, 2, 2)


def test_isa_env_switch(run_python):
    from prunecal import _C

    if _C.train_isa() != "avx512":
        pytest.skip("CPU without AVX-512")
    out = run_python("from prunecal import _C; print(_C.train_isa())", PRUNECAL_NO_AVX512="1").stdout.strip()
    assert out == ("avx2" if "avx2" in ISAS else "generic")


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("n,c_in,c_out,hw,stride,threads", [(3, 16, 16, 8, 1, 1), (64, 12, 24, 9, 2, 2),
                                                            (1, 5, 3, 7, 1, 2), (4, 8, 16, 11, 2, 1)])
def test_channels_last(isa, n, c_in, c_out, hw, stride, threads):
    gen = torch.Generator().manual_seed(n)
    wt = pruned_weight((c_out, c_in, 3, 3), 0.3, gen)
    conv = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(wt)
    layer = SparseConv2d(conv, threads=threads, isa=isa)
    x = torch.randn(n, c_in, hw, hw, generator=gen).contiguous(memory_format=torch.channels_last)
    xr, wr = x.clone().requires_grad_(), wt.clone().requires_grad_()
    yr = F.conv2d(xr, wr, stride=stride, padding=1)
    gy = torch.randn(yr.shape, generator=gen).contiguous(memory_format=torch.channels_last)
    yr.backward(gy)
    xs = x.clone().requires_grad_()
    ys = layer(xs)
    assert ys.is_contiguous(memory_format=torch.channels_last)
    ys.backward(gy)
    assert xs.grad.is_contiguous(memory_format=torch.channels_last)
    assert rel(ys, yr) <= 1e-4 and rel(xs.grad, xr.grad) <= 1e-4
    assert rel(layer.values.grad, wr.grad.reshape(c_out, -1)[wt.reshape(c_out, -1) != 0]) <= 1e-4
    # a plain-contiguous gradient for a channels_last output is fine too
    xs.grad = None
    layer.values.grad = None
    layer(xs).backward(gy.contiguous())
    assert rel(xs.grad, xr.grad) <= 1e-4
