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


def test_relative_mce_many_corruptions_against_numpy():
    """15 corruptions with different degradations: the mean over corruptions of the per-corruption
    ratios (numpy, from the definition), not their sum, nor a ratio of pooled sums."""
    rng = np.random.default_rng(3)
    e0, b0 = 0.08, 0.05
    e = rng.uniform(0.1, 0.7, size=(15, 5))
    b = rng.uniform(0.1, 0.7, size=(15, 5))
    err = {c: list(e[i]) for i, c in enumerate(R.BENCHMARK_CORRUPTIONS)}
    base = {(c, s + 1): b[i, s] for i, c in enumerate(R.BENCHMARK_CORRUPTIONS) for s in range(5)}
    per_np = (e - e0).sum(1) / (b - b0).sum(1)
    m, per = R.relative_mce(err, e0, base, b0, per_corruption=True)
    np.testing.assert_allclose([per[c] for c in R.BENCHMARK_CORRUPTIONS], per_np, rtol=1e-12)
    assert m == pytest.approx(per_np.mean(), rel=1e-12)
    assert m != pytest.approx(per_np.sum()) and m != pytest.approx((e - e0).sum() / (b - b0).sum())
    assert R.relative_mce(err, e0, base, b0) == pytest.approx(m, rel=1e-12)
    # a subset of corruptions and severities: only those enter
    sub = ["fog", "snow"]
    idx = [R.BENCHMARK_CORRUPTIONS.index(c) for c in sub]
    want = np.mean([(e[i, :3] - e0).sum() / (b[i, :3] - b0).sum() for i in idx])
    assert R.relative_mce(err, e0, base, b0, sub, [1, 2, 3]) == pytest.approx(want, rel=1e-12)
    # the unnormalised mean error and Hendrycks' mCE of the same tables, from numpy
    assert R.mean_corruption_error(err) == pytest.approx(e.mean(), rel=1e-12)
    assert R.mean_corruption_error(err, sub, [2, 4]) == pytest.approx(e[idx][:, [1, 3]].mean(), rel=1e-12)
    assert R.mce_hendrycks(err, base, sub, [1, 5]) == pytest.approx(
        np.mean([e[i, [0, 4]].sum() / b[i, [0, 4]].sum() for i in idx]), rel=1e-12)


def test_normalize_table_layouts_and_errors():
    t = R.normalize_table({"fog": {2: 0.5, 1: np.float32(0.25)}, ("snow", np.int64(3)): 0.75, np.str_("frost"): (0.1,)})
    assert t == {"fog": {2: 0.5, 1: 0.25}, "snow": {3: 0.75}, "frost": {1: 0.1}}
    assert all(type(k) is str for k in t) and all(type(s) is int for d in t.values() for s in d)
    assert R.normalize_table({"nll": [2.5, 7.0]}) == {"nll": {1: 2.5, 2: 7.0}}  # not fractions: fine
    with pytest.raises(ValueError, match="fraction"):
        R.normalize_table({"nll": [2.5]}, fraction=True)
    with pytest.raises(ValueError, match="fraction"):
        R.normalize_table({"fog": [-0.01]}, fraction=True)
    R.normalize_table({"fog": [0.0, 1.0]}, fraction=True)  # both ends allowed
    with pytest.raises(ValueError, match=r"\(corruption, severity\) pairs, got \('fog', 1, 2\)"):
        R.normalize_table({("fog", 1, 2): 0.5})
    with pytest.raises(ValueError, match="strings"):
        R.normalize_table({(3, 1): 0.5})
    with pytest.raises(ValueError, match="sequence over severities"):
        R.normalize_table({"fog": 0.5})
    with pytest.raises(ValueError, match="corruption names"):
        R.normalize_table({3: [0.5]})
    for sev in (True, 1.0, 0, -1):
        with pytest.raises(ValueError, match="integer >= 1"):
            R.normalize_table({("fog", sev): 0.5})
    with pytest.raises(TypeError, match="number"):
        R.normalize_table({"fog": ["high"]})
    with pytest.raises(ValueError, match="not finite"):
        R.normalize_table({"fog": [float("inf")]})
    with pytest.raises(ValueError, match="non-empty"):
        R.normalize_table([("fog", 0.5)])
    with pytest.raises(ValueError, match="lacks corruptions: fog, snow"):
        R.mean_corruption_error({"frost": [0.1] * 5}, ["fog", "frost", "snow"])


def _message(exc, fn, *args, **kw) -> str:
    with pytest.raises(exc) as e:
        fn(*args, **kw)
    return str(e.value)


