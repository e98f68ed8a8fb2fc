"""CSR / BSR formats: exact round trips, sizes, save/load, validation of hand-built arrays."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prunecal.sparse.formats import BSRWeight, CSRWeight, load_weight


def _random_weight(rng: np.random.Generator, shape, sparsity: float) -> np.ndarray:
    w = rng.standard_normal(shape).astype(np.float32)
    w[rng.random(shape) < sparsity] = 0.0
    return w


shapes = st.one_of(
    st.tuples(st.integers(1, 13), st.integers(1, 6), st.integers(1, 3), st.integers(1, 3)),
    st.tuples(st.integers(1, 13), st.integers(1, 40)),
)


@settings(max_examples=40, deadline=None)
@given(shape=shapes, sparsity=st.sampled_from([0.0, 0.3, 0.7, 0.95, 1.0]), seed=st.integers(0, 2**16),
       kind=st.sampled_from(["csr", "bsr4", "bsr8"]))
def test_round_trip_and_sizes(shape, sparsity, seed, kind):
    w = _random_weight(np.random.default_rng(seed), shape, sparsity)
    W = CSRWeight.from_dense(w) if kind == "csr" else BSRWeight.from_dense(w, int(kind[3:]))
    np.testing.assert_array_equal(W.to_dense(), w)
    assert W.to_dense().dtype == np.float32 and W.shape == tuple(shape)
    nnz = int(np.count_nonzero(w))
    assert W.nnz == nnz
    assert W.density == pytest.approx(nnz / w.size)
    assert W.nbytes == W.values.nbytes + W.indptr.nbytes + W.indices.nbytes
    assert W.dense_nbytes == 4 * w.size
    if kind == "csr":
        assert W.nbytes == 8 * nnz + 4 * (shape[0] + 1)
    else:
        r = W.block_rows
        nb = -(-shape[0] // r)
        m = np.zeros((nb * r, w.reshape(shape[0], -1).shape[1]), np.float32)
        m[: shape[0]] = w.reshape(shape[0], -1)
        n_blocks = int((m.reshape(nb, r, -1) != 0).any(axis=1).sum())
        assert W.n_blocks == n_blocks and W.stored == n_blocks * r
        assert W.nbytes == 4 * n_blocks * r + 4 * n_blocks + 4 * (nb + 1)


def test_from_torch_matches_numpy():
    w = torch.randn(8, 4, 3, 3)
    w[w.abs() < 0.5] = 0
    a = CSRWeight.from_dense(w)
    b = CSRWeight.from_dense(w.numpy())
    assert a == b
    assert a.indptr.dtype == np.int32 and a.indices.dtype == np.int32 and a.values.dtype == np.float32
    # columns follow w.reshape(C_out, -1)
    m = w.reshape(8, -1).numpy()
    r, c = np.nonzero(m)
    np.testing.assert_array_equal(a.indices, c)
    np.testing.assert_array_equal(a.values, m[r, c])


def test_float64_and_half_inputs_are_converted():
    w = np.random.default_rng(0).standard_normal((4, 6))
    np.testing.assert_array_equal(CSRWeight.from_dense(w).to_dense(), w.astype(np.float32))
    t = torch.randn(4, 6).half()
    np.testing.assert_array_equal(BSRWeight.from_dense(t).to_dense(), t.float().numpy())


def test_nan_weights_are_kept():
    w = np.zeros((4, 4), np.float32)
    w[1, 2] = np.nan
    np.testing.assert_array_equal(CSRWeight.from_dense(w).to_dense(), w)
    np.testing.assert_array_equal(BSRWeight.from_dense(w).to_dense(), w)


@pytest.mark.parametrize("bad", [np.zeros((2, 3, 4)), np.zeros((0, 3)), np.zeros((3,))])
def test_from_dense_rejects_bad_shapes(bad):
    with pytest.raises(ValueError):
        CSRWeight.from_dense(bad.astype(np.float32))


def test_from_dense_rejects_int_and_other_types():
    with pytest.raises(TypeError):
        CSRWeight.from_dense(np.ones((2, 2), np.int64))
    with pytest.raises(TypeError):
        CSRWeight.from_dense([[1.0, 0.0]])
    with pytest.raises(ValueError, match="block_rows"):
        BSRWeight.from_dense(np.ones((4, 4), np.float32), block_rows=3)


@pytest.mark.parametrize("kind", ["csr", "bsr"])
def test_save_load(tmp_path, kind):
    w = _random_weight(np.random.default_rng(1), (10, 3, 3, 3), 0.8)
    W = CSRWeight.from_dense(w) if kind == "csr" else BSRWeight.from_dense(w, 8)
    p = W.save(tmp_path / "w.npz")
    V = load_weight(p)
    assert type(V) is type(W) and V == W
    np.testing.assert_array_equal(V.to_dense(), w)
    assert type(W).load(p) == W
    other = BSRWeight if kind == "csr" else CSRWeight
    with pytest.raises(ValueError, match="w.npz"):
        other.load(p)


def test_load_missing_corrupt_truncated(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        load_weight(tmp_path / "nope.npz")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"this is not a zip file")
    with pytest.raises(ValueError, match="junk.npz"):
        load_weight(junk)
    good = CSRWeight.from_dense(np.eye(6, dtype=np.float32)).save(tmp_path / "good.npz")
    trunc = tmp_path / "trunc.npz"
    trunc.write_bytes(good.read_bytes()[:150])
    with pytest.raises(ValueError, match="trunc.npz"):
        load_weight(trunc)
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, a=np.zeros(3))
    with pytest.raises(ValueError, match="foreign.npz"):
        load_weight(foreign)
    # a readable file holding inconsistent arrays
    bad = tmp_path / "bad.npz"
    np.savez(bad, kind=np.array("csr"), version=np.int64(1), shape=np.array([2, 2]),
             values=np.ones(2, np.float32), indptr=np.array([0, 1, 2], np.int32),
             indices=np.array([0, 7], np.int32), block_rows=np.int64(1))
    with pytest.raises(ValueError, match="bad.npz"):
        load_weight(bad)


def _csr(values, indptr, indices, shape=(2, 3)):
    return CSRWeight(np.asarray(values, np.float32), np.asarray(indptr, np.int32),
                     np.asarray(indices, np.int32), shape)


@pytest.mark.parametrize("args,match", [
    (([1, 2], [0, 2, 1], [0, 1]), "non-decreasing|end at"),
    (([1, 2], [0, 1, 2], [0, 3]), "out of range"),
    (([1, 2], [0, 1, 2], [0, -1]), "out of range"),
    (([1, 2], [0, 2, 2], [1, 1]), "strictly increasing"),
    (([1, 2], [0, 2, 2], [2, 1]), "strictly increasing"),
    (([1, 2], [1, 1, 2], [0, 1]), "start at 0"),
    (([1, 2], [0, 1], [0, 1]), "indptr"),
    (([1], [0, 1, 2], [0, 1]), "end at|indices"),
])
def test_bad_hand_built_csr(args, match):
    with pytest.raises(ValueError, match=match):
        _csr(*args)


def test_bad_dtypes_and_shape():
    with pytest.raises(ValueError, match="values"):
        CSRWeight(np.ones(1, np.float64), np.array([0, 1, 1], np.int32), np.array([0], np.int32), (2, 3))
    with pytest.raises(ValueError, match="indices"):
        CSRWeight(np.ones(1, np.float32), np.array([0, 1, 1], np.int32), np.array([0], np.int64), (2, 3))
    with pytest.raises(ValueError, match="shape"):
        _csr([1], [0, 1, 1], [0], shape=(2, 0))
    with pytest.raises(ValueError, match="shape"):
        _csr([1], [0, 1, 1], [0], shape=(2, 3, 1))


def test_rows_may_cross_row_boundary_with_decreasing_columns():
    W = _csr([1, 2, 3], [0, 2, 3], [1, 2, 0])
    np.testing.assert_array_equal(W.to_dense(), [[0, 1, 2], [3, 0, 0]])


def test_bsr_validation():
    ok = BSRWeight(np.ones((1, 4), np.float32), np.array([0, 1], np.int32), np.array([2], np.int32), (4, 3))
    assert ok.nnz == 4
    with pytest.raises(ValueError, match="padding"):
        BSRWeight(np.ones((1, 4), np.float32), np.array([0, 1], np.int32), np.array([2], np.int32), (3, 3))
    with pytest.raises(ValueError, match="values"):
        BSRWeight(np.ones((1, 8), np.float32), np.array([0, 1], np.int32), np.array([2], np.int32), (4, 3), 4)
    with pytest.raises(ValueError, match="block_rows"):
        BSRWeight(np.ones((1, 2), np.float32), np.array([0, 1], np.int32), np.array([2], np.int32), (2, 3), 2)


def test_arrays_are_read_only_and_copied():
    v = np.ones(2, np.float32)
    W = _csr(v, [0, 1, 2], [0, 1])
    v[0] = 5.0
    assert W.values[0] == 1.0
    with pytest.raises(ValueError):
        W.values[0] = 3.0


def test_pickle_drops_packed_cache():
    import pickle

    W = CSRWeight.from_dense(np.eye(4, dtype=np.float32))
    W.packed()
    V = pickle.loads(pickle.dumps(W))
    assert V == W and "_packed" not in V.__dict__
