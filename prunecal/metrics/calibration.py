"""Binned calibration errors of the top-label confidence (ECE family).

Definitions (``N`` samples, confidence ``c_i = max_k p_ik``, correctness
``a_i = 1[argmax_k p_ik = y_i]``, bins ``B_b`` with weight ``w_b = |B_b| / N``,
``acc_b`` / ``conf_b`` the mean of ``a`` / ``c`` in the bin; empty bins are skipped):

- ECE (Guo et al. 2017, ``norm='l1'``): ``sum_b w_b |acc_b - conf_b|``.
- RMSCE (``norm='l2'``): ``sqrt(sum_b w_b (acc_b - conf_b)^2)`` (= torchmetrics ``norm='l2'``).
- MCE (``norm='max'``): ``max_b |acc_b - conf_b|`` over non-empty bins.
- over-/under-confidence: ``sum_b w_b max(conf_b - acc_b, 0)`` / ``max(acc_b - conf_b, 0)``;
  they add up to the ECE.
- classwise ECE (Kull et al. 2019): mean over classes ``k`` of the equal-width ECE of the
  scores ``p_ik`` against the events ``1[y_i = k]`` (every sample counts in every class).

Binning:

- ``binning='width'``: ``n_bins`` equal-width bins with edges ``linspace(0, 1, n_bins + 1)``.
  A confidence ``c`` falls in bin ``b`` with ``edge_b <= c < edge_{b+1}`` (half-open
  ``[lo, hi)``, found with ``searchsorted(edges, c, side='right') - 1``, the same rule as
  torchmetrics' ``bucketize(..., right=True)``), except that ``c = 1`` goes into the last bin
  (closed ``[lo, 1]``; torchmetrics puts it in an extra bin of its own). ``c = 0`` is in bin 0.
  This is also netcal's rule (``scipy.stats.binned_statistic_dd``: ``[lo, hi)``, last bin
  closed) and ``numpy.histogram``'s. Older torchmetrics (< 1.0, before PR #1648) used
  ``bucketize(..., right=False)``, i.e. ``(lo, hi]``, and failed on ``c = 0``; results of
  those versions can differ from ours when a confidence sits exactly on a bin edge.
- ``binning='mass'`` (adaptive / equal-mass, "ACE" of Nixon et al. 2019 with the top label):
  the samples are sorted by confidence (stable sort, so tied confidences keep input order and
  a run of ties may straddle two bins) and split into ``n_bins`` contiguous groups of sizes
  differing by at most one (``np.array_split``). With ``N < n_bins`` some bins are empty.
  Nixon et al. define ACE over all classes' scores; here it is the top-label variant (the
  same estimator as ``ece`` with equal-mass bins, weighted by bin size).

Naming: "ACE" in prunecal always means the *adaptive* calibration error above. netcal's
``ACE`` is a different quantity, the *average* calibration error (Neumann et al. 2018):
the unweighted mean ``(1/B) sum_b |acc_b - conf_b|`` over non-empty bins, which prunecal
does not report. Results store ``n_bins`` and ``binning`` next to every binned metric
(:func:`prunecal.metrics.summary`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ._validate import check_choice, check_n_bins, check_probs_labels
from .scoring import top_label

BINNINGS = ("width", "mass")
NORMS = ("l1", "l2", "max")


@dataclass(frozen=True)
class BinStats:
    """Per-bin sums. Arrays have shape ``(n_bins,)``; ``lower``/``upper`` are the bin edges
    (for ``'mass'`` bins: the smallest / largest confidence in the bin, NaN if empty)."""

    count: np.ndarray
    sum_conf: np.ndarray
    sum_acc: np.ndarray
    lower: np.ndarray
    upper: np.ndarray


def width_bin_index(conf: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-width bin index ``(N,) int64`` of confidences in ``[0, 1]`` (see module doc)."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.searchsorted(edges, conf, side="right") - 1
    return np.clip(idx, 0, n_bins - 1)


def bin_stats(conf: np.ndarray, correct: np.ndarray, n_bins: int, binning: str = "width") -> BinStats:
    """Per-bin count and sums of ``conf (N,)`` and ``correct (N,)`` (validated arrays)."""
    conf = np.asarray(conf, dtype=np.float64)
    acc = np.asarray(correct, dtype=np.float64)
    if binning == "width":
        idx = width_bin_index(conf, n_bins)
        count = np.bincount(idx, minlength=n_bins).astype(np.float64)
        s_conf = np.bincount(idx, weights=conf, minlength=n_bins)
        s_acc = np.bincount(idx, weights=acc, minlength=n_bins)
        edges = np.linspace(0.0, 1.0, n_bins + 1)
        return BinStats(count, s_conf, s_acc, edges[:-1].copy(), edges[1:].copy())
    order = np.argsort(conf, kind="stable")
    count = np.zeros(n_bins)
    s_conf = np.zeros(n_bins)
    s_acc = np.zeros(n_bins)
    lower = np.full(n_bins, np.nan)
    upper = np.full(n_bins, np.nan)
    for b, chunk in enumerate(np.array_split(order, n_bins)):
        if chunk.size:
            count[b] = chunk.size
            s_conf[b] = conf[chunk].sum()
            s_acc[b] = acc[chunk].sum()
            lower[b] = conf[chunk[0]]
            upper[b] = conf[chunk[-1]]
    return BinStats(count, s_conf, s_acc, lower, upper)


def ce_from_stats(st: BinStats, norm: str = "l1") -> float:
    """Calibration error of :class:`BinStats` with ``norm`` in ``('l1', 'l2', 'max')``."""
    nz = st.count > 0
    if not nz.any():
        raise ValueError("no samples: calibration error is undefined")
    gap = st.sum_acc[nz] / st.count[nz] - st.sum_conf[nz] / st.count[nz]
    w = st.count[nz] / st.count.sum()
    if norm == "l1":
        return float(np.sum(w * np.abs(gap)))
    if norm == "l2":
        return float(np.sqrt(np.sum(w * gap * gap)))
    return float(np.max(np.abs(gap)))


def _signed_from_stats(st: BinStats) -> tuple[float, float]:
    nz = st.count > 0
    gap = st.sum_conf[nz] / st.count[nz] - st.sum_acc[nz] / st.count[nz]  # conf - acc
    w = st.count[nz] / st.count.sum()
    return float(np.sum(w * np.maximum(gap, 0.0))), float(np.sum(w * np.maximum(-gap, 0.0)))


def classwise_stats(p: np.ndarray, y: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per (class, bin) ``count, sum_p, sum_event``, each ``(C, n_bins)``, equal-width bins."""
    n, c = p.shape
    idx = width_bin_index(p, n_bins) + np.arange(c)[None, :] * n_bins  # (N, C)
    event = (y[:, None] == np.arange(c)[None, :]).astype(np.float64)
    size = c * n_bins
    count = np.bincount(idx.ravel(), minlength=size).astype(np.float64).reshape(c, n_bins)
    s_p = np.bincount(idx.ravel(), weights=p.ravel(), minlength=size).reshape(c, n_bins)
    s_e = np.bincount(idx.ravel(), weights=event.ravel(), minlength=size).reshape(c, n_bins)
    return count, s_p, s_e


