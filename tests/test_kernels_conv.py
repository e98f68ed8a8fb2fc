"""Native sparse conv2d vs torch.nn.functional.conv2d on random shapes, sparsities and settings."""
from __future__ import annotations

import itertools
import platform

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from prunecal._native import cpu_features
from prunecal.sparse.formats import BSRWeight, CSRWeight
from prunecal.sparse.ops import sparse_conv2d

KINDS = ["csr", "bsr4", "bsr8"]


def sparse_weight(shape, sparsity: float, generator: torch.Generator | None = None) -> torch.Tensor:
    w = torch.randn(*shape, generator=generator)
    w[torch.rand(*shape, generator=generator) < sparsity] = 0.0
    return w


def make(w: torch.Tensor, kind: str):
    return CSRWeight.from_dense(w) if kind == "csr" else BSRWeight.from_dense(w, int(kind[3:]))


def assert_close_scaled(y: torch.Tensor, ref: torch.Tensor, scale: torch.Tensor) -> None:
    """|y - ref| <= 1e-4 * |ref| + 2e-5 * scale + 1e-6, scale = the same op on |x|, |w|
    (float32 summation-order error grows with it); NaN must match NaN."""
    assert y.shape == ref.shape and y.dtype == torch.float32
    torch.testing.assert_close(torch.isnan(y), torch.isnan(ref))
    ok = ~torch.isnan(ref)
    err = (y[ok] - ref[ok]).abs()
    tol = 1e-4 * ref[ok].abs() + 2e-5 * scale[ok] + 1e-6
    bad = err > tol
    assert not bad.any(), f"max err {err.max().item():.3g}, {int(bad.sum())} elements out of tolerance"


ISAS = ["auto", "generic"]


def _reference(x, w, b, s, p, d, g, relu):
    ref = F.conv2d(x, w, b, s, p, d, g)
    scale = F.conv2d(x.abs(), w.abs(), None if b is None else b.abs(), s, p, d, g)
    return (F.relu(ref) if relu else ref), scale


@st.composite
def conv_cases(draw):
    groups_kind = draw(st.sampled_from(["1", "depthwise", "general"]))
    if groups_kind == "1":
        g = 1
        cin, cout = draw(st.integers(1, 12)), draw(st.integers(1, 19))
    elif groups_kind == "depthwise":
        cin = cout = g = draw(st.integers(1, 12))
    else:
        g = draw(st.integers(2, 4))
        cin, cout = g * draw(st.integers(1, 4)), g * draw(st.integers(1, 5))
    k = draw(st.sampled_from([(1, 1), (3, 3), (5, 5), (1, 3), (3, 2)]))
    s, p, d = draw(st.integers(1, 3)), draw(st.integers(0, 2)), draw(st.integers(1, 2))
    h, w = draw(st.integers(1, 19)), draw(st.integers(1, 19))
    assume(h + 2 * p - d * (k[0] - 1) - 1 >= 0 and w + 2 * p - d * (k[1] - 1) - 1 >= 0)
    return dict(
        n=draw(st.sampled_from([1, 1, 2, 3, 9])), cin=cin, cout=cout, g=g, k=k, s=s, p=p, d=d, h=h, w=w,
        sparsity=draw(st.sampled_from([0.0, 0.5, 0.8, 0.95, 1.0])), bias=draw(st.booleans()),
        relu=draw(st.booleans()), threads=draw(st.sampled_from([1, 2])), kind=draw(st.sampled_from(KINDS)),
        isa=draw(st.sampled_from(ISAS)), seed=draw(st.integers(0, 2**20)),
    )


