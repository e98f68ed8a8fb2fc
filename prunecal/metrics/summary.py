"""All scalar metrics of one prediction set in one dict.

Keys of :func:`summary` (all floats unless noted):

``n`` (int), ``n_bins`` (int), ``binning`` (str: the binning of ``ece``/``mce``/``rmsce``/
over-/under-confidence), ``accuracy``, ``error``, ``mean_confidence``, ``nll`` (nats),
``brier`` (summed over classes), ``ece``, ``mce``, ``rmsce``, ``ace`` (equal-mass ECE, always
``binning='mass'``), ``classwise_ece`` (equal-width), ``overconfidence``, ``underconfidence``,
``aurc``, ``eaurc``, ``misclassification_auroc`` (NaN when every prediction is correct or
every one wrong: the AUROC is undefined there).
"""
from __future__ import annotations

from typing import Any

import numpy as np
from scipy.special import log_softmax as _log_softmax

from ._validate import check_choice, check_logits_labels, check_n_bins, check_probs_labels
from .calibration import (BINNINGS, _classwise_ece, _signed_from_stats, bin_stats, ce_from_stats)
from .scoring import _brier, _nll, top_label
from .selective import _auroc_conf, _aurc_conf, _aurc_optimal

SUMMARY_KEYS = ("n", "n_bins", "binning", "accuracy", "error", "mean_confidence", "nll", "brier",
                "ece", "mce", "rmsce", "ace", "classwise_ece", "overconfidence", "underconfidence",
                "aurc", "eaurc", "misclassification_auroc")


def _safe_auroc(conf: np.ndarray, correct: np.ndarray) -> float:
    if correct.all() or not correct.any():
        return float("nan")
    return _auroc_conf(conf, correct)


def summary_from_parts(*, n: int, n_bins: int, binning: str, conf: np.ndarray, correct: np.ndarray,
                       width_stats, classwise: float, nll: float, brier: float) -> dict[str, Any]:
    """Assemble the summary dict (shared by :func:`summary` and the streaming accumulator)."""
    st = width_stats if binning == "width" else bin_stats(conf, correct, n_bins, "mass")
    over, under = _signed_from_stats(st)
    acc = float(np.mean(correct))
    aurc = _aurc_conf(conf, correct)
    return {
        "n": int(n), "n_bins": int(n_bins), "binning": binning,
        "accuracy": acc, "error": 1.0 - acc, "mean_confidence": float(np.mean(conf)),
        "nll": float(nll), "brier": float(brier),
        "ece": ce_from_stats(st, "l1"), "mce": ce_from_stats(st, "max"), "rmsce": ce_from_stats(st, "l2"),
        "ace": ce_from_stats(bin_stats(conf, correct, n_bins, "mass"), "l1"),
        "classwise_ece": float(classwise),
        "overconfidence": over, "underconfidence": under,
        "aurc": aurc, "eaurc": aurc - _aurc_optimal(int(n), int((~correct).sum())),
        "misclassification_auroc": _safe_auroc(conf, correct),
    }


def _summary(p: np.ndarray, y: np.ndarray, n_bins: int, binning: str, nll: float | None = None) -> dict[str, Any]:
    conf, correct = top_label(p, y)
    return summary_from_parts(
        n=p.shape[0], n_bins=n_bins, binning=binning, conf=conf, correct=correct,
        width_stats=bin_stats(conf, correct, n_bins, "width"), classwise=_classwise_ece(p, y, n_bins),
        nll=_nll(p, y) if nll is None else nll, brier=_brier(p, y, "sum"))


def summary(probs: Any, labels: Any, n_bins: int = 15, binning: str = "width") -> dict[str, Any]:
    """Every scalar metric of ``probs (N, C)`` vs ``labels (N,)`` (keys in the module doc)."""
    n_bins = check_n_bins(n_bins)
    check_choice(binning, "binning", BINNINGS)
    return _summary(*check_probs_labels(probs, labels), n_bins, binning)


def summary_from_logits(logits: Any, labels: Any, temperature: float = 1.0, n_bins: int = 15,
                        binning: str = "width") -> dict[str, Any]:
    """:func:`summary` of ``softmax(logits / temperature)``; ``nll`` comes from ``log_softmax``
    (exact, no clipping). Adds the key ``temperature``."""
    n_bins = check_n_bins(n_bins)
    check_choice(binning, "binning", BINNINGS)
    z, y = check_logits_labels(logits, labels)
    try:
        t = float(temperature)
    except (TypeError, ValueError):
        raise TypeError(f"temperature must be a number, got {temperature!r}") from None
    if not np.isfinite(t) or t <= 0:
        raise ValueError(f"temperature must be a finite positive number, got {temperature!r}")
    logp = _log_softmax(z / t, axis=1)
    out = _summary(np.exp(logp), y, n_bins, binning, nll=float(-np.mean(logp[np.arange(y.size), y])))
    out["temperature"] = t
    return out
