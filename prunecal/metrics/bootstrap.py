"""Percentile-bootstrap confidence intervals for any metric of ``(probs, labels)``.

Resamples the ``N`` rows with replacement ``n_boot`` times (``numpy.random.default_rng(seed)``,
so results are reproducible per seed) and returns the ``alpha/2`` and ``1 - alpha/2``
percentiles of the resampled metric. Means of per-sample scores (``accuracy``, ``error``,
``nll``, ``brier``, ``mean_confidence``) and equal-width ``ece`` / ``mce`` / ``rmsce`` are
bootstrapped in vectorised chunks; the other top-label metrics (``ace``, ``aurc``, ``eaurc``,
``misclassification_auroc``) are re-evaluated per resample on the confidences and correctness
only; ``classwise_ece`` and callables on the resampled ``(probs, labels)``. A resample on which
the metric raises ``ValueError`` (e.g. AUROC with no errors) is dropped. Note: binned metrics
(ECE) are biased upwards on resamples, so their percentile interval can sit slightly above
the point estimate.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ._validate import check_choice, check_n_bins, check_probs, check_probs_labels
from .calibration import _classwise_ece, bin_stats, ce_from_stats, width_bin_index
from .scoring import NLL_EPS, _brier_rows, top_label
from .selective import _auroc_conf, _aurc_conf, _aurc_optimal

_CHUNK_ELEMS = 4_000_000  # index-matrix entries per vectorised chunk (32 MB of int64)


def _per_sample(name: str, p: np.ndarray, y: np.ndarray, kw: dict) -> np.ndarray | None:
    rows = np.arange(y.size)
    if name == "accuracy":
        return (p.argmax(1) == y).astype(np.float64)
    if name == "error":
        return (p.argmax(1) != y).astype(np.float64)
    if name == "nll":
        return -np.log(np.clip(p[rows, y], kw.get("eps", NLL_EPS), 1.0))
    if name == "brier":
        return _brier_rows(p, y) / (p.shape[1] if kw.get("reduction", "sum") == "mean" else 1.0)
    if name == "mean_confidence":
        return p.max(1)
    return None


def _ce_kernel(norm: str, fixed_binning: str | None = None):
    def fn(conf, correct, n_bins=15, binning="width"):
        return ce_from_stats(bin_stats(conf, correct, n_bins, fixed_binning or binning), norm)
    return fn


def _eaurc_conf(conf, correct):
    return _aurc_conf(conf, correct) - _aurc_optimal(correct.size, int((~correct).sum()))


# metrics of (confidence, correctness) only
_TOP_LABEL: dict[str, Callable[..., float]] = {
    "ece": _ce_kernel("l1"), "mce": _ce_kernel("max"), "rmsce": _ce_kernel("l2"),
    "ace": lambda conf, correct, n_bins=15: _ce_kernel("l1", "mass")(conf, correct, n_bins),
    "aurc": _aurc_conf, "eaurc": _eaurc_conf, "misclassification_auroc": _auroc_conf,
}
_KERNELS: dict[str, Callable[..., float]] = {"classwise_ece": _classwise_ece}
_NORM = {"ece": "l1", "mce": "max", "rmsce": "l2"}


def _width_ce_boot(conf: np.ndarray, correct: np.ndarray, idx: np.ndarray, n_bins: int, norm: str) -> np.ndarray:
    """Equal-width calibration error of every resample (rows of ``idx (m, N)``) at once."""
    m, n = idx.shape
    b = width_bin_index(conf, n_bins)[idx] + (np.arange(m) * n_bins)[:, None]
    size = m * n_bins
    cnt = np.bincount(b.ravel(), minlength=size).reshape(m, n_bins).astype(np.float64)
    s_c = np.bincount(b.ravel(), weights=conf[idx].ravel(), minlength=size).reshape(m, n_bins)
    s_a = np.bincount(b.ravel(), weights=correct[idx].ravel().astype(np.float64), minlength=size).reshape(m, n_bins)
    nz = cnt > 0
    gap = np.abs(np.where(nz, (s_a - s_c) / np.where(nz, cnt, 1.0), 0.0))
    if norm == "l1":
        return np.sum(cnt * gap, axis=1) / n
    if norm == "l2":
        return np.sqrt(np.sum(cnt * gap * gap, axis=1) / n)
    return gap.max(axis=1)


METRIC_NAMES = ("accuracy", "error", "nll", "brier", "mean_confidence", *_TOP_LABEL, *_KERNELS)


def _check_boot_args(n_boot: Any, alpha: float, kw: dict) -> None:
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 2:
        raise ValueError(f"n_boot must be an integer >= 2, got {n_boot!r}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    if "n_bins" in kw:
        check_n_bins(kw["n_bins"])
    if "binning" in kw:
        check_choice(kw["binning"], "binning", ("width", "mass"))


def _bootstrap_values(metric: str | Callable[..., float], p: np.ndarray, y: np.ndarray, n_boot: int,
                      seed: int, kw: dict) -> tuple[float, np.ndarray]:
    """``(point, values (n_boot,))`` with NaN for resamples where the metric is undefined.
    Resample ``b`` is the same set of rows for every metric given ``(N, n_boot, seed)``."""
    n = y.size
    rng = np.random.default_rng(seed)
    chunk = max(1, min(int(n_boot), _CHUNK_ELEMS // n))

    def index_chunks():
        done = 0
        while done < n_boot:
            m = min(chunk, n_boot - done)
            yield rng.integers(0, n, size=(m, n))
            done += m

    values = _per_sample(metric, p, y, kw) if isinstance(metric, str) else None
    if values is not None:
        return float(values.mean()), np.concatenate([values[idx].mean(axis=1) for idx in index_chunks()])
    if isinstance(metric, str) and metric in _NORM and kw.get("binning", "width") == "width":
        conf, correct = top_label(p, y)
        n_bins = int(kw.get("n_bins", 15))
        point = float(_TOP_LABEL[metric](conf, correct, **kw))
        return point, np.concatenate([_width_ce_boot(conf, correct, idx, n_bins, _NORM[metric])
                                      for idx in index_chunks()])
    if isinstance(metric, str) and metric in _TOP_LABEL:
        conf, correct = top_label(p, y)
        data, fn = (conf, correct), _TOP_LABEL[metric]
    elif isinstance(metric, str):
        if metric not in _KERNELS:
            raise ValueError(f"unknown metric {metric!r}; available: {', '.join(METRIC_NAMES)}")
        data, fn = (p, y), _KERNELS[metric]
    elif callable(metric):
        data, fn = (p, y), metric
    else:
        raise TypeError(f"metric must be a name or a callable, got {type(metric).__name__}")
    point = float(fn(*data, **kw))
    out = []
    for idx in index_chunks():
        for row in idx:
            try:
                out.append(float(fn(*(d[row] for d in data), **kw)))
            except ValueError:  # e.g. AUROC of a resample with no errors
                out.append(np.nan)
    return point, np.asarray(out)


def _interval(boots: np.ndarray, alpha: float) -> tuple[float, float]:
    boots = boots[np.isfinite(boots)]
    if boots.size == 0:
        raise ValueError("the metric is undefined on every bootstrap resample")
    lo, hi = np.quantile(boots, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(lo), float(hi)


def bootstrap_ci(metric: str | Callable[..., float], probs: Any, labels: Any, n_boot: int = 1000,
                 alpha: float = 0.05, seed: int = 0, **kw: Any) -> tuple[float, float, float]:
    """``(point, lo, hi)``: the metric on all data and its ``1 - alpha`` percentile interval.

    Args:
        metric: a name from :data:`METRIC_NAMES` or a callable ``metric(probs, labels, **kw)``.
        n_boot: number of resamples (default 1000). alpha: two-sided level (default 0.05).
        seed: seed of the resampling generator. kw: passed to the metric (e.g. ``n_bins``).
    """
    _check_boot_args(n_boot, alpha, kw)
    p, y = check_probs_labels(probs, labels)
    point, boots = _bootstrap_values(metric, p, y, int(n_boot), seed, kw)
    return (point, *_interval(boots, alpha))


def bootstrap_diff_ci(metric: str | Callable[..., float], probs_a: Any, probs_b: Any, labels: Any,
                      n_boot: int = 1000, alpha: float = 0.05, seed: int = 0, **kw: Any) -> tuple[float, float, float]:
    """Paired bootstrap of ``metric(probs_b) - metric(probs_a)`` on the same samples.

    For "did pruning change the ECE?": ``probs_a (N, C)`` from the dense model, ``probs_b
    (N, C)`` from the pruned one, one ``labels (N,)``. Both are evaluated on the same resampled
    rows, so the interval accounts for the correlation between the two models. Returns
    ``(difference, lo, hi)``; an interval excluding 0 is a significant change at level ``alpha``.
    """
    _check_boot_args(n_boot, alpha, kw)
    pa, y = check_probs_labels(probs_a, labels)
    pb = check_probs(probs_b, "probs_b")
    if pb.shape != pa.shape:
        raise ValueError(f"probs_a and probs_b must have the same shape, got {pa.shape} and {pb.shape}")
    point_a, ba = _bootstrap_values(metric, pa, y, int(n_boot), seed, kw)
    point_b, bb = _bootstrap_values(metric, pb, y, int(n_boot), seed, kw)
    return (point_b - point_a, *_interval(bb - ba, alpha))