def test_error_messages_name_the_table_and_the_unit():
    """Each function names which of its tables (accuracy / error / baseline error / metric) and
    which unit is wrong, in full (killed mutants: labels swapped, dropped or mangled)."""
    fog = {"fog": [0.5] * 5}
    bad, text, inf = {"fog": [0.5, 1.5]}, {"fog": ["x"]}, {"fog": [float("inf")]}
    frac = "must be a fraction in [0, 1] (not percent), got 1.5"
    assert _message(ValueError, R.corruption_errors, {"fog": [1.5]}) == f"accuracy for fog/1 {frac}"
    assert _message(TypeError, R.corruption_errors, text) == "accuracy for fog/1 must be a number, got str"
    assert _message(ValueError, R.mean_corruption_error, bad, ["fog"], [1]) == f"error for fog/2 {frac}"
    assert _message(ValueError, R.mean_corruption_error, fog, ["fog", "snow"]) == "errors lacks corruptions: snow"
    assert _message(ValueError, R.mean_corruption_error, {"fog": [0.5]}, ["fog"], [1, 2, 3]) == \
        "errors lacks (corruption/severity): fog/2, fog/3"
    assert _message(ValueError, R.mce_hendrycks, bad, fog, ["fog"], [1]) == f"error for fog/2 {frac}"
    assert _message(ValueError, R.mce_hendrycks, fog, bad, ["fog"], [1]) == f"baseline error for fog/2 {frac}"
    assert _message(ValueError, R.mce_hendrycks, {"fog": [0.5]}, fog, ["fog"], [1, 2]) == \
        "errors lacks (corruption/severity): fog/2"
    assert _message(ValueError, R.mce_hendrycks, fog, {"fog": [0.5]}, ["fog"], [1, 2]) == \
        "baseline_errors lacks (corruption/severity): fog/2"
    assert _message(ValueError, R.relative_mce, bad, 0.1, fog, 0.1, ["fog"], [1]) == f"error for fog/2 {frac}"
    assert _message(ValueError, R.relative_mce, fog, 0.1, bad, 0.1, ["fog"], [1]) == \
        f"baseline error for fog/2 {frac}"
    assert _message(ValueError, R.relative_mce, {"fog": [0.5]}, 0.1, fog, 0.1, ["fog"], [1, 2]) == \
        "errors lacks (corruption/severity): fog/2"
    assert _message(ValueError, R.relative_mce, fog, 0.1, {"fog": [0.5]}, 0.1, ["fog"], [1, 2]) == \
        "baseline_errors lacks (corruption/severity): fog/2"
    assert _message(TypeError, R.relative_mce, fog, "x", fog, 0.1, ["fog"]) == \
        "clean_error for clean must be a number, got str"
    assert _message(TypeError, R.relative_mce, fog, 0.1, fog, None, ["fog"]) == \
        "baseline_clean_error for clean must be a number, got NoneType"
    assert _message(ValueError, R.relative_mce, fog, 1.5, fog, 0.1, ["fog"]) == \
        "clean_error must be a fraction in [0, 1], got 1.5"
    assert _message(ValueError, R.relative_mce, fog, 0.1, fog, -0.5, ["fog"]) == \
        "baseline_clean_error must be a fraction in [0, 1], got -0.5"
    assert _message(TypeError, R.mean_over_corruptions, text) == "metric for fog/1 must be a number, got str"
    assert _message(ValueError, R.mean_over_corruptions, {"fog": [0.5]}, ["fog"], [1, 2]) == \
        "metric_table lacks (corruption/severity): fog/2"
    assert _message(TypeError, R.per_corruption_mean, text) == "metric for fog/1 must be a number, got str"
    assert _message(TypeError, R.normalize_table, text) == "value for fog/1 must be a number, got str"
    assert _message(ValueError, R.normalize_table, inf) == "value for fog/1 is not finite: inf"
    assert _message(ValueError, R.normalize_table, {"fog": 0.5}) == \
        "values of 'fog' must be a sequence over severities 1..5 or a dict severity -> value, got float"


def test_fraction_bounds_and_degenerate_baselines():
    with pytest.raises(ValueError, match="fraction"):
        R.normalize_table({"fog": [1.0001]}, fraction=True)  # just above 1
    for fn in (lambda t: R.mean_corruption_error(t, ["fog"], [1]),
               lambda t: R.mce_hendrycks(t, {"fog": [0.5]}, ["fog"], [1]),
               lambda t: R.mce_hendrycks({"fog": [0.5]}, t, ["fog"], [1]),
               lambda t: R.relative_mce(t, 0.1, {"fog": [0.5]}, 0.1, ["fog"], [1]),
               lambda t: R.relative_mce({"fog": [0.5]}, 0.1, t, 0.1, ["fog"], [1])):
        with pytest.raises(ValueError, match="fraction"):
            fn({"fog": [1.25]})  # errors are fractions in every robustness summary
    # clean errors of exactly 0 and 1 are allowed
    err, base = {"fog": [0.25, 0.5]}, {"fog": [0.5, 0.75]}
    assert R.relative_mce(err, 0.0, base, 0.0, ["fog"], [1, 2]) == pytest.approx(0.75 / 1.25)
    assert R.relative_mce(err, 1.0, base, 0.0, ["fog"], [1, 2]) == pytest.approx((0.75 - 2.0) / 1.25)
    # a baseline whose corrupted error equals its clean error exactly: degradation 0, undefined
    with pytest.raises(ValueError, match="does not exceed its clean error"):
        R.relative_mce(err, 0.25, {"fog": [0.5, 0.5]}, 0.5, ["fog"], [1, 2])


def test_mean_over_corruptions_selection():
    t = {"fog": [0.1, 0.2, 0.3, 0.4, 0.5], "snow": [1.0, 2.0, 3.0, 4.0, 5.0]}
    assert R.mean_over_corruptions(t, ["fog"]) == pytest.approx(0.3)  # severities default 1..5
    assert R.mean_over_corruptions(t, severities=[1]) == pytest.approx(0.55)  # every corruption at severity 1
    assert R.mean_over_corruptions(t, ["snow"], [2, 4]) == pytest.approx(3.0)
    assert R.mean_over_corruptions(t) == pytest.approx((1.5 + 15.0) / 10)
    with pytest.raises(ValueError, match="snow/6"):
        R.mean_over_corruptions(t, ["snow"], [6])
