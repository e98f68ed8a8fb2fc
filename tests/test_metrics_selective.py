"""Risk-coverage, AURC / E-AURC and misclassification AUROC."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from prunecal import metrics as M


def _from_conf(conf, correct):
    """Two-class probs whose top-label confidence is ``conf`` and whose correctness is ``correct``."""
    conf = np.asarray(conf, float)
    p = np.stack([conf, 1 - conf], 1)
    y = np.where(np.asarray(correct, bool), 0, 1)
    return p, y


def test_aurc_hand_worked_no_ties():
    # sorted conf .9 .8 .7 .6 ; correct 1 0 1 0
    p, y = _from_conf([0.7, 0.9, 0.6, 0.8], [1, 1, 0, 0])
    # risks at k=1..4: 0/1, 1/2, 1/3, 2/4 -> AURC = (0 + .5 + 1/3 + .5)/4
    assert M.aurc(p, y) == pytest.approx((0 + 0.5 + 1 / 3 + 0.5) / 4)
    # optimal (errors last): 0, 0, 1/3, 2/4
    assert M.aurc_optimal(4, 2) == pytest.approx((1 / 3 + 0.5) / 4)
    assert M.eaurc(p, y) == pytest.approx(0.5 / 4)
    rc = M.risk_coverage_curve(p, y)
    np.testing.assert_allclose(rc.coverage, [.25, .5, .75, 1.0])
    np.testing.assert_allclose(rc.risk, [0, .5, 1 / 3, .5])
    np.testing.assert_allclose(rc.threshold, [.9, .8, .7, .6])


def test_ties_are_grouped_and_averaged():
    # conf .9 (ok), .7 (ok), .7 (wrong), .6 (wrong)
    p, y = _from_conf([0.9, 0.7, 0.7, 0.6], [1, 1, 0, 0])
    rc = M.risk_coverage_curve(p, y)
    np.testing.assert_allclose(rc.coverage, [.25, .75, 1.0])
    np.testing.assert_allclose(rc.risk, [0, 1 / 3, .5])
    # the two tie orders give (0 + 0 + 1/3 + 1/2)/4 and (0 + 1/2 + 1/3 + 1/2)/4: AURC is their mean
    assert M.aurc(p, y) == pytest.approx(((0 + 0 + 1 / 3 + .5) + (0 + .5 + 1 / 3 + .5)) / 8)
    # swapping the tied rows changes nothing
    assert M.aurc(p[[0, 2, 1, 3]], y[[0, 2, 1, 3]]) == pytest.approx(M.aurc(p, y))
    # all tied -> error rate
    p2, y2 = _from_conf([0.6] * 5, [1, 0, 1, 1, 0])
    assert M.aurc(p2, y2) == pytest.approx(0.4)


def _aurc_classic(conf, correct):
    order = np.argsort(-conf, kind="stable")
    err = 1 - correct[order]
    return np.mean(np.cumsum(err) / np.arange(1, len(err) + 1))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([0.55, 0.6, 0.7, 0.8, 0.95]), st.booleans()), min_size=1, max_size=7))
def test_aurc_equals_mean_over_tie_breaks(rows):
    conf = np.array([r[0] for r in rows])
    correct = np.array([r[1] for r in rows], int)
    p, y = _from_conf(conf, correct)
    vals = [_aurc_classic(conf[list(perm)], correct[list(perm)]) for perm in itertools.permutations(range(len(rows)))]
    assert M.aurc(p, y) == pytest.approx(np.mean(vals), abs=1e-12)
    assert M.eaurc(p, y) >= -1e-12
    assert 0.0 <= M.aurc(p, y) <= 1.0


def test_aurc_matches_classic_without_ties():
    rng = np.random.default_rng(0)
    p = M.softmax(rng.normal(size=(500, 10)) * 3)
    y = rng.integers(0, 10, 500)
    conf, correct = p.max(1), (p.argmax(1) == y).astype(int)
    assert M.aurc(p, y) == pytest.approx(_aurc_classic(conf, correct), rel=1e-12)
    # perfect ranking: E-AURC 0 ; fully inverted ranking: the worst
    perfect_conf = np.where(correct == 1, 0.9, 0.6) + rng.random(500) * 0.05
    pp, yy = _from_conf(perfect_conf, correct)
    assert M.eaurc(pp, yy) == pytest.approx(0.0, abs=1e-12)
    n_err = int((correct == 0).sum())
    assert M.aurc(pp, yy) == pytest.approx(M.aurc_optimal(500, n_err))
    # closed-form approximation of the optimum: r + (1 - r) ln(1 - r)
    r = n_err / 500
    assert M.aurc_optimal(500, n_err) == pytest.approx(r + (1 - r) * np.log(1 - r), abs=5e-3)


def test_misclassification_auroc_matches_torchmetrics():
    from torchmetrics.functional.classification import binary_auroc

    rng = np.random.default_rng(1)
    p = M.softmax(rng.normal(size=(1000, 10)) * 2)
    y = np.where(rng.random(1000) < p.max(1), p.argmax(1), rng.integers(0, 10, 1000))
    conf, correct = p.max(1), p.argmax(1) == y
    ref = binary_auroc(torch.tensor(conf), torch.tensor(correct.astype(np.int64))).item()
    assert M.misclassification_auroc(p, y) == pytest.approx(ref, abs=1e-6)
    assert M.misclassification_auroc(p, y) > 0.55  # informative by construction


def test_auroc_hand_worked_ties_and_errors():
    # correct confs .9, .7 ; wrong confs .7, .6 -> pairs: (.9>.7)1 (.9>.6)1 (.7=.7).5 (.7>.6)1 -> 3.5/4
    p, y = _from_conf([0.9, 0.7, 0.7, 0.6], [1, 1, 0, 0])
    assert M.misclassification_auroc(p, y) == pytest.approx(3.5 / 4)
    p, y = _from_conf([0.9, 0.8], [1, 1])
    with pytest.raises(ValueError, match="all predictions are correct"):
        M.misclassification_auroc(p, y)
    p, y = _from_conf([0.9, 0.8], [0, 0])
    with pytest.raises(ValueError, match="all predictions are wrong"):
        M.misclassification_auroc(p, y)


def test_bad_input():
    with pytest.raises(ValueError):
        M.aurc(np.zeros((0, 2)), [])
    with pytest.raises(ValueError, match="mismatch"):
        M.risk_coverage_curve(np.array([[0.5, 0.5]]), [0, 1])
    with pytest.raises(ValueError, match="n_errors"):
        M.aurc_optimal(3, 4)


def test_risk_at_coverage_and_coverage_at_risk():
    # sorted conf .9 .8 .7 .6 ; correct 1 0 1 0 -> risks 0, 1/2, 1/3, 1/2
    p, y = _from_conf([0.7, 0.9, 0.6, 0.8], [1, 1, 0, 0])
    assert M.risk_at_coverage(p, y, 0.25) == 0.0
    assert M.risk_at_coverage(p, y, 0.5) == pytest.approx(0.5)
    assert M.risk_at_coverage(p, y, 0.6) == pytest.approx(1 / 3)  # ceil(2.4) = 3 samples
    assert M.risk_at_coverage(p, y, 1.0) == pytest.approx(0.5)
    assert M.coverage_at_risk(p, y, 0.0) == 0.25
    assert M.coverage_at_risk(p, y, 0.4) == 0.75
    assert M.coverage_at_risk(p, y, 0.5) == 1.0
    p2, y2 = _from_conf([0.9, 0.8], [0, 1])
    assert M.coverage_at_risk(p2, y2, 0.1) == 0.0
    # ties: two tied at the top, one wrong -> expected risk of the top-1 is 1/2
    p3, y3 = _from_conf([0.9, 0.9, 0.5], [1, 0, 1])
    assert M.risk_at_coverage(p3, y3, 1 / 3) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="coverage"):
        M.risk_at_coverage(p, y, 0.0)
    with pytest.raises(ValueError, match="risk"):
        M.coverage_at_risk(p, y, 1.5)


# ---- mutation-run survivors (scripts/mutation.sh metrics/selective) ----------------------------------
def test_aurc_optimal_bounds_against_the_definition():
    from prunecal.metrics.selective import aurc_optimal

    def perfect(n, e):  # correct samples first: risk at coverage k/n is max(0, k - (n - e)) / k
        return float(np.mean([max(0, k - (n - e)) / k for k in range(1, n + 1)]))

    for n, e in ((1, 0), (1, 1), (4, 0), (4, 4), (5, 2), (7, 6)):
        assert aurc_optimal(n, e) == pytest.approx(perfect(n, e), abs=1e-12)
    for n, e in ((0, 0), (3, -1), (3, 4)):
        with pytest.raises(ValueError) as err:
            aurc_optimal(n, e)
        assert str(err.value) == f"need n >= 1 and 0 <= n_errors <= n, got n={n}, n_errors={e}"


def test_selective_defaults_and_bounds():
    from prunecal.metrics import misclassification_auroc
    from prunecal.metrics.selective import coverage_at_risk, risk_at_coverage

    rng = np.random.default_rng(2)
    conf = rng.uniform(0.5, 1.0, 400)
    probs = np.stack([conf, 1 - conf], axis=1)
    labels = (rng.random(400) > conf).astype(int)  # wrong more often at low confidence
    assert risk_at_coverage(probs, labels) == risk_at_coverage(probs, labels, 0.9)
    assert risk_at_coverage(probs, labels) != risk_at_coverage(probs, labels, 1.0)
    assert coverage_at_risk(probs, labels) == coverage_at_risk(probs, labels, 0.01)
    assert coverage_at_risk(probs, labels, 1.0) == 1.0  # every threshold qualifies
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match=r"coverage must be in \(0, 1\]"):
            risk_at_coverage(probs, labels, bad)
    for bad in (1.01, -0.1):
        with pytest.raises(ValueError, match=r"risk must be in \[0, 1\]"):
            coverage_at_risk(probs, labels, bad)
    with pytest.raises(ValueError) as e:
        misclassification_auroc(probs, probs.argmax(1))
    assert str(e.value) == ("misclassification AUROC is undefined: all predictions are correct "
                            "(needs both correct and wrong ones)")
