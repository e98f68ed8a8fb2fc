"""Generated (JIT) sparse conv kernels (csrc/jit_conv.cpp) against torch and against the fixed
kernels (PRUNECAL_NO_JIT=1 in another process): same results, bit for bit."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from prunecal.sparse.formats import CSRWeight
from prunecal.sparse.ops import sparse_conv2d
from test_kernels_conv import _reference, assert_close_scaled, sparse_weight


def jit_kernels(w: torch.Tensor, h: int, width: int, stride: int, pad: int, dil: int = 1) -> tuple[int, int]:
    return CSRWeight.from_dense(w).packed().jit_kernels(h, width, stride, pad, dil)


JIT_ON = jit_kernels(torch.ones(4, 4, 3, 3), 16, 16, 1, 1)[0] > 0
needs_jit = pytest.mark.skipif(not JIT_ON, reason="no AVX-512 generated kernels here (CPU, PRUNECAL_ISA, PRUNECAL_NO_JIT; the AVX2 ones: tests/test_isa.py)")

CIFAR = [(16, 16, 32, 1), (32, 32, 16, 1), (64, 64, 8, 1), (16, 32, 32, 2), (32, 64, 16, 2)]


@needs_jit
@pytest.mark.parametrize("cin,cout,h,s", CIFAR)
def test_cifar_shapes_use_generated_kernels_of_16_lanes(cin, cout, h, s):
    groups, vec = jit_kernels(sparse_weight((cout, cin, 3, 3), 0.9), h, h, s, 1)
    assert vec == 16 and groups == -(-cout // 31)


@needs_jit
def test_no_generated_kernels_where_tiles_do_not_fit():
    assert jit_kernels(sparse_weight((8, 8, 3, 3), 0.5), 7, 7, 1, 1) == (0, 0)  # 7-wide output


@st.composite
def jit_cases(draw):
    k = draw(st.sampled_from([1, 3, 5]))
    stride = draw(st.sampled_from([1, 2]))
    pad = draw(st.integers(0, k // 2 + 1))
    dil = draw(st.sampled_from([1, 1, 2]))
    wo = draw(st.sampled_from([8, 16, 24, 32]))  # output width: whole 8-lane slots
    w_in = (wo - 1) * stride + dil * (k - 1) + 1 - 2 * pad
    h_in = draw(st.integers(max(1, dil * (k - 1) + 1 - 2 * pad), 12))
    if w_in < 1:
        w_in, pad = wo * stride, (dil * (k - 1)) // 2  # (keeps the case valid)
    cin, cout = draw(st.integers(1, 20)), draw(st.integers(1, 70))
    return dict(k=k, stride=stride, pad=pad, dil=dil, h=h_in, w=w_in, cin=cin, cout=cout,
                n=draw(st.integers(1, 5)), sparsity=draw(st.sampled_from([0.0, 0.5, 0.9, 0.99])),
                bias=draw(st.booleans()), relu=draw(st.booleans()), threads=draw(st.sampled_from([1, 2, 3])),
                seed=draw(st.integers(0, 2**16)))


@needs_jit
@settings(max_examples=60, deadline=None)
@given(c=jit_cases())
def test_generated_kernels_match_torch(c):
    g = torch.Generator().manual_seed(c["seed"])
    x = torch.randn(c["n"], c["cin"], c["h"], c["w"], generator=g)
    w = sparse_weight((c["cout"], c["cin"], c["k"], c["k"]), c["sparsity"], g)
    b = torch.randn(c["cout"], generator=g) if c["bias"] else None
    assert jit_kernels(w, c["h"], c["w"], c["stride"], c["pad"], c["dil"])[0] > 0
    y = sparse_conv2d(x, CSRWeight.from_dense(w), b, c["stride"], c["pad"], c["dil"], relu=c["relu"],
                      threads=c["threads"])
    ref, scale = _reference(x, w, b, c["stride"], c["pad"], c["dil"], 1, c["relu"])
    assert_close_scaled(y, ref, scale)


@needs_jit
@pytest.mark.parametrize("n", [1, 3, 9])
def test_generated_kernels_threads_bitwise_identical(n):
    x = torch.randn(n, 24, 16, 16)
    W = CSRWeight.from_dense(sparse_weight((70, 24, 3, 3), 0.8))  # 3 channel groups
    b = torch.randn(70)
    ys = [sparse_conv2d(x, W, b, 1, 1, relu=True, threads=t) for t in (1, 2, 3)]
    assert torch.equal(ys[0], ys[1]) and torch.equal(ys[0], ys[2])


@needs_jit
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_generated_kernels_leave_nonfinite_images_to_the_dense_path(bad):
    x = torch.randn(3, 16, 16, 16)
    x[1, 5, 7, 9] = bad
    w = sparse_weight((40, 16, 3, 3), 0.9)
    y = sparse_conv2d(x, CSRWeight.from_dense(w), None, 1, 1, relu=True, threads=1)
    ref = F.relu(F.conv2d(x, w, None, 1, 1))
    assert torch.equal(torch.isnan(y), torch.isnan(ref))
    torch.testing.assert_close(y[0], ref[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(y[2], ref[2], rtol=1e-4, atol=1e-4)


_NO_JIT_SCRIPT = """
import sys, numpy as np, torch
from prunecal.sparse.formats import CSRWeight
from prunecal.sparse.ops import sparse_conv2d
d = np.load(sys.argv[1])
for i in range(int(d["count"])):
    w = CSRWeight.from_dense(torch.from_numpy(d[f"w{i}"]))
    assert w.packed().jit_kernels(*d[f"x{i}"].shape[2:], int(d[f"s{i}"]), 1, 1) == (0, 0)
    y = sparse_conv2d(torch.from_numpy(d[f"x{i}"]), w, torch.from_numpy(d[f"b{i}"]), int(d[f"s{i}"]), 1,
                      relu=True, threads=1)
    np.save(f"{sys.argv[2]}_{i}.npy", y.numpy())
