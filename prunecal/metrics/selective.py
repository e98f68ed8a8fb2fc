"""Selective prediction: risk-coverage curve, AURC, E-AURC and misclassification AUROC.

The model abstains on its least confident samples; confidence is the top-label probability
``max_k p_ik`` and risk is the top-1 error rate of the accepted samples.

- Risk-coverage curve (Geifman & El-Yaniv 2017; Geifman et al. 2019): one point per distinct
  confidence threshold ``t`` (descending), accepting every sample with ``c_i >= t``. Tied
  confidences are accepted or rejected together, so the curve does not depend on the input
  order of ties.
- AURC: ``(1/N) sum_{k=1..N} risk(k)``, the risk of the ``k`` most confident samples. Inside a
  run of tied confidences the error count is the expectation under uniformly random
  tie-breaking (linear within the run), which makes AURC order-invariant and equal to the
  classical definition when there are no ties. All-tied confidences give AURC = error rate
  (the value of a random ranking).
- E-AURC (Geifman et al. 2019): ``AURC - AURC*``, where ``AURC*`` is the AURC of a perfect
  ranking (all errors last) with the same ``N`` and error count, computed with the same
  discrete sum.
- ``risk_at_coverage`` / ``coverage_at_risk``: operating points for a deployment that must
  answer a fraction of the inputs, or keep the error below a budget.
- Misclassification AUROC (Hendrycks & Gimpel 2017): AUROC of the confidence for telling
  correct from wrong predictions = P(c_correct > c_wrong) + 0.5 P(tie), via the
  Mann-Whitney U statistic on ``scipy.stats.rankdata`` average ranks. It is undefined when
  all predictions are correct (or all wrong): that raises ``ValueError``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import rankdata

from ._validate import check_probs_labels
from .scoring import top_label


@dataclass(frozen=True)
class RiskCoverage:
    """Risk-coverage curve; arrays ``(T,)`` for ``T`` distinct confidence thresholds.

    ``coverage`` (fraction accepted, increasing to 1), ``risk`` (error rate of the accepted),
    ``threshold`` (confidence threshold, decreasing)."""

    coverage: np.ndarray
    risk: np.ndarray
    threshold: np.ndarray


def _sorted_groups(conf: np.ndarray, correct: np.ndarray):
    order = np.argsort(-conf, kind="stable")
    c = conf[order]
    err = (~correct[order]).astype(np.float64)
    # group boundaries: start of every run of equal confidence
    starts = np.flatnonzero(np.r_[True, c[1:] != c[:-1]])
    ends = np.r_[starts[1:], c.size]
    return c, err, starts, ends


def _rc_curve(conf: np.ndarray, correct: np.ndarray) -> RiskCoverage:
    c, err, starts, ends = _sorted_groups(conf, correct)
    cum_err = np.cumsum(err)[ends - 1]
    return RiskCoverage(ends / c.size, cum_err / ends, c[starts])


def _expected_errors(conf: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """Expected error count among the ``k`` most confident samples, ``k = 1..N`` (ties broken
    uniformly at random, so linear inside a run of tied confidences)."""
    c, err, starts, ends = _sorted_groups(conf, correct)
    cum = np.cumsum(err)
    e_before = np.r_[0.0, cum[ends[:-1] - 1]]  # errors before each group
    g_err = cum[ends - 1] - e_before
    g_size = (ends - starts).astype(np.float64)
    gid = np.repeat(np.arange(starts.size), ends - starts)
    k = np.arange(1, c.size + 1, dtype=np.float64)
    return e_before[gid] + (k - starts[gid]) * (g_err[gid] / g_size[gid])


def _aurc_conf(conf: np.ndarray, correct: np.ndarray) -> float:
    expected = _expected_errors(conf, correct)
    return float(np.mean(expected / np.arange(1, expected.size + 1)))


def _aurc_optimal(n: int, n_err: int) -> float:
    k = np.arange(1, n + 1, dtype=np.float64)
    return float(np.mean(np.maximum(k - (n - n_err), 0.0) / k))


def _auroc_conf(conf: np.ndarray, correct: np.ndarray) -> float:
    n_c = int(correct.sum())
    n_e = correct.size - n_c
    if n_c == 0 or n_e == 0:
        raise ValueError("misclassification AUROC is undefined: all predictions are "
                         f"{'correct' if n_e == 0 else 'wrong'} (needs both correct and wrong ones)")
    r = rankdata(conf)  # average ranks: ties count 1/2
    u = r[correct].sum() - n_c * (n_c + 1) / 2.0
    return float(u / (n_c * n_e))


def _aurc(p: np.ndarray, y: np.ndarray) -> float:
    return _aurc_conf(*top_label(p, y))


def _eaurc(p: np.ndarray, y: np.ndarray) -> float:
    conf, correct = top_label(p, y)
    return _aurc_conf(conf, correct) - _aurc_optimal(correct.size, int((~correct).sum()))


def _auroc(p: np.ndarray, y: np.ndarray) -> float:
    return _auroc_conf(*top_label(p, y))


def risk_coverage_curve(probs: Any, labels: Any) -> RiskCoverage:
    """Risk-coverage curve of ``probs (N, C)``; one point per distinct confidence."""
    p, y = check_probs_labels(probs, labels)
    return _rc_curve(*top_label(p, y))


def aurc(probs: Any, labels: Any) -> float:
    """Area under the risk-coverage curve, in ``[0, 1]`` (lower is better)."""
    return _aurc(*check_probs_labels(probs, labels))


def eaurc(probs: Any, labels: Any) -> float:
    """Excess AURC: ``aurc - aurc of a perfect ranking`` with the same error rate (>= 0)."""
    return _eaurc(*check_probs_labels(probs, labels))


def aurc_optimal(n: int, n_errors: int) -> float:
    """AURC of a perfect ranking of ``n`` samples with ``n_errors`` errors."""
    if n < 1 or not 0 <= n_errors <= n:
        raise ValueError(f"need n >= 1 and 0 <= n_errors <= n, got n={n}, n_errors={n_errors}")
    return _aurc_optimal(int(n), int(n_errors))


def risk_at_coverage(probs: Any, labels: Any, coverage: float = 0.9) -> float:
    """Selective risk (error rate) of the ``ceil(coverage * N)`` most confident samples
    (ties: expectation under random tie-breaking). ``coverage`` in ``(0, 1]``."""
    if not 0.0 < float(coverage) <= 1.0:
        raise ValueError(f"coverage must be in (0, 1], got {coverage!r}")
    p, y = check_probs_labels(probs, labels)
    expected = _expected_errors(*top_label(p, y))
    k = min(max(int(np.ceil(float(coverage) * y.size - 1e-9)), 1), y.size)
    return float(expected[k - 1] / k)


def coverage_at_risk(probs: Any, labels: Any, risk: float = 0.01) -> float:
    """Largest coverage whose selective risk is ``<= risk``, over the confidence thresholds of
    :func:`risk_coverage_curve` (0.0 if even the most confident group exceeds it)."""
    if not 0.0 <= float(risk) <= 1.0:
        raise ValueError(f"risk must be in [0, 1], got {risk!r}")
    rc = risk_coverage_curve(probs, labels)
    ok = rc.risk <= float(risk) + 1e-12
    return float(rc.coverage[ok].max()) if ok.any() else 0.0


def misclassification_auroc(probs: Any, labels: Any) -> float:
    """AUROC of the top-label confidence for separating correct from wrong predictions
    (1 = perfect, 0.5 = chance; ties count 1/2). ``ValueError`` if only one kind is present."""
    return _auroc(*check_probs_labels(probs, labels))
