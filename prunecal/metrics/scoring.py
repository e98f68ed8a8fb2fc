"""Proper scoring rules and simple scores on probabilities ``(N, C)`` and labels ``(N,)``.

Conventions (all computed in float64):

- ``nll``: mean negative log-likelihood of the true class, natural log (nats). The true-class
  probability is clipped below at ``eps = 1e-12`` (so one certain mistake costs
  ``-ln(1e-12) ~= 27.6`` nats instead of ``inf``). :func:`nll_from_logits` uses
  ``log_softmax`` directly and needs no clipping.
- ``brier``: ``reduction='sum'`` (default) is the multi-class Brier score of Brier (1950),
  ``mean_i sum_k (p_ik - 1[y_i = k])^2``, range ``[0, 2]``; ``reduction='mean'`` divides that
  by ``C`` (range ``[0, 2/C]``, torchmetrics-/sklearn-style per-entry mean).
- ``accuracy``: top-1; ``argmax`` ties go to the lowest class index (numpy convention).
- ``mean_confidence``: mean top-label probability ``max_k p_ik``.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from scipy.special import log_softmax as _log_softmax

from ._validate import (check_matrix, check_choice, check_labels, check_logits, check_logits_labels,
                        check_probs, check_probs_labels)

NLL_EPS = 1e-12
"""Lower clip for the true-class probability in :func:`nll`."""


def softmax(logits: Any, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax of ``logits (N, C)`` along ``axis``; ``float64`` result."""
    z = check_logits(logits)
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def log_softmax(logits: Any, axis: int = -1) -> np.ndarray:
    """Stable ``log softmax`` of ``logits (N, C)``; ``float64``."""
    return _log_softmax(check_logits(logits), axis=axis)


def top_label(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(confidence (N,) float64, correct (N,) bool)`` of already-validated arrays."""
    pred = probs.argmax(axis=1)
    conf = probs[np.arange(probs.shape[0]), pred]
    return conf, pred == labels


# --- unchecked kernels (used by summary, bootstrap and the accumulator) -----------------------

def _nll(p: np.ndarray, y: np.ndarray, eps: float = NLL_EPS) -> float:
    py = p[np.arange(p.shape[0]), y]
    return float(-np.mean(np.log(np.clip(py, eps, 1.0))))


def _brier_rows(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    sq = np.sum(p * p, axis=1)
    py = p[np.arange(p.shape[0]), y]
    return sq - 2.0 * py + 1.0  # sum_k (p_k - onehot_k)^2


def _brier(p: np.ndarray, y: np.ndarray, reduction: str = "sum") -> float:
    b = float(np.mean(_brier_rows(p, y)))
    return b / p.shape[1] if reduction == "mean" else b


def _accuracy(p: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(p.argmax(axis=1) == y))


def _mean_confidence(p: np.ndarray, y: np.ndarray | None = None) -> float:
    return float(np.mean(p.max(axis=1)))


# --- public API ---------------------------------------------------------------------------------

def nll(probs: Any, labels: Any, *, eps: float = NLL_EPS) -> float:
    """Mean negative log-likelihood (nats) of ``labels (N,)`` under ``probs (N, C)``;
    true-class probability clipped at ``eps`` (default ``1e-12``)."""
    p, y = check_probs_labels(probs, labels)
    if not 0.0 < eps < 1.0:
        raise ValueError(f"eps must be in (0, 1), got {eps}")
    return _nll(p, y, eps)


def nll_from_logits(logits: Any, labels: Any) -> float:
    """Mean negative log-likelihood (nats) from ``logits (N, C)`` via ``log_softmax``."""
    z, y = check_logits_labels(logits, labels)
    return float(-np.mean(_log_softmax(z, axis=1)[np.arange(z.shape[0]), y]))


def brier(probs: Any, labels: Any, *, reduction: str = "sum") -> float:
    """Multi-class Brier score: ``reduction='sum'`` sums squared errors over classes (range
    ``[0, 2]``, default), ``'mean'`` divides by ``C``. Averaged over the ``N`` samples."""
    check_choice(reduction, "reduction", ("sum", "mean"))
    p, y = check_probs_labels(probs, labels)
    return _brier(p, y, reduction)


def accuracy(probs: Any, labels: Any) -> float:
    """Top-1 accuracy in ``[0, 1]`` of ``probs (N, C)`` (or logits: argmax is the same)."""
    p = check_matrix(probs, "probs")
    return _accuracy(p, check_labels(labels, p.shape[0], p.shape[1]))


def mean_confidence(probs: Any, labels: Any | None = None) -> float:
    """Mean top-label probability of ``probs (N, C)``; ``labels`` are only validated."""
    if labels is None:
        return _mean_confidence(check_probs(probs))
    p, _ = check_probs_labels(probs, labels)
    return _mean_confidence(p)


def error_rate(probs: Any, labels: Any) -> float:
    """Top-1 error ``1 - accuracy``."""
    return 1.0 - accuracy(probs, labels)