def classwise_from_stats(count: np.ndarray, s_p: np.ndarray, s_e: np.ndarray) -> float:
    """Classwise ECE from :func:`classwise_stats` sums."""
    n = count.sum(axis=1, keepdims=True)  # (C, 1), = N for every class
    with np.errstate(invalid="ignore", divide="ignore"):
        gap = np.where(count > 0, np.abs(s_e - s_p) / np.where(count > 0, count, 1.0), 0.0)
    return float(np.mean(np.sum(count / n * gap, axis=1)))


# --- unchecked kernels ----------------------------------------------------------------------------

def _ece(p: np.ndarray, y: np.ndarray, n_bins: int = 15, binning: str = "width", norm: str = "l1") -> float:
    conf, correct = top_label(p, y)
    return ce_from_stats(bin_stats(conf, correct, n_bins, binning), norm)


def _classwise_ece(p: np.ndarray, y: np.ndarray, n_bins: int = 15) -> float:
    return classwise_from_stats(*classwise_stats(p, y, n_bins))


# --- public API -----------------------------------------------------------------------------------

def ece(probs: Any, labels: Any, n_bins: int = 15, binning: str = "width", norm: str = "l1") -> float:
    """Expected calibration error of ``probs (N, C)`` vs ``labels (N,)``, in ``[0, 1]``.

    Args:
        n_bins: number of bins (default 15).
        binning: ``'width'`` (equal-width, default) or ``'mass'`` (equal-mass / adaptive).
        norm: ``'l1'`` (ECE, default), ``'l2'`` (RMSCE) or ``'max'`` (MCE).
    See the module docstring for the bin-edge convention.
    """
    n_bins = check_n_bins(n_bins)
    check_choice(binning, "binning", BINNINGS)
    check_choice(norm, "norm", NORMS)
    p, y = check_probs_labels(probs, labels)
    return _ece(p, y, n_bins, binning, norm)


def mce(probs: Any, labels: Any, n_bins: int = 15, binning: str = "width") -> float:
    """Maximum calibration error: ``ece(..., norm='max')``."""
    return ece(probs, labels, n_bins, binning, "max")


def rmsce(probs: Any, labels: Any, n_bins: int = 15, binning: str = "width") -> float:
    """Root-mean-square calibration error: ``ece(..., norm='l2')``."""
    return ece(probs, labels, n_bins, binning, "l2")


def ace(probs: Any, labels: Any, n_bins: int = 15) -> float:
    """Adaptive calibration error (Nixon et al. 2019, top label): ``ece(..., binning='mass')``,
    equal-mass bins weighted by size. Not netcal's ``ACE`` (average calibration error)."""
    return ece(probs, labels, n_bins, "mass", "l1")


def classwise_ece(probs: Any, labels: Any, n_bins: int = 15) -> float:
    """Classwise ECE (Kull et al. 2019): mean over the ``C`` classes of the equal-width ECE of
    ``probs[:, k]`` against ``labels == k``."""
    n_bins = check_n_bins(n_bins)
    p, y = check_probs_labels(probs, labels)
    return _classwise_ece(p, y, n_bins)


def overconfidence(probs: Any, labels: Any, n_bins: int = 15, binning: str = "width") -> float:
    """``sum_b w_b max(conf_b - acc_b, 0)``: the part of the ECE where the model is too sure."""
    n_bins = check_n_bins(n_bins)
    check_choice(binning, "binning", BINNINGS)
    p, y = check_probs_labels(probs, labels)
    return _signed_from_stats(bin_stats(*top_label(p, y), n_bins, binning))[0]


def underconfidence(probs: Any, labels: Any, n_bins: int = 15, binning: str = "width") -> float:
    """``sum_b w_b max(acc_b - conf_b, 0)``: the part of the ECE where the model is too unsure."""
    n_bins = check_n_bins(n_bins)
    check_choice(binning, "binning", BINNINGS)
    p, y = check_probs_labels(probs, labels)
    return _signed_from_stats(bin_stats(*top_label(p, y), n_bins, binning))[1]
