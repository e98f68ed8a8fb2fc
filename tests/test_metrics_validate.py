"""Input checking of every metric (prunecal.metrics._validate): what is accepted, what it becomes,
and the exact one-line errors naming the argument. Found with ``scripts/mutation.sh
metrics/_validate`` (docs/testing.md); expected values are literals and numpy / torch results."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from prunecal import metrics as M
from prunecal.metrics._validate import check_labels, check_matrix, check_probs


def _err(exc, fn, *a, **k):
    with pytest.raises(exc) as e:
        fn(*a, **k)
    return str(e.value)


def test_integral_float_labels_become_int64():
    for dt in (np.float64, np.float32, np.float16):
        y = check_labels(np.array([0.0, 2.0, 1.0], dtype=dt), 3, 3)
        assert y.dtype == np.int64 and y.tolist() == [0, 2, 1]
    y = check_labels(np.array([True, False]))
    assert y.dtype == np.int64 and y.tolist() == [1, 0]
    assert M.accuracy(np.eye(3), np.array([0.0, 1.0, 2.0], dtype=np.float32)) == 1.0


def test_label_errors():
    assert _err(TypeError, check_labels, np.array(["0", "1"])) == "labels must be integers, got dtype=<U1"
    assert _err(TypeError, check_labels, np.array([1 + 0j])) == "labels must be integers, got dtype=complex128"
    for bad in ([0.5, 1.0], [np.nan, 1.0], [np.inf, 0.0]):
        assert _err(ValueError, check_labels, np.array(bad)) == \
            "labels must be integer class indices, got non-integer values"
    assert _err(TypeError, check_labels, [object()]) == "labels must be a numeric array, got dtype=object"
    assert _err(ValueError, check_labels, [3, 4, 5, 6, 7, 8, 0], 7, 3) == \
        "labels out of range [0, 3): e.g. [3, 4, 5, 6, 7]"  # the first five
    assert _err(ValueError, check_labels, [[0, 1]]) == "labels must have shape (N,), got shape (1, 2)"


def test_logits_errors_name_logits():
    assert _err(ValueError, M.nll_from_logits, [[np.nan, 0.0]], [0]) == "logits contains NaN or Inf (1 rows)"
    assert _err(ValueError, M.nll_from_logits, np.zeros((3, 2)), [0, 1]) == \
        "length mismatch: 3 predictions but 2 labels"
    assert _err(ValueError, M.nll_from_logits, np.zeros((2, 2)), [0, 2]) == "labels out of range [0, 2): e.g. [2]"


def test_matrix_dtypes():
    ints = np.array([[1, 0], [0, 1]], dtype=np.int32)  # integer probabilities are accepted
    out = check_matrix(ints, "probs")
    assert out.dtype == np.float64 and out.tolist() == [[1.0, 0.0], [0.0, 1.0]]
    assert M.accuracy(ints, [0, 1]) == 1.0
    for bad, dt in ((np.array([[True, False]]), "bool"), (np.array([[1 + 0j, 0j]]), "complex128"),
                    (np.array([["a", "b"]]), "<U1")):
        assert _err(TypeError, check_matrix, bad, "probs") == f"probs must be a float array, got dtype={dt}"
    assert _err(TypeError, M.ece, [[object(), 1.0]], [0]) == "probs must be a numeric array, got dtype=object"
    assert _err(TypeError, M.ece, [[0.5, 0.5], [1.0]], [0, 0]) == "probs must be array-like, got list"
    a = np.full((4, 3), 1 / 3)
    assert np.shares_memory(check_matrix(a, "probs"), a)  # float64 input is not copied


def test_probability_range_and_tolerances():
    # overshoot within 1e-6 on one side only: clipped, accepted
    p = check_probs(np.array([[1.0 + 5e-7, 0.0]]))
    assert p.tolist() == [[1.0, 0.0]]
    p = check_probs(np.array([[-5e-7, 1.0]]))
    assert p.tolist() == [[0.0, 1.0]]
    # exactly at the tolerance: still clipped
    assert check_probs(np.array([[-1e-6, 1.0 + 1e-6]])).tolist() == [[0.0, 1.0]]
    # beyond it on one side (the other side within): rejected, not clipped
    msg = _err(ValueError, check_probs, np.array([[1.0008, -1e-7, 0.0]]))
    assert msg == ("probs must lie in [0, 1] (got min -1e-07, max 1.001); "
                   "pass logits through softmax() or use the *_from_logits variant")
    msg = _err(ValueError, M.ece, np.array([[1.0008, 0.0, 0.0]]), [0])  # rows sum within 1e-3
    assert msg == ("probs must lie in [0, 1] (got min 0, max 1.001); "
                   "pass logits through softmax() or use the *_from_logits variant")
    assert _err(ValueError, M.ece, np.array([[0.5, 0.502]]), [0]) == \
        "rows of probs must sum to 1 (tolerance 0.001); row 0 sums to 1.002"
    assert _err(ValueError, check_probs, np.array([[0.6, 0.6]]), "probs_b").startswith("rows of probs_b must")


def test_torch_tensors_any_dtype_with_grad():
    """Tensors requiring grad and bfloat16 tensors (numpy has no bfloat16) are accepted."""
    z = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0], [1.0, 1.0, 0.0]])
    y = torch.tensor([0, 2, 1])
    want = M.nll(torch.softmax(z, 1).numpy().astype(np.float64), y.numpy())
    p = torch.softmax(z, 1).requires_grad_()
    assert M.nll(p, y) == pytest.approx(want, rel=1e-6)
    # bfloat16 (exact values here): the same numbers as float64
    q = np.array([[0.75, 0.25, 0.0], [0.0, 0.125, 0.875], [0.5, 0.5, 0.0]])
    pb = torch.tensor(q, dtype=torch.bfloat16).requires_grad_()
    assert M.accuracy(pb, y) == pytest.approx(2 / 3)
    assert M.nll(pb, y) == pytest.approx(-(np.log(0.75) + np.log(0.875) + np.log(0.5)) / 3, rel=1e-12)
    assert M.brier(pb, y) == pytest.approx(M.brier(q, y.numpy()), rel=1e-12)
    zb = z.to(torch.bfloat16)
    assert M.nll_from_logits(zb, y) == pytest.approx(M.nll_from_logits(zb.float().numpy(), y.numpy()), rel=1e-12)


def test_array_likes_that_are_not_torch():
    """An array-like with a ``cpu`` attribute but no ``detach`` (e.g. a TensorFlow eager
    tensor) goes through ``numpy.asarray``, not the torch path."""
    class CpuOnly:
        def __init__(self, a):
            self.a = np.asarray(a)

        def cpu(self):  # pragma: no cover - must not be called
            raise AssertionError("treated as a torch tensor")

        def __array__(self, dtype=None, copy=None):
            return self.a if dtype is None else self.a.astype(dtype)

    assert M.accuracy(CpuOnly([[0.9, 0.1], [0.3, 0.7]]), CpuOnly([0, 0])) == 0.5


def test_n_bins_must_be_an_integer():
    for bad in (0, -1, 2.0, True, "3"):
        assert _err(ValueError, M.ece, np.eye(2), [0, 1], n_bins=bad) == \
            f"n_bins must be a positive integer, got {bad!r}"
    assert M.ece(np.eye(2), [0, 1], n_bins=np.int64(1)) == 0.0
