"""Streaming metrics: feed batches, get :func:`~.summary.summary`'s dict at the end.

Equal-width ECE / MCE / RMSCE / over- and under-confidence, classwise ECE, NLL, Brier and
accuracy are accumulated exactly from per-bin sums (memory ``O(C * n_bins)``). Equal-mass
ECE, AURC, E-AURC and the misclassification AUROC need sorted data, so the accumulator keeps
two numbers per sample (top-label confidence float64 and correctness bool: 9 bytes/sample,
90 kB for CIFAR-10 test), never the full probability matrix unless ``keep_probs=True``.
Results equal the one-shot :func:`~.summary.summary_from_logits` (``from_logits=True``) or
:func:`~.summary.summary` (``from_logits=False``) up to float rounding of the sums.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from scipy.special import log_softmax as _log_softmax

from ._validate import check_labels, check_logits, check_n_bins, check_probs
from .calibration import BinStats, bin_stats, classwise_from_stats, classwise_stats
from .scoring import NLL_EPS, _brier_rows, top_label
from .summary import summary_from_parts


class MetricAccumulator:
    """Accumulate predictions batch by batch.

    Args:
        num_classes: ``C``; every batch must have ``C`` columns.
        n_bins: equal-width / equal-mass bin count (default 15).
        binning: binning of ``ece``/``mce``/``rmsce`` in :meth:`compute` (default ``'width'``).
        keep_probs: also keep every probability row (``probs`` and ``labels`` properties).
    """

    def __init__(self, num_classes: int, n_bins: int = 15, keep_probs: bool = False, *, binning: str = "width") -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        if binning not in ("width", "mass"):
            raise ValueError(f"binning must be one of ('width', 'mass'), got {binning!r}")
        self.num_classes = int(num_classes)
        self.n_bins = check_n_bins(n_bins)
        self.binning = binning
        self.keep_probs = bool(keep_probs)
        self.reset()

    def reset(self) -> None:
        """Forget every batch."""
        c, b = self.num_classes, self.n_bins
        self.n = 0
        self._count = np.zeros(b)
        self._s_conf = np.zeros(b)
        self._s_acc = np.zeros(b)
        self._cw = [np.zeros((c, b)) for _ in range(3)]
        self._nll_sum = 0.0
        self._brier_sum = 0.0
        self._conf: list[np.ndarray] = []
        self._correct: list[np.ndarray] = []
        self._probs: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []

    def update(self, logits_or_probs: Any, labels: Any, *, from_logits: bool = True) -> None:
        """Add a batch ``(B, C)`` of logits (default) or probabilities and labels ``(B,)``."""
        if from_logits:
            z = check_logits(logits_or_probs, "logits")
            logp = _log_softmax(z, axis=1)
            p = np.exp(logp)
        else:
            p = check_probs(logits_or_probs, "probs")
            logp = None
        if p.shape[1] != self.num_classes:
            raise ValueError(f"expected {self.num_classes} classes, got a batch with {p.shape[1]} columns")
        y = check_labels(labels, p.shape[0], self.num_classes)
        rows = np.arange(y.size)
        conf, correct = top_label(p, y)
        st = bin_stats(conf, correct, self.n_bins, "width")
        self._count += st.count
        self._s_conf += st.sum_conf
        self._s_acc += st.sum_acc
        for acc, new in zip(self._cw, classwise_stats(p, y, self.n_bins)):
            acc += new
        if logp is not None:
            self._nll_sum += float(-logp[rows, y].sum())
        else:
            self._nll_sum += float(-np.log(np.clip(p[rows, y], NLL_EPS, 1.0)).sum())
        self._brier_sum += float(_brier_rows(p, y).sum())
        self._conf.append(conf)
        self._correct.append(correct)
        if self.keep_probs:
            self._probs.append(p)
            self._labels.append(y)
        self.n += int(y.size)

    @property
    def probs(self) -> np.ndarray:
        """All probabilities ``(N, C)`` (only with ``keep_probs=True``)."""
        if not self.keep_probs:
            raise ValueError("probabilities were not kept: create the accumulator with keep_probs=True")
        return np.concatenate(self._probs) if self._probs else np.zeros((0, self.num_classes))

    @property
    def labels(self) -> np.ndarray:
        """All labels ``(N,)`` (only with ``keep_probs=True``)."""
        if not self.keep_probs:
            raise ValueError("labels were not kept: create the accumulator with keep_probs=True")
        return np.concatenate(self._labels) if self._labels else np.zeros(0, np.int64)

    def compute(self) -> dict[str, Any]:
        """The :func:`~.summary.summary` dict of everything seen so far."""
        if self.n == 0:
            raise ValueError("MetricAccumulator.compute() called before any update()")
        conf = np.concatenate(self._conf)
        correct = np.concatenate(self._correct)
        edges = np.linspace(0.0, 1.0, self.n_bins + 1)
        st = BinStats(self._count.copy(), self._s_conf.copy(), self._s_acc.copy(), edges[:-1], edges[1:])
        return summary_from_parts(
            n=self.n, n_bins=self.n_bins, binning=self.binning, conf=conf, correct=correct, width_stats=st,
            classwise=classwise_from_stats(*self._cw), nll=self._nll_sum / self.n, brier=self._brier_sum / self.n)
