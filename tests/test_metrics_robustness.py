"""Corruption errors, mCE (Hendrycks), relative mCE and means over corruptions."""
from __future__ import annotations

import numpy as np
import pytest

from prunecal.metrics import robustness as R


def _table(fn):
    return {c: [fn(i, s) for s in range(1, 6)] for i, c in enumerate(R.BENCHMARK_CORRUPTIONS)}


def test_benchmark_names():
    assert len(R.BENCHMARK_CORRUPTIONS) == 15 == len(set(R.BENCHMARK_CORRUPTIONS))
    assert R.BENCHMARK_15 == R.BENCHMARK_CORRUPTIONS
    assert R.BENCHMARK_CORRUPTIONS[0] == "gaussian_noise" and R.BENCHMARK_CORRUPTIONS[-1] == "jpeg_compression"
    from prunecal import corruptions  # must agree with the corruption suite (pure Python: always there)

    assert tuple(corruptions.BENCHMARK) == R.BENCHMARK_CORRUPTIONS


def test_corruption_errors_both_layouts():
    seq = {"fog": [0.9, 0.8, 0.7, 0.6, 0.5]}
    pairs = {("fog", s): a for s, a in zip(range(1, 6), [0.9, 0.8, 0.7, 0.6, 0.5])}
    e1, e2 = R.corruption_errors(seq), R.corruption_errors(pairs)
    assert e1 == e2
    e3 = R.corruption_errors({("fog", np.int64(s)): np.float32(a) for (_, s), a in pairs.items()})
    assert e3["fog"] == pytest.approx(e1["fog"]) and all(type(k) is int for k in e3["fog"])
    assert R.corruption_errors({"fog": np.array([0.9, 0.8, 0.7, 0.6, 0.5])})["fog"] == pytest.approx(e1["fog"])
    assert e1["fog"] == pytest.approx({1: 0.1, 2: 0.2, 3: 0.3, 4: 0.4, 5: 0.5})


def test_mean_corruption_error_hand_worked():
    acc = _table(lambda i, s: 1.0 - 0.01 * s)  # error = s/100 for every corruption
    err = R.corruption_errors(acc)
    # mean over s of s/100 = 3/100
    assert R.mean_corruption_error(err) == pytest.approx(0.03)
    assert R.mean_corruption_error(err, ["fog"], [5]) == pytest.approx(0.05)


def test_mce_hendrycks_hand_worked_and_formula():
    rng = np.random.default_rng(0)
    e = rng.uniform(0.05, 0.6, size=(15, 5))
    b = rng.uniform(0.05, 0.6, size=(15, 5))
    err = {c: list(e[i]) for i, c in enumerate(R.BENCHMARK_CORRUPTIONS)}
    base = {(c, s + 1): b[i, s] for i, c in enumerate(R.BENCHMARK_CORRUPTIONS) for s in range(5)}
    m, per = R.mce_hendrycks(err, base, per_corruption=True)
    np.testing.assert_allclose([per[c] for c in R.BENCHMARK_CORRUPTIONS], e.sum(1) / b.sum(1))
    assert m == pytest.approx(np.mean(e.sum(1) / b.sum(1)))
    assert R.mce_hendrycks(err, base) == pytest.approx(m)
    # hand: model errors twice the baseline's -> CE 2 everywhere
    half = {c: [v / 2 for v in vals] for c, vals in err.items()}
    assert R.mce_hendrycks(err, half) == pytest.approx(2.0)
    assert R.mce_hendrycks(err, err) == pytest.approx(1.0)


def test_relative_mce_hand_worked():
    # one corruption: model errors .2,.3,.4,.5,.6 (sum 2.0), clean .1 -> degradation sum 1.5
    # baseline .3,.4,.5,.6,.7 (sum 2.5), clean .1 -> degradation sum 2.0 -> relCE .75
    err = {"fog": [.2, .3, .4, .5, .6]}
    base = {"fog": [.3, .4, .5, .6, .7]}
    m, per = R.relative_mce(err, 0.1, base, 0.1, ["fog"], per_corruption=True)
    assert m == pytest.approx(0.75) and per == pytest.approx({"fog": 0.75})
    # baseline clean .2 -> baseline degradation 1.5 -> relCE 1
    assert R.relative_mce(err, 0.1, base, 0.2, ["fog"]) == pytest.approx(1.0)


def test_mean_over_corruptions():
    ece = {("fog", 1): 0.1, ("fog", 2): 0.3, ("snow", 1): 0.2}
    assert R.mean_over_corruptions(ece) == pytest.approx(0.2)
    assert R.mean_over_corruptions(ece, ["fog"], [1, 2]) == pytest.approx(0.2)
    assert R.per_corruption_mean(ece) == pytest.approx({"fog": 0.2, "snow": 0.2})
    with pytest.raises(ValueError, match="snow/2"):
        R.mean_over_corruptions(ece, ["fog", "snow"], [1, 2])
    nll = {"fog": [1.0, 3.0]}  # metrics need not be fractions
    assert R.mean_over_corruptions(nll) == pytest.approx(2.0)


def test_missing_and_bad_entries_are_named():
    err = R.corruption_errors(_table(lambda i, s: 0.8))
    del err["fog"]
    with pytest.raises(ValueError, match="fog"):
        R.mean_corruption_error(err)
    err2 = R.corruption_errors(_table(lambda i, s: 0.8))
    del err2["snow"][4]
    with pytest.raises(ValueError, match="snow/4"):
        R.mce_hendrycks(R.corruption_errors(_table(lambda i, s: 0.8)), err2)
    with pytest.raises(ValueError, match="percent"):
        R.corruption_errors({"fog": [91.0, 80.0]})
    with pytest.raises(ValueError, match="not finite"):
        R.corruption_errors({"fog": [float("nan")]})
    with pytest.raises(ValueError, match="severity"):
        R.corruption_errors({("fog", 0): 0.5})
    with pytest.raises(ValueError, match="duplicate"):
        R.corruption_errors({("fog", 1): 0.5, "fog": [0.4]})
    with pytest.raises(ValueError, match="non-empty"):
        R.corruption_errors({})


def test_zero_baseline_is_a_clear_error():
    err = R.corruption_errors(_table(lambda i, s: 0.8))
    zero = R.corruption_errors(_table(lambda i, s: 1.0))
    with pytest.raises(ValueError, match="baseline error of 'gaussian_noise' is 0"):
        R.mce_hendrycks(err, zero)
    flat = R.corruption_errors(_table(lambda i, s: 0.9))  # baseline error .1 everywhere = its clean error
    with pytest.raises(ValueError, match="does not exceed its clean error"):
        R.relative_mce(err, 0.1, flat, 0.1)
    with pytest.raises(ValueError, match="clean_error"):
        R.relative_mce(err, 1.5, flat, 0.1)
