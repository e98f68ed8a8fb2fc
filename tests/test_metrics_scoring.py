"""NLL, Brier, accuracy, confidence, softmax and summary against torch and written-out formulas."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays

from prunecal import metrics as M


def _logits(n=400, c=10, seed=0, scale=3.0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, c)) * scale, rng.integers(0, c, n)


def test_softmax_matches_torch_and_is_stable():
    z, _ = _logits()
    np.testing.assert_allclose(M.softmax(z), F.softmax(torch.tensor(z), 1).numpy(), rtol=1e-12)
    np.testing.assert_allclose(M.log_softmax(z), F.log_softmax(torch.tensor(z), 1).numpy(), rtol=1e-12)
    big = np.array([[1000.0, 0.0], [-1000.0, -1000.0]])
    np.testing.assert_allclose(M.softmax(big), [[1.0, 0.0], [0.5, 0.5]])


def test_nll_matches_torch_cross_entropy():
    z, y = _logits()
    ref = F.cross_entropy(torch.tensor(z), torch.tensor(y)).item()
    assert M.nll(M.softmax(z), y) == pytest.approx(ref, rel=1e-10)
    assert M.nll_from_logits(z, y) == pytest.approx(ref, rel=1e-12)
    assert M.nll_from_logits(torch.tensor(z, dtype=torch.float32), torch.tensor(y)) == pytest.approx(ref, rel=1e-5)


def test_nll_hand_worked_and_clipping():
    p = np.array([[0.5, 0.5], [0.8, 0.2], [1.0, 0.0]])
    y = np.array([0, 1, 1])
    # -(ln .5 + ln .2 + ln 1e-12) / 3
    assert M.nll(p, y) == pytest.approx(-(np.log(0.5) + np.log(0.2) + np.log(1e-12)) / 3)
    assert M.nll(p, y, eps=1e-6) == pytest.approx(-(np.log(0.5) + np.log(0.2) + np.log(1e-6)) / 3)
    assert np.isfinite(M.nll(p, y))
    with pytest.raises(ValueError, match="eps"):
        M.nll(p, y, eps=0.0)


def test_brier_hand_worked_and_reductions():
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3]])
    y = np.array([0, 2])
    # row 0: .09 + .04 + .01 = .14 ; row 1: .01 + .36 + .49 = .86 ; mean = .5
    assert M.brier(p, y) == pytest.approx(0.5)
    assert M.brier(p, y, reduction="mean") == pytest.approx(0.5 / 3)
    # worst case: certain and wrong -> 2
    assert M.brier(np.array([[1.0, 0.0]]), [1]) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="reduction"):
        M.brier(p, y, reduction="none")


def test_brier_matches_torch_formula():
    z, y = _logits(seed=5)
    p = M.softmax(z)
    onehot = F.one_hot(torch.tensor(y), 10).double()
    ref = ((torch.tensor(p) - onehot) ** 2).sum(1).mean().item()
    assert M.brier(p, y) == pytest.approx(ref, rel=1e-12)


def test_accuracy_confidence_and_torchmetrics():
    from torchmetrics.functional.classification import multiclass_accuracy

    z, y = _logits(seed=2)
    p = M.softmax(z)
    ref = multiclass_accuracy(torch.tensor(p), torch.tensor(y), num_classes=10, average="micro").item()
    assert M.accuracy(p, y) == pytest.approx(ref)
    assert M.accuracy(z, y) == pytest.approx(ref)  # argmax of logits is the same
    assert M.error_rate(p, y) == pytest.approx(1 - ref)
    assert M.mean_confidence(p) == pytest.approx(p.max(1).mean())
    assert M.mean_confidence(p, y) == pytest.approx(p.max(1).mean())
    # hand: [argmax 0 (y0) ok, argmax 1 (y0) wrong] -> .5 ; conf (.6 + .9)/2
    q = np.array([[0.6, 0.4], [0.1, 0.9]])
    assert M.accuracy(q, [0, 0]) == 0.5 and M.mean_confidence(q) == pytest.approx(0.75)


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 40).flatmap(lambda n: st.tuples(
    arrays(np.float64, (n, 4), elements=st.floats(-10, 10)),
    arrays(np.int64, (n,), elements=st.integers(0, 3)))))
def test_score_ranges(zy):
    z, y = zy
    p = M.softmax(z)
    assert 0.0 <= M.brier(p, y) <= 2.0 + 1e-12
    assert M.nll(p, y) >= 0.0
    assert 0.0 <= M.accuracy(p, y) <= 1.0
    assert 0.25 - 1e-12 <= M.mean_confidence(p) <= 1.0
    assert M.nll_from_logits(z, y) == pytest.approx(M.nll(p, y), rel=1e-9, abs=1e-12) or p.min() < 1e-12


def test_summary_keys_and_consistency():
    z, y = _logits(n=300, seed=4)
    p = M.softmax(z)
    s = M.summary(p, y)
    assert set(s) == set(M.SUMMARY_KEYS)
    assert s["n"] == 300 and s["n_bins"] == 15 and s["binning"] == "width"
    assert s["ece"] == pytest.approx(M.ece(p, y))
    assert s["ace"] == pytest.approx(M.ece(p, y, binning="mass"))
    assert s["mce"] == pytest.approx(M.mce(p, y))
    assert s["rmsce"] == pytest.approx(M.rmsce(p, y))
    assert s["classwise_ece"] == pytest.approx(M.classwise_ece(p, y))
    assert s["nll"] == pytest.approx(M.nll(p, y))
    assert s["brier"] == pytest.approx(M.brier(p, y))
    assert s["accuracy"] == pytest.approx(M.accuracy(p, y)) and s["error"] == pytest.approx(1 - s["accuracy"])
    assert s["aurc"] == pytest.approx(M.aurc(p, y)) and s["eaurc"] == pytest.approx(M.eaurc(p, y))
    assert s["misclassification_auroc"] == pytest.approx(M.misclassification_auroc(p, y))
    sm = M.summary(p, y, n_bins=10, binning="mass")
    assert sm["ece"] == pytest.approx(M.ece(p, y, 10, "mass")) and sm["binning"] == "mass"
    sl = M.summary_from_logits(z, y)
    assert sl["temperature"] == 1.0
    for k in M.SUMMARY_KEYS:
        if isinstance(s[k], str):
            assert sl[k] == s[k]
        else:
            assert sl[k] == pytest.approx(s[k], rel=1e-9, abs=1e-12)
    s2 = M.summary_from_logits(z, y, temperature=2.0)
    assert s2["ece"] == pytest.approx(M.ece(M.softmax(z / 2), y))
    assert s2["accuracy"] == s["accuracy"]
    with pytest.raises(ValueError, match="temperature"):
        M.summary_from_logits(z, y, temperature=0.0)


def test_summary_perfect_model_auroc_is_nan():
    p = np.eye(3)[[0, 1, 2, 0]] * 0.9 + 0.1 / 3
    s = M.summary(p, [0, 1, 2, 0])
    assert s["accuracy"] == 1.0 and np.isnan(s["misclassification_auroc"])
    assert s["eaurc"] == pytest.approx(0.0)


def test_logits_bad_input():
    with pytest.raises(ValueError, match="NaN"):
        M.softmax(np.array([[np.nan, 1.0]]))
    with pytest.raises(ValueError, match="shape"):
        M.nll_from_logits(np.zeros((2, 3, 4)), [0, 1])
    with pytest.raises(ValueError, match="sum to 1"):
        M.nll(np.array([[2.0, 3.0]]) / 10, [0])
    with pytest.raises(ValueError, match="out of range"):
        M.summary_from_logits(np.zeros((2, 3)), [0, 3])
    with pytest.raises(TypeError, match="temperature must be a number"):
        M.summary_from_logits(np.zeros((2, 3)), [0, 1], temperature="warm")
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="temperature"):
            M.summary_from_logits(np.zeros((2, 3)), [0, 1], temperature=bad)


# ---- mutation-run survivors (scripts/mutation.sh metrics/scoring) ------------------------------------
def _err(exc, fn, *a, **kw) -> str:
    with pytest.raises(exc) as e:
        fn(*a, **kw)
    return str(e.value)


def test_accuracy_validates_labels_against_probs():
    from prunecal.metrics import accuracy

    p = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    assert accuracy(p, [0, 1, 1]) == pytest.approx(2 / 3)
    assert _err(ValueError, accuracy, p, [0, 1]) == "length mismatch: 3 predictions but 2 labels"
    assert _err(ValueError, accuracy, p, [0, 1, 2]) == "labels out of range [0, 2): e.g. [2]"
    assert _err(ValueError, accuracy, np.array([0.5, 0.5]), [0]) == "probs must have shape (N, C), got shape (2,)"


def test_scoring_option_errors():
    from prunecal.metrics import brier, nll

    p, y = np.array([[0.7, 0.3]]), np.array([0])
    assert _err(ValueError, brier, p, y, reduction="max") == "reduction must be one of ('sum', 'mean'), got 'max'"
    for eps in (1.0, 1.5, 0.0):
        assert _err(ValueError, nll, p, y, eps=eps) == f"eps must be in (0, 1), got {eps}"
    assert nll(p, y, eps=0.5) == pytest.approx(-np.log(0.7))
    assert nll(np.array([[0.99, 0.01]]), np.array([1]), eps=0.5) == pytest.approx(-np.log(0.5))  # clipped