"""


@needs_jit
def test_generated_kernels_bitwise_equal_to_fixed_kernels(tmp_path, run_python):
    """Same FMA order per output value (CSR order, then bias, then ReLU) as the fixed kernels."""
    g = torch.Generator().manual_seed(5)
    shapes = CIFAR + [(8, 100, 8, 1), (3, 16, 32, 1), (24, 40, 24, 1)]
    arrays = {"count": np.array(len(shapes))}
    for i, (cin, cout, h, s) in enumerate(shapes):
        arrays[f"x{i}"] = torch.randn(2, cin, h, h, generator=g).numpy()
        arrays[f"w{i}"] = sparse_weight((cout, cin, 3, 3), 0.85, g).numpy()
        arrays[f"b{i}"] = torch.randn(cout, generator=g).numpy()
        arrays[f"s{i}"] = np.array(s)
    np.savez(tmp_path / "in.npz", **arrays)
    run_python(_NO_JIT_SCRIPT, str(tmp_path / "in.npz"), str(tmp_path / "y"), PRUNECAL_NO_JIT="1")
    for i, (cin, cout, h, s) in enumerate(shapes):
        w = torch.from_numpy(arrays[f"w{i}"])
        assert jit_kernels(w, h, h, s, 1)[0] > 0
        y = sparse_conv2d(torch.from_numpy(arrays[f"x{i}"]), CSRWeight.from_dense(w),
                          torch.from_numpy(arrays[f"b{i}"]), s, 1, relu=True, threads=1)
        assert torch.equal(y, torch.from_numpy(np.load(tmp_path / f"y_{i}.npy"))), (cin, cout, h, s)


_PLAN_NO_JIT_SCRIPT = """
import sys, numpy as np, torch
from prunecal import models, _C
from prunecal.prune import prune
from prunecal.sparse.plan import compile_plan
assert not _C.jit_available()
torch.manual_seed(1)
m = prune(models.create("resnet20"), "global_magnitude", 0.9, keep_first_conv=True).eval()
x = torch.from_numpy(np.load(sys.argv[1]))
with torch.no_grad():
    p = compile_plan(m, "csr", threads=2)
    layout = p.plan_for((3, 32, 32)).describe()
    for threads, mode in ((1, "auto"), (2, "op"), (2, "image")):
        p.threads, p.mode = threads, mode
        np.save(f"{sys.argv[2]}_{threads}{mode}.npy", p(x).numpy())
print("ALIGNED" if any(",A16" in line for line in layout) else "PLAIN")
"""


@needs_jit
def test_plan_with_generated_kernels_bitwise_equal_to_fixed_kernels(tmp_path, run_python):
    """A whole ResNet-20 plan: generated kernels (plain layout, residual and ReLU in the generated
    epilogue) against the fixed AVX-512 tiles (aligned layout with shifted copies) in a
    PRUNECAL_NO_JIT process; NaN / Inf images included, every run mode."""
    from prunecal import models
    from prunecal.prune import prune
    from prunecal.sparse.plan import compile_plan

    torch.manual_seed(1)
    m = prune(models.create("resnet20"), "global_magnitude", 0.9, keep_first_conv=True).eval()
    x = torch.randn(5, 3, 32, 32)
    x[1, 2, 3, 4] = float("nan")
    x[3, 0, 31, 31] = float("inf")
    np.save(tmp_path / "x.npy", x.numpy())
    done = run_python(_PLAN_NO_JIT_SCRIPT, str(tmp_path / "x.npy"), str(tmp_path / "y"), PRUNECAL_NO_JIT="1")
    with torch.no_grad():
        p = compile_plan(m, "csr", threads=2)
        convs = [line for line in p.plan_for((3, 32, 32)).describe() if line.startswith("conv")]
        assert convs and all("jit" in line for line in convs)
        for threads, mode in ((1, "auto"), (2, "op"), (2, "image")):
            p.threads, p.mode = threads, mode
            y = p(x)
            ref = torch.from_numpy(np.load(tmp_path / f"y_{threads}{mode}.npy"))
            assert torch.equal(torch.isnan(y), torch.isnan(ref))
            assert torch.isnan(y[1]).all() and torch.isnan(y[3]).all()
            ok = [0, 2, 4]
            assert torch.equal(y[ok], ref[ok]), (threads, mode, done.stdout)


@needs_jit
def test_generated_kernels_for_one_nonzero_per_tap_and_many_channels():
    """The code-size bound holds in the worst case (every tap used by one channel only, two-half
    loads of 8-wide rows, residual epilogue): kernels are made, results match torch."""
    cout, cin = 31, 256  # one group of 2,304 nonzeros on 2,304 taps
    w = torch.zeros(cout, cin, 3, 3)
    for ci in range(cin):
        for t in range(9):
            w[(ci * 9 + t) % cout, ci, t // 3, t % 3] = float(ci + t) / 200 - 1
    assert jit_kernels(w, 8, 8, 1, 1) == (1, 16)
    x = torch.randn(2, cin, 8, 8)
    y = sparse_conv2d(x, CSRWeight.from_dense(w), None, 1, 1, threads=1)
    torch.testing.assert_close(y, F.conv2d(x, w, None, 1, 1), rtol=1e-4, atol=1e-4)