@settings(max_examples=120, deadline=None)
@given(c=conv_cases())
def test_conv_matches_torch(c):
    gen = torch.Generator().manual_seed(c["seed"])
    x = torch.randn(c["n"], c["cin"], c["h"], c["w"], generator=gen)
    w = sparse_weight((c["cout"], c["cin"] // c["g"], *c["k"]), c["sparsity"], gen)
    b = torch.randn(c["cout"], generator=gen) if c["bias"] else None
    y = sparse_conv2d(x, make(w, c["kind"]), b, c["s"], c["p"], c["d"], c["g"], relu=c["relu"],
                      threads=c["threads"], isa=c["isa"])
    ref, scale = _reference(x, w, b, c["s"], c["p"], c["d"], c["g"], c["relu"])
    assert_close_scaled(y, ref, scale)


RESNET_SHAPES = [  # (C_in, C_out, H, stride) of CIFAR ResNet-56 3x3 convs
    (16, 16, 32, 1), (32, 32, 16, 1), (64, 64, 8, 1), (16, 32, 32, 2), (32, 64, 16, 2), (3, 16, 32, 1),
]


@pytest.mark.parametrize("cin,cout,h,s", RESNET_SHAPES)
@pytest.mark.parametrize("kind", KINDS)
def test_resnet_shapes(cin, cout, h, s, kind):
    x = torch.randn(2, cin, h, h)
    w = sparse_weight((cout, cin, 3, 3), 0.7)
    b = torch.randn(cout)
    y = sparse_conv2d(x, make(w, kind), b, s, 1, relu=True, threads=2)
    ref, scale = _reference(x, w, b, s, 1, 1, 1, True)
    assert_close_scaled(y, ref, scale)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n", [1, 3, 9])
def test_threads_bitwise_identical(kind, n):
    x = torch.randn(n, 16, 12, 12)
    W = make(sparse_weight((20, 16, 3, 3), 0.6), kind)
    ys = [sparse_conv2d(x, W, None, 1, 1, threads=t) for t in (1, 2, 3)]
    assert torch.equal(ys[0], ys[1]) and torch.equal(ys[0], ys[2])


def test_default_threads_from_torch():
    x = torch.randn(2, 4, 6, 6)
    W = make(sparse_weight((4, 4, 3, 3), 0.5), "csr")
    assert torch.equal(sparse_conv2d(x, W, threads=None), sparse_conv2d(x, W, threads=1))


def test_isa_paths_agree():
    x = torch.randn(3, 8, 11, 13)
    w = sparse_weight((10, 8, 3, 3), 0.5)
    for kind in KINDS:
        a = sparse_conv2d(x, make(w, kind), None, 2, 1, isa="auto")
        g = sparse_conv2d(x, make(w, kind), None, 2, 1, isa="generic")
        torch.testing.assert_close(a, g, rtol=1e-5, atol=1e-5)


def test_cpu_features_reported():
    f = cpu_features()
    assert f["isa"] in ("avx2", "neon", "generic")
    from prunecal import _C

    forced_generic = _C.isa_path() == "generic"  # PRUNECAL_ISA=generic (tests/test_isa.py)
    # NEON on every AArch64 build (baseline ISA), AVX2+FMA where the x86-64 CPU has it
    assert f["isa"] == ("generic" if forced_generic else "neon" if f["neon_compiled"]
                        else "avx2" if f["avx2_fma"] else "generic")
    assert f["neon_compiled"] == (platform.machine().lower() in ("aarch64", "arm64"))


@pytest.mark.parametrize("kind", KINDS)
def test_empty_batch(kind):
    W = make(sparse_weight((6, 3, 3, 3), 0.5), kind)
    y = sparse_conv2d(torch.randn(0, 3, 10, 10), W, torch.randn(6), 2, 1)
    ref = F.conv2d(torch.randn(0, 3, 10, 10), torch.from_numpy(W.to_dense()), torch.randn(6), 2, 1)
    assert y.shape == ref.shape == (0, 6, 5, 5) and y.dtype == torch.float32


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("relu", [False, True])
def test_all_zero_weight_gives_bias(kind, relu):
    W = make(torch.zeros(5, 3, 3, 3), kind)
    assert W.nnz == 0
    b = torch.randn(5)
    y = sparse_conv2d(torch.randn(2, 3, 7, 7), W, b, 1, 1, relu=relu)
    expect = b.view(1, 5, 1, 1).expand(2, 5, 7, 7)
    torch.testing.assert_close(y, F.relu(expect) if relu else expect, rtol=0, atol=0)
    assert torch.equal(sparse_conv2d(torch.randn(2, 3, 7, 7), W, None, 1, 1), torch.zeros(2, 5, 7, 7))


def test_unbatched_input():
    x = torch.randn(4, 9, 9)
    w = sparse_weight((6, 4, 3, 3), 0.5)
    y = sparse_conv2d(x, make(w, "csr"), None, 1, 1)
    torch.testing.assert_close(y, F.conv2d(x, w, None, 1, 1), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("layout", ["channels_last", "transposed", "sliced"])
def test_non_contiguous_input(layout):
    base = torch.randn(2, 6, 10, 10)
    x = {"channels_last": base.contiguous(memory_format=torch.channels_last),
         "transposed": base.transpose(2, 3),
         "sliced": torch.randn(2, 12, 10, 10)[:, ::2]}[layout]
    assert not x.is_contiguous()
    w = sparse_weight((7, 6, 3, 3), 0.5)
    y = sparse_conv2d(x, make(w, "csr"), None, 1, 1)
    assert y.is_contiguous()
    torch.testing.assert_close(y, F.conv2d(x, w, None, 1, 1), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("n", [1, 9])
def test_nonfinite_input_propagates_like_torch(kind, bad, n):
    """Torch's dense conv gives NaN wherever a NaN/Inf meets a zero weight (NaN*0, Inf*0);
    the sparse kernels must not silently skip those products."""
    x = torch.randn(n, 8, 10, 10)
    x[0, 3, 4, 5] = bad
    x[n - 1, 0, 0, 0] = bad
    w = sparse_weight((12, 8, 3, 3), 0.7)
    b = torch.randn(12)
    for relu in (False, True):
        y = sparse_conv2d(x, make(w, kind), b, 1, 1, relu=relu, threads=2)
        ref = F.conv2d(x, w, b, 1, 1)
        ref = F.relu(ref) if relu else ref
        torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-4, equal_nan=True)
    # images without NaN/Inf are unaffected in a mixed batch
    if n > 2:
        assert torch.isfinite(y[1:n - 1]).all()


def test_nan_weight_propagates():
    w = sparse_weight((4, 3, 3, 3), 0.5)
    w[1, 0, 1, 1] = float("nan")
    x = torch.randn(1, 3, 6, 6)
    torch.testing.assert_close(sparse_conv2d(x, make(w, "csr"), None, 1, 1), F.conv2d(x, w, None, 1, 1),
                               equal_nan=True, rtol=1e-4, atol=1e-5)


def test_weight_object_reused_across_geometries():
    W = make(sparse_weight((8, 4, 3, 3), 0.5), "bsr4")
    w = torch.from_numpy(W.to_dense())
    for h, s, p, d in [(9, 1, 1, 1), (12, 2, 0, 1), (9, 1, 2, 2), (9, 1, 1, 1), (30, 3, 1, 1)]:
        x = torch.randn(2, 4, h, h + 1)
        torch.testing.assert_close(sparse_conv2d(x, W, None, s, p, d), F.conv2d(x, w, None, s, p, d),
                                   rtol=1e-4, atol=1e-5)


def test_stride2_phase_split_grid():
    """Stride 2 packs each input row in one pass (even / odd columns to two phase planes): every
    width parity, padding 0-3 and dilation 1-2 against torch."""
    torch.manual_seed(0)
    for width, height, pad, dil, k in itertools.product([1, 2, 5, 8, 9, 16, 17], [1, 3, 8], [0, 1, 2, 3], [1, 2], [1, 3]):
        if height + 2 * pad < dil * (k - 1) + 1 or width + 2 * pad < dil * (k - 1) + 1:
            continue
        w = torch.randn(5, 3, k, k)
        w[torch.rand(w.shape) < 0.5] = 0
        x = torch.randn(2, 3, height, width)
        y = sparse_conv2d(x, CSRWeight.from_dense(w), None, 2, pad, dil, threads=1)
        torch.testing.assert_close(y, F.conv2d(x, w, None, 2, pad, dil), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("stride", [1, 2, 3])
@pytest.mark.parametrize("width", [7, 8, 10, 17])
def test_nonfinite_found_anywhere_in_the_row(stride, width):
    """The NaN/Inf check runs while the image is copied into its planes (vector body and scalar
    tail of each row, both column parities at stride 2): a bad value at any column is seen."""
    w = sparse_weight((4, 3, 3, 3), 0.8)
    for col in sorted({0, 1, width // 2, width - 2, width - 1}):
        for bad in (float("nan"), float("inf")):
            x = torch.randn(2, 3, 6, width)
            x[1, 2, 5, col] = bad
            y = sparse_conv2d(x, make(w, "csr"), None, stride, 1, threads=1)
            ref = F.conv2d(x, w, None, stride, 1)
            assert torch.equal(torch.isnan(y), torch.isnan(ref)), (col, bad)
            assert torch.isfinite(y[0]).all()


FIXED_PACK_SHAPES = [  # (stride, H, W) with a fixed-shape AVX-512 image packer (csrc/pack_fixed.cpp)
    (1, 8, 8), (1, 7, 8), (1, 5, 16), (1, 3, 32), (2, 6, 16), (2, 4, 32),
]


@pytest.mark.parametrize("stride,h,width", FIXED_PACK_SHAPES)
def test_fixed_packer_sees_nonfinite_everywhere(stride, h, width):
    """The fixed-shape packers (two 8-wide rows per vector, phase splits by permutes) check every
    value: NaN/Inf at each row and column gives torch's NaN pattern, the other image stays finite."""
    w = sparse_weight((4, 3, 3, 3), 0.8)
    W = make(w, "csr")
    for row in range(h):
        for col in range(width):
            x = torch.randn(2, 3, h, width)
            x[1, (row + col) % 3, row, col] = float("nan") if (row + col) % 2 else float("inf")
            y = sparse_conv2d(x, W, None, stride, 1, threads=1)
            ref = F.conv2d(x, w, None, stride, 1)
            assert torch.equal(torch.isnan(y), torch.isnan(ref)), (row, col)
            assert torch.isfinite(y[0]).all()


_GENERAL_PACK_SCRIPT = """
import sys, numpy as np, torch
from prunecal import _C
from prunecal.sparse.formats import CSRWeight
from prunecal.sparse.ops import sparse_conv2d
assert not _C.plan_avx512_active()
d = np.load(sys.argv[1])
for key in sorted(k for k in d.files if k.startswith("x")):
    i = key[1:]
    y = sparse_conv2d(torch.from_numpy(d[key]), CSRWeight.from_dense(torch.from_numpy(d["w" + i])), None,
                      int(d["s" + i]), 1, threads=1)
    np.save(sys.argv[2] + "_" + i + ".npy", y.numpy())
"""


def test_fixed_packer_matches_general_packer(tmp_path, run_python):
    """The same outputs with the fixed-shape packers and with the row-by-row packing
    (PRUNECAL_NO_AVX512=1 in another process turns the fixed ones off)."""
    import numpy as np

    from prunecal import _C

    if not _C.plan_avx512_active():
        pytest.skip("this CPU (or PRUNECAL_NO_AVX512) does not use the AVX-512 packers")
    g = torch.Generator().manual_seed(3)
    arrays = {}
    for i, (s, h, width) in enumerate(FIXED_PACK_SHAPES):
        arrays[f"x{i}"] = torch.randn(3, 5, h, width, generator=g).numpy()
        arrays[f"w{i}"] = sparse_weight((6, 5, 3, 3), 0.7, g).numpy()
        arrays[f"s{i}"] = np.array(s)
    np.savez(tmp_path / "in.npz", **arrays)
    run_python(_GENERAL_PACK_SCRIPT, str(tmp_path / "in.npz"), str(tmp_path / "y"), PRUNECAL_NO_AVX512="1")
    for i, (s, _, _) in enumerate(FIXED_PACK_SHAPES):
        # the convolution kernels differ too (AVX2 vs AVX-512 tiles): equal up to float rounding
        y = sparse_conv2d(torch.from_numpy(arrays[f"x{i}"]), CSRWeight.from_dense(torch.from_numpy(arrays[f"w{i}"])),
                          None, s, 1, threads=1)
        ref = torch.from_numpy(np.load(tmp_path / f"y_{i}.npy"))
        torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)


def test_non_contiguous_and_strided_bias():
    """x and bias go to the kernels by address: a bias that needs a contiguous copy (strided view)
    and an x that is a view with a storage offset must give torch's result."""
    w = sparse_weight((6, 4, 3, 3), 0.5)
    base = torch.randn(3, 4, 9, 9)
    x = base[1:]  # storage offset
    bias = torch.randn(12)[::2]  # non-contiguous
    for _ in range(3):
        y = sparse_conv2d(x, make(w, "csr"), bias, 1, 1, threads=2)
        torch.testing.assert_close(y, F.conv2d(x, w, bias, 1, 1), rtol=1e-4, atol=1e-4)


def test_remembered_call_checks_still_reject_bad_parameters():
    """sparse_conv2d remembers the checks of a (weight, input shape, int parameters) call; a later
    call with bool / float parameters, other channels or another shape is still checked."""
    import pickle

    w = make(sparse_weight((6, 4, 3, 3), 0.5), "csr")
    x = torch.randn(2, 4, 8, 8)
    ref = sparse_conv2d(x, w, None, 1, 1)
    assert torch.equal(sparse_conv2d(x, w, None, 1, 1), ref)  # remembered
    with pytest.raises(TypeError):
        sparse_conv2d(x, w, None, True, 1)
    with pytest.raises(TypeError):
        sparse_conv2d(x, w, None, 1, 1, groups=1.0)
    with pytest.raises(ValueError, match="input channels"):
        sparse_conv2d(torch.randn(2, 5, 8, 8), w, None, 1, 1)
    assert sparse_conv2d(torch.randn(3, 4, 6, 6), w, None, 2, 1).shape == (3, 6, 3, 3)
    w2 = pickle.loads(pickle.dumps(w))  # (the remembered calls hold native objects: not pickled)
    assert torch.equal(sparse_conv2d(x, w2, None, 1, 1), ref)


def test_negative_bit_tensors_are_read_by_value():
    """torch's lazily negated tensors (negative bit, e.g. complex.conj().imag) can be contiguous;
    their memory holds -v, so the kernels must get the resolved values (x and bias)."""
    w = sparse_weight((3, 4, 3, 3), 0.5)
    x = torch._neg_view(torch.randn(2, 4, 8, 8))
    bias = torch._neg_view(torch.randn(3))
    assert x.is_neg() and x.is_contiguous() and bias.is_neg() and bias.is_contiguous()
    y = sparse_conv2d(x, make(w, "csr"), bias, 1, 1, threads=1)
    torch.testing.assert_close(y, F.conv2d(x, w, bias, 1, 1), rtol=1e-4, atol=1e-4)
    strided = torch.tensor([2.0 + 3.0j, 1.0 - 1.0j, 0.5 + 0.25j]).conj().imag  # negative bit, strided
    y = sparse_conv2d(x, make(w, "csr"), strided, 1, 1, threads=1)
    torch.testing.assert_close(y, F.conv2d(x, w, strided, 1, 1), rtol=1e-4, atol=1e-4)
