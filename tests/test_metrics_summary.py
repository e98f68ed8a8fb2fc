"""summary() / summary_from_logits(): every key equals the single-metric function of its own
module (tested there against torchmetrics, numpy definitions and hand-worked cases), for both
binnings; the NLL of summary_from_logits is the exact log-softmax one. Found with
``scripts/mutation.sh metrics/summary`` (docs/testing.md)."""
from __future__ import annotations

import numpy as np
import pytest

from prunecal import metrics as M


def _data(n=300, c=5, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, c)) * 2.5
    y = np.where(rng.random(n) < 0.6, z.argmax(1), rng.integers(0, c, n))
    return z, y


@pytest.mark.parametrize("binning", ["width", "mass"])
@pytest.mark.parametrize("n_bins", [15, 7])
def test_every_key_equals_its_single_metric(binning, n_bins):
    z, y = _data()
    p = M.softmax(z)
    s = M.summary(p, y, n_bins=n_bins, binning=binning)
    want = {
        "n": len(y), "n_bins": n_bins, "binning": binning,
        "accuracy": M.accuracy(p, y), "error": 1 - M.accuracy(p, y), "mean_confidence": M.mean_confidence(p),
        "nll": M.nll(p, y), "brier": M.brier(p, y),
        "ece": M.ece(p, y, n_bins, binning), "mce": M.mce(p, y, n_bins, binning),
        "rmsce": M.rmsce(p, y, n_bins, binning),
        "ace": M.ace(p, y, n_bins),  # always equal-mass
        "classwise_ece": M.classwise_ece(p, y, n_bins),  # always equal-width
        "overconfidence": M.overconfidence(p, y, n_bins, binning),
        "underconfidence": M.underconfidence(p, y, n_bins, binning),
        "aurc": M.aurc(p, y), "eaurc": M.eaurc(p, y), "misclassification_auroc": M.misclassification_auroc(p, y),
    }
    assert set(s) == set(M.SUMMARY_KEYS) == set(want)
    for k, v in want.items():
        assert s[k] == (v if isinstance(v, (str, int)) else pytest.approx(v, rel=1e-12, abs=1e-15)), k
    if binning == "mass":  # the two binnings really differ on this data
        assert s["ece"] != pytest.approx(M.ece(p, y, n_bins, "width"), rel=1e-6)
        assert s["ace"] != pytest.approx(M.ece(p, y, n_bins, "width"), rel=1e-6)


def test_from_logits_nll_is_exact_beyond_the_probability_clip():
    """True-class probability e^-60 (below the 1e-12 clip of nll on probabilities): the
    logits summary gives the exact NLL (60 - ln 2 ... written out), not -ln(1e-12)."""
    z = np.array([[0.0, 60.0], [3.0, 0.0]])
    y = np.array([0, 0])
    exact = (np.logaddexp(0.0, 60.0) - 0.0 + np.logaddexp(3.0, 0.0) - 3.0) / 2
    s = M.summary_from_logits(z, y)
    assert s["nll"] == pytest.approx(exact, rel=1e-12)
    assert s["temperature"] == 1.0
    t = M.summary_from_logits(z, y, temperature=2.0)
    assert t["nll"] == pytest.approx((np.logaddexp(0.0, 30.0) + np.logaddexp(1.5, 0.0) - 1.5) / 2, rel=1e-12)
    assert M.summary(M.softmax(z), y)["nll"] < exact - 10  # the clipped value, for contrast


def test_auroc_is_nan_when_undefined_and_option_errors():
    p = np.array([[0.9, 0.1], [0.2, 0.8]])
    assert np.isnan(M.summary(p, [0, 1])["misclassification_auroc"])  # all correct
    assert np.isnan(M.summary(p, [1, 0])["misclassification_auroc"])  # all wrong
    for fn, x in ((M.summary, p), (M.summary_from_logits, np.log(p))):
        with pytest.raises(ValueError) as e:
            fn(x, [0, 1], binning="quantile")
        assert str(e.value) == "binning must be one of ('width', 'mass'), got 'quantile'"
        with pytest.raises(ValueError) as e:
            fn(x, [0, 1], n_bins=0)
        assert str(e.value) == "n_bins must be a positive integer, got 0"
