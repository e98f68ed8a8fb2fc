"""ECE family, reliability bins and bootstrap CIs: hand-worked cases, torchmetrics, properties."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays

from prunecal import metrics as M


def _probs(conf_top: list[float], pred: list[int], c: int = 3) -> np.ndarray:
    """Rows with top probability ``conf_top`` at class ``pred``, rest spread evenly."""
    p = np.zeros((len(conf_top), c))
    for i, (q, k) in enumerate(zip(conf_top, pred)):
        p[i, :] = (1 - q) / (c - 1)
        p[i, k] = q
    return p


def _random(n: int, c: int, seed: int, scale: float = 3.0, float32: bool = False):
    rng = np.random.default_rng(seed)
    p = M.softmax(rng.normal(size=(n, c)) * scale)
    if float32:  # torchmetrics bins float32 confidences: use values exact in both precisions
        p = p.astype(np.float32).astype(np.float64)
        p /= p.sum(1, keepdims=True)
        p = p.astype(np.float32).astype(np.float64)
    return p, rng.integers(0, c, n)


# ---- hand-worked ----------------------------------------------------------------------------

def test_ece_hand_worked_two_bins():
    p = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    y = np.array([0, 0, 0, 1])
    # conf = [0.9, 0.8, 0.6, 0.7]; correct = [1, 0, 1, 1]; 2 bins [0,.5) [.5,1]: all in bin 1
    # acc = 3/4, conf = 3.0/4 = 0.75 -> ECE = 0
    assert M.ece(p, y, n_bins=2) == pytest.approx(0.0, abs=1e-12)
    # 10 bins: bin 9 (0.9): acc 1, conf .9 ; bin 8 (0.8): acc 0, conf .8 ; bin 7 (0.7): acc 1 ;
    # bin 6 (0.6): acc 1. ECE = (.1 + .8 + .3 + .4) / 4 = 0.4 ; MCE = .8 ;
    # RMSCE = sqrt((.01 + .64 + .09 + .16) / 4) = sqrt(0.225)
    assert M.ece(p, y, n_bins=10) == pytest.approx(0.4)
    assert M.mce(p, y, n_bins=10) == pytest.approx(0.8)
    assert M.rmsce(p, y, n_bins=10) == pytest.approx(np.sqrt(0.225))
    # over = (.8)/4 = .2 (bin 8 conf>acc) ; under = (.1 + .3 + .4)/4 = .2
    assert M.overconfidence(p, y, n_bins=10) == pytest.approx(0.2)
    assert M.underconfidence(p, y, n_bins=10) == pytest.approx(0.2)


def test_bin_edges_half_open_and_one_in_last_bin():
    # 4 bins: edges 0, .25, .5, .75, 1. 0.5 -> bin 2 ([.5, .75)), 0.75 -> bin 3, 1.0 -> bin 3
    p = np.array([[0.5, 0.5], [0.75, 0.25], [1.0, 0.0], [0.25, 0.75]])
    y = np.array([0, 0, 0, 1])
    rb = M.reliability_bins(p, y, n_bins=4)
    np.testing.assert_array_equal(rb.count, [0, 0, 1, 3])
    np.testing.assert_allclose(rb.lower, [0, .25, .5, .75])
    np.testing.assert_allclose(rb.upper, [.25, .5, .75, 1.0])
    assert np.isnan(rb.confidence[:2]).all() and np.isnan(rb.accuracy[:2]).all()
    np.testing.assert_allclose(rb.confidence[2:], [0.5, (0.75 + 1 + 0.75) / 3])
    np.testing.assert_allclose(rb.accuracy[2:], [1.0, 1.0])
    # ECE = 1/4 * |1 - .5| + 3/4 * |1 - 2.5/3| = .125 + .125
    assert M.ece(p, y, n_bins=4) == pytest.approx(0.25)
    assert rb.weight.sum() == pytest.approx(1.0)
    assert set(rb.to_dict()) >= {"lower", "upper", "count", "confidence", "accuracy"}
    assert rb.to_dict()["n_bins"] == 4 and rb.to_dict()["binning"] == "width"  # stored results say how


def test_equal_mass_hand_worked():
    # 6 samples, 3 equal-mass bins of 2 by sorted confidence
    conf = [0.95, 0.55, 0.85, 0.65, 0.75, 0.55]
    p = _probs(conf, [0] * 6, c=2)
    y = np.array([0, 1, 0, 0, 1, 0])  # correct: 1,0,1,1,0,1
    # sorted (stable): .55(i1,0) .55(i5,1) | .65(i3,1) .75(i4,0) | .85(i2,1) .95(i0,1)
    # bins: conf .55 acc .5 | conf .70 acc .5 | conf .90 acc 1
    # ACE = (|.5-.55| + |.5-.7| + |1-.9|)/3 = (.05 + .2 + .1)/3
    assert M.ece(p, y, n_bins=3, binning="mass") == pytest.approx(0.35 / 3)
    assert M.ace(p, y, n_bins=3) == pytest.approx(0.35 / 3)
    rb = M.reliability_bins(p, y, n_bins=3, binning="mass")
    np.testing.assert_array_equal(rb.count, [2, 2, 2])
    np.testing.assert_allclose(rb.lower, [.55, .65, .85])
    np.testing.assert_allclose(rb.upper, [.55, .75, .95])
    # more bins than samples: empty bins are skipped, each sample alone -> mean |a - c|
    ace6 = M.ece(p, y, n_bins=10, binning="mass")
    assert ace6 == pytest.approx(np.mean(np.abs(np.array([1, 0, 1, 1, 0, 1]) - np.array(conf))))


def test_classwise_hand_worked_and_brute_force():
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.3, 0.3, 0.4]])
    y = np.array([0, 2, 2])
    # 2 bins [0,.5) [.5,1].
    # class 0: scores .7,.1,.3 events 1,0,0: bin1 {.7 -> 1}: .3 ; bin0 {.1,.3 -> 0,0}: mean .2 -> 2*.2
    #   ECE_0 = (1*.3 + 2*.2)/3 = .7/3
    # class 1: .2,.6,.3 events 0,0,0: bin1 {.6}: .6 ; bin0 {.2,.3}: .25*2 -> (.6 + .5)/3 = 1.1/3
    # class 2: .1,.3,.4 events 0,1,1: all bin0: mean score .8/3, mean event 2/3 -> |2/3 - .8/3| = 1.2/3
    expected = (0.7 / 3 + 1.1 / 3 + 1.2 / 3) / 3
    assert M.classwise_ece(p, y, n_bins=2) == pytest.approx(expected)

    pr, yr = _random(300, 5, seed=1)
    nb = 7
    tot = 0.0
    for k in range(5):
        s, e = pr[:, k], (yr == k).astype(float)
        b = np.minimum((s * nb).astype(int), nb - 1)
        tot += sum(abs(e[b == j].mean() - s[b == j].mean()) * (b == j).mean() for j in range(nb) if (b == j).any())
    assert M.classwise_ece(pr, yr, n_bins=nb) == pytest.approx(tot / 5, rel=1e-9)


# ---- against torchmetrics ------------------------------------------------------------------------

@pytest.mark.parametrize("norm", ["l1", "l2", "max"])
@pytest.mark.parametrize("n_bins", [5, 15])
def test_matches_torchmetrics(norm, n_bins):
    from torchmetrics.functional.classification import multiclass_calibration_error

    p, y = _random(2000, 10, seed=n_bins, float32=True)
    assert p.max() < 1.0  # torchmetrics gives confidence 1.0 a bin of its own
    ref = multiclass_calibration_error(torch.tensor(p, dtype=torch.float32), torch.tensor(y), num_classes=10,
                                       n_bins=n_bins, norm=norm)
    assert M.ece(p, y, n_bins=n_bins, norm=norm) == pytest.approx(float(ref), rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("n_bins", [4, 8])
def test_edges_match_numpy_histogram_rule(n_bins):
    """The documented rule is numpy.histogram's / netcal's (``[lo, hi)``, last bin closed):
    an independent ECE built on ``np.histogram`` agrees exactly, with many confidences
    sitting on bin edges (dyadic values, exact in float64) and some equal to 1."""
    rng = np.random.default_rng(n_bins)
    conf = rng.choice(np.arange(n_bins // 2, n_bins + 1) / n_bins, 400)  # top-1 >= 1/2 with C=2
    pred = rng.integers(0, 2, 400)
    p = _probs(list(conf), list(pred), c=2)
    y = rng.integers(0, 2, 400)
    correct = (p.argmax(1) == y).astype(float)  # a 0.5/0.5 row predicts class 0
    edges = np.linspace(0, 1, n_bins + 1)
    cnt, _ = np.histogram(conf, edges)
    s_c, _ = np.histogram(conf, edges, weights=conf)
    s_a, _ = np.histogram(conf, edges, weights=correct)
    nz = cnt > 0
    ref = np.sum(np.abs(s_a[nz] - s_c[nz])) / conf.size
    assert M.ece(p, y, n_bins=n_bins) == pytest.approx(ref, rel=1e-12, abs=1e-15)
    np.testing.assert_array_equal(M.reliability_bins(p, y, n_bins=n_bins).count, cnt)


def test_torch_input_and_float32():
    p, y = _random(200, 4, seed=3)
    ref = M.ece(p, y)
    assert M.ece(torch.tensor(p), torch.tensor(y)) == pytest.approx(ref)
    assert M.ece(p.astype(np.float32), y.astype(np.int32)) == pytest.approx(ref, abs=1e-6)
    assert M.ece(p.tolist(), y.tolist()) == pytest.approx(ref)


# ---- properties ------------------------------------------------------------------------------------

@st.composite
def prob_label(draw, max_n=60, max_c=6):
    n = draw(st.integers(1, max_n))
    c = draw(st.integers(2, max_c))
    z = draw(arrays(np.float64, (n, c), elements=st.floats(-8, 8)))
    y = draw(arrays(np.int64, (n,), elements=st.integers(0, c - 1)))
    return M.softmax(z), y


@settings(max_examples=60, deadline=None)
@given(prob_label(), st.integers(1, 20), st.sampled_from(["width", "mass"]))
def test_properties(pl, n_bins, binning):
    p, y = pl
    e = M.ece(p, y, n_bins, binning)
    r = M.rmsce(p, y, n_bins, binning)
    m = M.mce(p, y, n_bins, binning)
    assert 0.0 <= e <= 1.0
    assert e <= r + 1e-12 <= m + 2e-12  # Jensen: l1 <= l2 <= max
    assert M.overconfidence(p, y, n_bins, binning) + M.underconfidence(p, y, n_bins, binning) == pytest.approx(e)
    assert 0.0 <= M.classwise_ece(p, y, n_bins) <= 1.0
    perm = np.random.default_rng(0).permutation(len(y))
    assert M.ece(p[perm], y[perm], n_bins, "width") == pytest.approx(M.ece(p, y, n_bins, "width"), abs=1e-12)
    assert M.classwise_ece(p[perm], y[perm], n_bins) == pytest.approx(M.classwise_ece(p, y, n_bins), abs=1e-12)
    rb = M.reliability_bins(p, y, n_bins, binning)
    assert rb.count.sum() == len(y) and rb.count.shape == (n_bins,)


def test_perfectly_calibrated_sample_has_small_ece():
    rng = np.random.default_rng(0)
    n, c = 100_000, 10
    p = M.softmax(rng.normal(size=(n, c)) * 2)
    # labels drawn from the predicted distribution: calibrated by construction
    y = (rng.random(n)[:, None] > np.cumsum(p, 1)).sum(1)
    y = np.minimum(y, c - 1)
    assert M.ece(p, y) < 0.01
    assert M.ece(p, y, binning="mass") < 0.01
    assert M.classwise_ece(p, y) < 0.01


def test_overconfident_model_is_overconfident():
    p, y = _random(2000, 10, seed=0, scale=5.0)  # random labels, peaked probs
    assert M.overconfidence(p, y) > 0.5 and M.underconfidence(p, y) == pytest.approx(0.0)


# ---- bad input -------------------------------------------------------------------------------------

@pytest.mark.parametrize("probs,labels,match", [
    (np.full((3, 2), np.nan), [0, 1, 0], "NaN"),
    (np.array([[np.inf, 0.0], [0.5, 0.5]]), [0, 1], "NaN or Inf"),
    (np.array([[0.5, 0.5]]), [2], "out of range"),
    (np.array([[0.5, 0.5]]), [-1], "out of range"),
    (np.array([[0.5, 0.5]]), [0.5], "non-integer"),
    (np.zeros((0, 3)), np.zeros(0, int), "empty"),
    (np.array([[0.5, 0.5], [0.5, 0.5]]), [0], "mismatch"),
    (np.array([[0.6, 0.6]]), [0], "sum to 1"),
    (np.array([0.5, 0.5]), [0], "shape"),
    (np.array([[0.5, 0.5]]), [[0]], "shape"),
    (np.array([[1.5, -0.5]]), [0], r"\[0, 1\]"),
    (np.array([[1.0]]), [0], "at least 2"),
])
def test_bad_input(probs, labels, match):
    with pytest.raises(ValueError, match=match):
        M.ece(probs, labels)


def test_bad_options():
    p, y = _random(10, 3, 0)
    with pytest.raises(ValueError, match="n_bins"):
        M.ece(p, y, n_bins=0)
    with pytest.raises(ValueError, match="binning"):
        M.ece(p, y, binning="average")
    with pytest.raises(ValueError, match="norm"):
        M.ece(p, y, norm="l3")
    with pytest.raises(TypeError):
        M.ece(np.array([["a", "b"]], dtype=object), [0])


def test_row_sum_tolerance_is_1e_3():
    p = np.array([[0.6, 0.4 + 9e-4]])
    M.ece(p, [0])
    with pytest.raises(ValueError, match="1e-3|0.001"):
        M.ece(np.array([[0.6, 0.4 + 2e-3]]), [0])


# ---- bootstrap ------------------------------------------------------------------------------------

@pytest.mark.parametrize("metric", ["accuracy", "nll", "brier", "ece", "aurc", M.rmsce])
def test_bootstrap_contains_point_and_is_deterministic(metric):
    rng = np.random.default_rng(0)
    p = M.softmax(rng.normal(size=(500, 5)) * 2 + np.eye(5)[rng.integers(0, 5, 500)] * 2)
    y = rng.integers(0, 5, 500)
    y[:300] = p[:300].argmax(1)
    a = M.bootstrap_ci(metric, p, y, n_boot=200, seed=3)
    b = M.bootstrap_ci(metric, p, y, n_boot=200, seed=3)
    assert a == b
    point, lo, hi = a
    assert lo <= point <= hi and lo < hi
    assert M.bootstrap_ci(metric, p, y, n_boot=200, seed=4) != a


def test_bootstrap_vectorised_matches_loop_and_errors():
    p, y = _random(100, 3, 0)
    fast = M.bootstrap_ci("accuracy", p, y, n_boot=50, seed=1)
    slow = M.bootstrap_ci(lambda q, t: M.accuracy(q, t), p, y, n_boot=50, seed=1)
    assert fast == pytest.approx(slow)
    with pytest.raises(ValueError, match="unknown metric"):
        M.bootstrap_ci("nope", p, y)
    with pytest.raises(ValueError, match="alpha"):
        M.bootstrap_ci("ece", p, y, alpha=1.5)
    with pytest.raises(ValueError, match="n_boot"):
        M.bootstrap_ci("ece", p, y, n_boot=1)


@pytest.mark.parametrize("name,fn", [("ece", M.ece), ("mce", M.mce), ("rmsce", M.rmsce)])
@pytest.mark.parametrize("n_bins", [3, 15])
def test_bootstrap_vectorised_ece_matches_per_resample(name, fn, n_bins):
    p, y = _random(300, 4, seed=n_bins)
    fast = M.bootstrap_ci(name, p, y, n_boot=60, seed=5, n_bins=n_bins)
    slow = M.bootstrap_ci(lambda q, t, **kw: fn(q, t, **kw), p, y, n_boot=60, seed=5, n_bins=n_bins)
    assert fast == pytest.approx(slow, rel=1e-10, abs=1e-14)
    mass = M.bootstrap_ci(name, p, y, n_boot=30, seed=5, n_bins=n_bins, binning="mass")
    assert mass == pytest.approx(M.bootstrap_ci(lambda q, t, **kw: fn(q, t, **kw), p, y, n_boot=30, seed=5,
                                                n_bins=n_bins, binning="mass"))


def test_paired_bootstrap_difference():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(800, 10)) * 2
    pa, pb = M.softmax(z), M.softmax(z * 3)  # b: same ranking, much more over-confident
    y = np.minimum((rng.random(800)[:, None] > np.cumsum(pa, 1)).sum(1), 9)  # a is calibrated
    d, lo, hi = M.bootstrap_diff_ci("ece", pa, pb, y, n_boot=200, seed=1)
    assert d == pytest.approx(M.ece(pb, y) - M.ece(pa, y))
    assert 0 < lo <= d <= hi  # significant increase
    # identical predictions: difference exactly 0 on every resample
    assert M.bootstrap_diff_ci("nll", pa, pa, y, n_boot=50) == (0.0, 0.0, 0.0)
    # same resamples as the unpaired CI: accuracy is unchanged by the temperature
    assert M.bootstrap_diff_ci("accuracy", pa, pb, y, n_boot=50) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="same shape"):
        M.bootstrap_diff_ci("ece", pa, pb[:, :5] / pb[:, :5].sum(1, keepdims=True), y)


def test_tiny_float_overshoot_is_clipped():
    p = np.array([[1.0 + 1e-7, -1e-7], [0.3, 0.7]])
    assert M.reliability_bins(p, [0, 1], n_bins=4).count.tolist() == [0, 0, 1, 1]
    assert M.nll(p, [0, 1]) == pytest.approx(-np.log(0.7) / 2)


# ---- mutation-run survivors (scripts/mutation.sh metrics/calibration) --------------------------------
def test_equal_mass_ties_keep_input_order():
    """Equal-mass bins sort stably: among tied confidences the input order decides the bin
    (documented). Expected ECE computed here from that rule with plain numpy."""
    rng = np.random.default_rng(0)
    n, n_bins = 200, 4
    conf = rng.choice([0.55, 0.7, 0.9], size=n)
    correct = rng.random(n) < 0.7
    labels = np.where(correct, 0, 1)
    probs = np.stack([conf, 1 - conf], axis=1)  # conf > 0.5: class 0 is the top label
    order = sorted(range(n), key=lambda i: conf[i])  # Python's sort is stable
    want = 0.0
    for part in np.array_split(np.array(order), n_bins):
        want += len(part) / n * abs(correct[part].mean() - conf[part].mean())
    assert M.ece(probs, labels, n_bins=n_bins, binning="mass") == pytest.approx(want, abs=1e-12)
    assert M.ace(probs, labels, n_bins=n_bins) == pytest.approx(want, abs=1e-12)


def test_default_bins_are_15():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(300, 4)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = rng.integers(0, 4, 300)
    for fn, kw in ((M.ace, {}), (M.overconfidence, {}), (M.underconfidence, {}), (M.ece, {})):
        assert fn(probs, labels) == fn(probs, labels, 15, **kw)
        assert fn(probs, labels) != fn(probs, labels, 16, **kw)


def test_option_errors_name_the_argument():
    p, y = np.array([[0.6, 0.4]]), np.array([0])
    for fn in (M.ece, M.overconfidence, M.underconfidence):
        with pytest.raises(ValueError) as e:
            fn(p, y, binning="quantile")
        assert str(e.value) == "binning must be one of ('width', 'mass'), got 'quantile'"
    with pytest.raises(ValueError) as e:
        M.ece(p, y, norm="l3")
    assert str(e.value) == "norm must be one of ('l1', 'l2', 'max'), got 'l3'"


def test_no_samples_is_a_clear_error():
    from prunecal.metrics.calibration import bin_stats, ce_from_stats

    empty = bin_stats(np.zeros(0), np.zeros(0, dtype=bool), 5)
    for norm in ("l1", "l2", "max"):
        with pytest.raises(ValueError) as e:
            ce_from_stats(empty, norm)
        assert str(e.value) == "no samples: calibration error is undefined"


# ---- mutation-run survivors (scripts/mutation.sh metrics/reliability) --------------------------------
def test_reliability_defaults_dtypes_and_binning_label():
    import warnings

    from prunecal.metrics.calibration import bin_stats
    from prunecal.metrics.reliability import reliability_from_stats

    p, y = _random(200, 4, seed=3)
    rb = M.reliability_bins(p, y)
    assert rb.count.shape == (15,) and rb.to_dict()["n_bins"] == 15  # default: 15 bins
    assert rb.count.dtype == np.int64 and rb.binning == "width"  # documented int64 counts
    mass = M.reliability_bins(p, y, n_bins=4, binning="mass")
    assert mass.binning == "mass" and mass.to_dict()["binning"] == "mass"
    assert mass.count.tolist() == [50, 50, 50, 50]
    conf = p.max(1)
    st = bin_stats(conf, p.argmax(1) == y, 5, "width")
    assert reliability_from_stats(st).binning == "width"  # default label
    assert reliability_from_stats(st, "mass").binning == "mass"
    with warnings.catch_warnings():  # empty bins give NaN without a RuntimeWarning
        warnings.simplefilter("error")
        q = np.array([[0.9, 0.1], [0.8, 0.2]])
        rb = M.reliability_bins(q, [0, 1], n_bins=10)
    assert np.isnan(rb.confidence[:8]).all() and np.isnan(rb.accuracy[:8]).all()
    assert rb.accuracy[8:].tolist() == [0.0, 1.0]
    with pytest.raises(ValueError) as e:
        M.reliability_bins(p, y, binning="quantile")
    assert str(e.value) == "binning must be one of ('width', 'mass'), got 'quantile'"
