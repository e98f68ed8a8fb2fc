"""MetricAccumulator over random chunkings equals the one-shot summary."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from prunecal import metrics as M


def _data(n=600, c=10, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, c)) * 3
    y = np.where(rng.random(n) < 0.6, z.argmax(1), rng.integers(0, c, n))
    return z, y


def _assert_same(a, b):
    assert set(a) >= set(M.SUMMARY_KEYS)
    for k in M.SUMMARY_KEYS:
        if isinstance(b[k], str):
            assert a[k] == b[k]
        else:
            assert a[k] == pytest.approx(b[k], rel=1e-10, abs=1e-12, nan_ok=True), k


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(1, 200), min_size=1, max_size=12), st.sampled_from(["width", "mass"]),
       st.integers(1, 20))
def test_random_chunks_equal_one_shot(sizes, binning, n_bins):
    z, y = _data()
    cuts = np.cumsum(sizes)
    cuts = cuts[cuts < len(y)]
    acc = M.MetricAccumulator(10, n_bins=n_bins, binning=binning)
    for zi, yi in zip(np.split(z, cuts), np.split(y, cuts)):
        acc.update(zi, yi)
    assert acc.n == len(y)
    _assert_same(acc.compute(), M.summary_from_logits(z, y, n_bins=n_bins, binning=binning))


def test_probabilities_torch_batches_and_keep_probs():
    z, y = _data(seed=1)
    p = M.softmax(z)
    acc = M.MetricAccumulator(10, keep_probs=True)
    for i in range(0, len(y), 128):
        acc.update(torch.tensor(p[i:i + 128]), torch.tensor(y[i:i + 128]), from_logits=False)
    _assert_same(acc.compute(), M.summary(p, y))
    np.testing.assert_allclose(acc.probs, p)
    np.testing.assert_array_equal(acc.labels, y)
    acc.reset()
    assert acc.n == 0
    with pytest.raises(ValueError, match="before any update"):
        acc.compute()


def test_bad_input():
    with pytest.raises(ValueError, match="num_classes"):
        M.MetricAccumulator(1)
    with pytest.raises(ValueError, match="binning"):
        M.MetricAccumulator(3, binning="x")
    acc = M.MetricAccumulator(3)
    with pytest.raises(ValueError, match="3 classes"):
        acc.update(np.zeros((2, 4)), [0, 1])
    with pytest.raises(ValueError, match="NaN"):
        acc.update(np.full((2, 3), np.nan), [0, 1])
    with pytest.raises(ValueError, match="out of range"):
        acc.update(np.zeros((2, 3)), [0, 3])
    with pytest.raises(ValueError, match="sum to 1"):
        acc.update(np.zeros((2, 3)), [0, 1], from_logits=False)
    with pytest.raises(ValueError, match="keep_probs"):
        _ = acc.probs
    assert acc.n == 0  # failed updates leave no trace


# ---- mutation-run survivors (scripts/mutation.sh metrics/streaming) ---------------------------------
def test_probabilities_with_a_zero_true_class_clip_the_nll_at_1e_12():
    """From probabilities, a true-class probability of 0 costs -ln(1e-12) (the documented clip),
    as in the one-shot ``nll``; expected value written out here."""
    p = np.array([[0.7, 0.3, 0.0], [0.0, 0.0, 1.0], [0.2, 0.5, 0.3], [1.0, 0.0, 0.0]])
    y = np.array([0, 1, 1, 2])
    acc = M.MetricAccumulator(3)
    acc.update(p[:2], y[:2], from_logits=False)
    acc.update(p[2:], y[2:], from_logits=False)
    want = -(np.log(0.7) + np.log(1e-12) + np.log(0.5) + np.log(1e-12)) / 4
    assert acc.compute()["nll"] == pytest.approx(want, rel=1e-12)


def test_num_classes_must_be_an_integer_from_2():
    assert M.MetricAccumulator(2).num_classes == 2
    assert M.MetricAccumulator(np.int64(3)).num_classes == 3
    for bad in (1, 0, 3.0, True, "3"):
        with pytest.raises(ValueError) as e:
            M.MetricAccumulator(bad)
        assert str(e.value) == f"num_classes must be an integer >= 2, got {bad!r}"


def test_errors_name_the_argument():
    acc = M.MetricAccumulator(3)
    with pytest.raises(ValueError) as e:
        acc.compute()
    assert str(e.value) == "MetricAccumulator.compute() called before any update()"
    with pytest.raises(ValueError) as e:
        acc.update(np.full((2, 3), np.nan), [0, 1])
    assert str(e.value) == "logits contains NaN or Inf (2 rows)"
    with pytest.raises(ValueError) as e:
        acc.update(np.full((2, 3), 0.5), [0, 1], from_logits=False)
    assert str(e.value).startswith("rows of probs must sum to 1 (tolerance 0.001)")
    with pytest.raises(ValueError) as e:
        acc.update(np.zeros((3, 3)), [0, 1])
    assert str(e.value) == "length mismatch: 3 predictions but 2 labels"
    with pytest.raises(ValueError) as e:
        acc.update(np.full((3, 3), 1 / 3), [0, 1, 2, 0], from_logits=False)
    assert str(e.value) == "length mismatch: 3 predictions but 4 labels"
    assert acc.n == 0
