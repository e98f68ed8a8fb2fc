"""Bootstrap CIs against an outside implementation: ``scipy.stats.bootstrap(method="percentile")``.

The documented resampling (``numpy.random.default_rng(seed)``, resample ``b`` = row ``b`` of
``integers(0, N, (n_boot, N))``, percentiles ``alpha/2`` and ``1 - alpha/2`` with numpy's linear
interpolation) is exactly what scipy's percentile bootstrap does with the same generator, so
every interval must equal scipy's to float rounding. The statistics scipy evaluates are written
here in numpy or taken from the other metric modules (tested on their own). Found with
``scripts/mutation.sh metrics/bootstrap`` (docs/testing.md).
"""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from prunecal import metrics as M
from prunecal.metrics import bootstrap as B

NAMES = ("accuracy, error, nll, brier, mean_confidence, ece, mce, rmsce, ace, aurc, eaurc, "
         "misclassification_auroc, classwise_ece")


def _data(n=60, c=4, seed=0, zeros=False):
    rng = np.random.default_rng(seed)
    p = M.softmax(rng.normal(size=(n, c)) * 2)
    y = rng.integers(0, c, n)
    y[: n // 2] = p[: n // 2].argmax(1)
    if zeros:  # true-class probability exactly 0 on some rows: NLL needs its clip
        for i in range(0, n, 7):
            k = (y[i] + 1) % c
            p[i] = 0.0
            p[i, k] = 1.0
    return p, y


def _scipy_ci(stat, n, n_boot, alpha, seed):
    """Percentile interval of ``stat(rows)`` over scipy's resamples of the row indices."""
    res = stats.bootstrap((np.arange(n),), stat, n_resamples=n_boot, confidence_level=1 - alpha,
                          method="percentile", vectorized=False, rng=np.random.default_rng(seed))
    return res.confidence_interval.low, res.confidence_interval.high


def _onehot(y, c):
    return np.eye(c)[y]


PER_SAMPLE = {  # name -> (kwargs, per-row statistic in numpy)
    "accuracy": ({}, lambda p, y: (p.argmax(1) == y).astype(float)),
    "error": ({}, lambda p, y: (p.argmax(1) != y).astype(float)),
    "nll": ({}, lambda p, y: -np.log(np.maximum(p[np.arange(len(y)), y], 1e-12))),
    "nll-eps": ({"eps": 1e-3}, lambda p, y: -np.log(np.maximum(p[np.arange(len(y)), y], 1e-3))),
    "brier": ({}, lambda p, y: ((p - _onehot(y, p.shape[1])) ** 2).sum(1)),
    "brier-mean": ({"reduction": "mean"}, lambda p, y: ((p - _onehot(y, p.shape[1])) ** 2).mean(1)),
    "mean_confidence": ({}, lambda p, y: p.max(1)),
}


@pytest.mark.parametrize("key", list(PER_SAMPLE))
@pytest.mark.parametrize("chunk_rows", [None, 3])
def test_per_sample_metrics_equal_scipy(key, chunk_rows, monkeypatch):
    """Means of per-row scores; also with tiny chunks (3 resamples per chunk, 40 = 13 * 3 + 1)."""
    p, y = _data(zeros=True)
    n = len(y)
    if chunk_rows:
        monkeypatch.setattr(B, "_CHUNK_ELEMS", chunk_rows * n + 1)
    kw, rows = PER_SAMPLE[key]
    score = rows(p, y)
    point, lo, hi = M.bootstrap_ci(key.split("-")[0], p, y, n_boot=40, alpha=0.1, seed=7, **kw)
    assert point == pytest.approx(score.mean(), rel=1e-12)
    assert (lo, hi) == pytest.approx(_scipy_ci(lambda i: score[i].mean(), n, 40, 0.1, 7), rel=1e-12, abs=1e-15)


def test_chunks_smaller_than_one_resample(monkeypatch):
    p, y = _data()
    monkeypatch.setattr(B, "_CHUNK_ELEMS", 5)  # fewer entries than one resample row: one row per chunk
    score = (p.argmax(1) == y).astype(float)
    _, lo, hi = M.bootstrap_ci("accuracy", p, y, n_boot=7, alpha=0.2, seed=1)
    assert (lo, hi) == pytest.approx(_scipy_ci(lambda i: score[i].mean(), len(y), 7, 0.2, 1), rel=1e-12)


@pytest.mark.parametrize("name,fn", [("ece", M.ece), ("mce", M.mce), ("rmsce", M.rmsce)])
@pytest.mark.parametrize("chunk_rows", [None, 4])
def test_vectorised_binned_metrics_equal_scipy(name, fn, chunk_rows, monkeypatch):
    """Equal-width ECE / MCE / RMSCE, default 15 bins and 6 bins; small N with low confidences
    (10 classes) so that resamples have empty top bins and bins holding one sample."""
    rng = np.random.default_rng(2)
    n = 25
    p = M.softmax(rng.normal(size=(n, 10)))
    y = rng.integers(0, 10, n)
    if chunk_rows:
        monkeypatch.setattr(B, "_CHUNK_ELEMS", chunk_rows * n)
    for kw in ({}, {"n_bins": 6}):
        bins = kw.get("n_bins", 15)  # documented default: 15 bins
        point, lo, hi = M.bootstrap_ci(name, p, y, n_boot=30, alpha=0.1, seed=3, **kw)
        assert point == pytest.approx(fn(p, y, n_bins=bins), rel=1e-12)
        want = _scipy_ci(lambda i: fn(p[i], y[i], n_bins=bins), n, 30, 0.1, 3)
        assert (lo, hi) == pytest.approx(want, rel=1e-10, abs=1e-14), kw


@pytest.mark.parametrize("name,fn,kw", [
    ("ace", lambda p, y: M.ace(p, y, n_bins=15), {}),
    ("ace", lambda p, y: M.ace(p, y, n_bins=4), {"n_bins": 4}),
    ("ece", lambda p, y: M.ece(p, y, n_bins=5, binning="mass"), {"n_bins": 5, "binning": "mass"}),
    ("aurc", M.aurc, {}),
    ("eaurc", M.eaurc, {}),
    ("classwise_ece", lambda p, y: M.classwise_ece(p, y, n_bins=15), {}),
    ("classwise_ece", lambda p, y: M.classwise_ece(p, y, n_bins=3), {"n_bins": 3}),
])
def test_per_resample_metrics_equal_scipy(name, fn, kw):
    p, y = _data(n=40)
    point, lo, hi = M.bootstrap_ci(name, p, y, n_boot=25, alpha=0.2, seed=11, **kw)
    assert point == pytest.approx(fn(p, y), rel=1e-12)
    assert (lo, hi) == pytest.approx(_scipy_ci(lambda i: fn(p[i], y[i]), len(y), 25, 0.2, 11), rel=1e-10, abs=1e-14)


def test_width_binning_is_vectorised(monkeypatch):
    """The equal-width ECE is bootstrapped from bin counts (module doc), not re-evaluated per
    resample: the per-resample kernel runs once (the point estimate), with or without
    ``binning="width"`` given; equal-mass runs it once per resample."""
    p, y = _data()
    calls = []
    kernel = B._TOP_LABEL["ece"]
    monkeypatch.setitem(B._TOP_LABEL, "ece", lambda *a, **k: calls.append(1) or kernel(*a, **k))
    for kw, want in (({}, 1), ({"binning": "width"}, 1), ({"binning": "mass"}, 21)):
        calls.clear()
        M.bootstrap_ci("ece", p, y, n_boot=20, **kw)
        assert len(calls) == want, kw


def test_defaults_are_1000_resamples_alpha_5_percent_seed_0():
    p, y = _data(n=30)
    score = p.max(1)  # continuous: 1001 resamples would move the percentiles
    _, lo, hi = M.bootstrap_ci("mean_confidence", p, y)
    assert (lo, hi) == pytest.approx(_scipy_ci(lambda i: score[i].mean(), 30, 1000, 0.05, 0), rel=1e-12)
    pb = M.softmax(np.log(p) * 2)
    assert M.bootstrap_diff_ci("nll", p, pb, y) == M.bootstrap_diff_ci("nll", p, pb, y, n_boot=1000, alpha=0.05, seed=0)
    assert M.bootstrap_diff_ci("nll", p, pb, y) != M.bootstrap_diff_ci("nll", p, pb, y, n_boot=1000, seed=1)
    assert M.bootstrap_diff_ci("nll", p, pb, y) != M.bootstrap_diff_ci("nll", p, pb, y, n_boot=1001, seed=0)


def test_paired_difference_equals_the_resampled_differences():
    """``bootstrap_diff_ci``: both models on the same resampled rows; the interval is the
    percentile interval of the per-resample differences (scipy, paired statistic)."""
    pa, y = _data(n=50, seed=1)
    pb = M.softmax(np.log(pa) * 2.5)
    la = -np.log(pa[np.arange(50), y])
    lb = -np.log(pb[np.arange(50), y])
    d, lo, hi = M.bootstrap_diff_ci("nll", pa, pb, y, n_boot=40, alpha=0.1, seed=5)
    assert d == pytest.approx(lb.mean() - la.mean(), rel=1e-12)
    assert (lo, hi) == pytest.approx(_scipy_ci(lambda i: lb[i].mean() - la[i].mean(), 50, 40, 0.1, 5), rel=1e-10)


def test_undefined_resamples_are_dropped():
    """A resample on which the metric raises ValueError is left out of the percentiles."""
    p, y = _data(n=12)
    rows = np.random.default_rng(4).integers(0, 12, size=(30, 12))  # the documented resamples

    def metric(q, t):
        if q[0, 0] > 0.5:
            raise ValueError("undefined here")
        return float(q[:, 0].mean())

    assert p[0, 0] <= 0.5  # defined on the full data (the point estimate)
    vals = [p[r, 0].mean() for r in rows if p[r[0], 0] <= 0.5]
    assert 0 < len(vals) < 30
    point, lo, hi = M.bootstrap_ci(metric, p, y, n_boot=30, alpha=0.2, seed=4)
    assert point == pytest.approx(p[:, 0].mean(), rel=1e-12)
    assert (lo, hi) == pytest.approx(tuple(np.quantile(vals, [0.1, 0.9])), rel=1e-12)


def test_one_defined_resample_and_none():
    p, y = _data(n=10)
    calls = []

    def first_two(q, t):  # defined for the point estimate and the first resample only
        calls.append(1)
        if len(calls) > 2:
            raise ValueError("undefined")
        return float(len(calls))

    assert M.bootstrap_ci(first_two, p, y, n_boot=5) == (1.0, 2.0, 2.0)
    calls.clear()

    def point_only(q, t):
        calls.append(1)
        if len(calls) > 1:
            raise ValueError("undefined")
        return 0.5

    with pytest.raises(ValueError) as e:
        M.bootstrap_ci(point_only, p, y, n_boot=5)
    assert str(e.value) == "the metric is undefined on every bootstrap resample"


def test_argument_errors():
    p, y = _data(n=10)
    for n_boot in (1, 0, 5.0, True, "10"):
        with pytest.raises(ValueError) as e:
            M.bootstrap_ci("accuracy", p, y, n_boot=n_boot)
        assert str(e.value) == f"n_boot must be an integer >= 2, got {n_boot!r}"
    assert len(M.bootstrap_ci("accuracy", p, y, n_boot=2)) == 3  # the smallest allowed
    assert len(M.bootstrap_ci("accuracy", p, y, n_boot=np.int64(3))) == 3
    for alpha in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError) as e:
            M.bootstrap_ci("accuracy", p, y, alpha=alpha)
        assert str(e.value) == f"alpha must be in (0, 1), got {alpha!r}"
    with pytest.raises(ValueError) as e:
        M.bootstrap_ci("ece", p, y, n_boot=5, n_bins=0)
    assert str(e.value) == "n_bins must be a positive integer, got 0"
    with pytest.raises(ValueError) as e:
        M.bootstrap_ci("ece", p, y, n_boot=5, binning="quantile")
    assert str(e.value) == "binning must be one of ('width', 'mass'), got 'quantile'"
    with pytest.raises(ValueError) as e:
        M.bootstrap_ci("nope", p, y)
    assert str(e.value) == f"unknown metric 'nope'; available: {NAMES}"
    with pytest.raises(TypeError) as e:
        M.bootstrap_ci(3, p, y)
    assert str(e.value) == "metric must be a name or a callable, got int"
    bad = p.copy()
    bad[0, 0] += 0.5
    with pytest.raises(ValueError, match="^rows of probs_b must sum to 1"):
        M.bootstrap_diff_ci("nll", p, bad, y)
