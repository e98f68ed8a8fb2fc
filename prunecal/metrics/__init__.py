"""Calibration, uncertainty, selective-prediction and robustness metrics.

Pure functions on probabilities ``probs (N, C)`` and integer ``labels (N,)`` (numpy arrays,
torch tensors or lists; computed in float64). Conventions are documented once, in the module
docstrings: bin edges and equal-mass binning in :mod:`.calibration`, NLL clipping and Brier
reduction in :mod:`.scoring`, ties in :mod:`.selective`, corruption-error definitions in
:mod:`.robustness`.
"""
from __future__ import annotations

from . import robustness
from .robustness import BENCHMARK_CORRUPTIONS
from .bootstrap import METRIC_NAMES, bootstrap_ci, bootstrap_diff_ci
from .calibration import ace, classwise_ece, ece, mce, overconfidence, rmsce, underconfidence
from .reliability import ReliabilityBins, reliability_bins
from .scoring import (NLL_EPS, accuracy, brier, error_rate, log_softmax, mean_confidence, nll,
                      nll_from_logits, softmax)
from .selective import (RiskCoverage, aurc, aurc_optimal, coverage_at_risk, eaurc,
                        misclassification_auroc, risk_at_coverage, risk_coverage_curve)
from .streaming import MetricAccumulator
from .summary import SUMMARY_KEYS, summary, summary_from_logits

__all__ = [
    "ece", "mce", "rmsce", "ace", "classwise_ece", "overconfidence", "underconfidence",
    "nll", "nll_from_logits", "brier", "accuracy", "error_rate", "mean_confidence", "softmax", "log_softmax",
    "NLL_EPS", "risk_coverage_curve", "RiskCoverage", "aurc", "aurc_optimal", "eaurc",
    "misclassification_auroc", "risk_at_coverage", "coverage_at_risk", "reliability_bins", "ReliabilityBins", "bootstrap_ci", "bootstrap_diff_ci", "METRIC_NAMES",
    "summary", "summary_from_logits", "SUMMARY_KEYS", "MetricAccumulator", "robustness", "BENCHMARK_CORRUPTIONS",
]
