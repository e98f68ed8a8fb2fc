"""Native sparse linear vs torch.nn.functional.linear (small-batch dot path and the
batch >= 8 path that runs as a 1x1 convolution over the transposed batch)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from prunecal.sparse.formats import BSRWeight, CSRWeight
from prunecal.sparse.ops import sparse_linear

KINDS = ["csr", "bsr4", "bsr8"]


def _weight(shape, sparsity, gen=None):
    w = torch.randn(*shape, generator=gen)
    w[torch.rand(*shape, generator=gen) < sparsity] = 0.0
    return w


def _make(w, kind):
    return CSRWeight.from_dense(w) if kind == "csr" else BSRWeight.from_dense(w, int(kind[3:]))


def _check(y, ref, scale):
    assert y.shape == ref.shape and y.dtype == torch.float32
    torch.testing.assert_close(torch.isnan(y), torch.isnan(ref))
    ok = ~torch.isnan(ref)
    err = (y[ok] - ref[ok]).abs()
    assert (err <= 1e-4 * ref[ok].abs() + 2e-5 * scale[ok] + 1e-6).all(), f"max err {err.max()}"


@settings(max_examples=80, deadline=None)
@given(n=st.sampled_from([1, 2, 5, 7, 8, 9, 20, 64]), n_in=st.integers(1, 70), n_out=st.integers(1, 40),
       sparsity=st.sampled_from([0.0, 0.5, 0.9, 1.0]), bias=st.booleans(), relu=st.booleans(),
       threads=st.sampled_from([1, 2]), kind=st.sampled_from(KINDS), isa=st.sampled_from(["auto", "generic"]),
       seed=st.integers(0, 2**20))
def test_linear_matches_torch(n, n_in, n_out, sparsity, bias, relu, threads, kind, isa, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, n_in, generator=gen)
    w = _weight((n_out, n_in), sparsity, gen)
    b = torch.randn(n_out, generator=gen) if bias else None
    y = sparse_linear(x, _make(w, kind), b, relu=relu, threads=threads, isa=isa)
    ref = F.linear(x, w, b)
    ref = F.relu(ref) if relu else ref
    _check(y, ref, F.linear(x.abs(), w.abs(), None if b is None else b.abs()))


def test_leading_dims_and_1d():
    w = _weight((6, 10), 0.5)
    W = _make(w, "csr")
    x = torch.randn(2, 3, 4, 10)
    torch.testing.assert_close(sparse_linear(x, W), F.linear(x, w), rtol=1e-4, atol=1e-5)
    v = torch.randn(10)
    torch.testing.assert_close(sparse_linear(v, W), F.linear(v, w), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_empty_batch_and_zero_weight(kind):
    b = torch.randn(5)
    W = _make(torch.zeros(5, 7), kind)
    assert sparse_linear(torch.randn(0, 7), W, b).shape == (0, 5)
    for n in (1, 12):
        torch.testing.assert_close(sparse_linear(torch.randn(n, 7), W, b), b.expand(n, 5), rtol=0, atol=0)


@pytest.mark.parametrize("n", [1, 3, 8, 17])
def test_threads_bitwise_identical(n):
    x = torch.randn(n, 300)
    W = _make(_weight((130, 300), 0.8), "csr")
    assert torch.equal(sparse_linear(x, W, threads=1), sparse_linear(x, W, threads=2))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n", [1, 4, 12])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_propagates_like_torch(kind, n, bad):
    x = torch.randn(n, 32)
    x[0, 3] = bad
    w = _weight((9, 32), 0.6)
    w[:, 3] = 0.0  # the bad feature meets only zero weights: torch still gives NaN
    b = torch.randn(9)
    y = sparse_linear(x, _make(w, kind), b)
    ref = F.linear(x, w, b)
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-5, equal_nan=True)
    assert torch.isnan(y[0]).all()
    if n > 1:
        assert torch.isfinite(y[1:]).all()


def test_non_contiguous_input():
    x = torch.randn(20, 12).t()  # (12, 20) view
    w = _weight((5, 20), 0.5)
    torch.testing.assert_close(sparse_linear(x, _make(w, "bsr4")), F.linear(x, w), rtol=1e-4, atol=1e-5)
