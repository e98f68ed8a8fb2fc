"""Per-bin data for reliability diagrams (same binning conventions as :mod:`.calibration`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ._validate import check_choice, check_n_bins, check_probs_labels
from .calibration import BINNINGS, bin_stats
from .scoring import top_label


@dataclass(frozen=True)
class ReliabilityBins:
    """Reliability-diagram bins; every array has shape ``(n_bins,)``.

    ``lower``/``upper``: bin edges (equal-mass: smallest/largest confidence, NaN if empty);
    ``count``: samples per bin (int64); ``confidence`` / ``accuracy``: mean top-label
    confidence / accuracy in the bin (NaN for empty bins)."""

    lower: np.ndarray
    upper: np.ndarray
    count: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray
    binning: str = "width"

    @property
    def gap(self) -> np.ndarray:
        """``confidence - accuracy`` per bin (positive = over-confident; NaN if empty)."""
        return self.confidence - self.accuracy

    @property
    def weight(self) -> np.ndarray:
        """Fraction of samples per bin."""
        return self.count / max(int(self.count.sum()), 1)

    def to_dict(self) -> dict[str, list]:
        """Plain lists (NaN kept) for JSON / the result store, with ``n_bins`` and ``binning``."""
        return {k: getattr(self, k).tolist() for k in ("lower", "upper", "count", "confidence", "accuracy")} | {
            "n_bins": int(self.count.size), "binning": self.binning}


def reliability_from_stats(st, binning: str = "width") -> ReliabilityBins:
    """:class:`ReliabilityBins` from :class:`~.calibration.BinStats`."""
    with np.errstate(invalid="ignore", divide="ignore"):
        conf = np.where(st.count > 0, st.sum_conf / st.count, np.nan)
        acc = np.where(st.count > 0, st.sum_acc / st.count, np.nan)
    return ReliabilityBins(st.lower, st.upper, st.count.astype(np.int64), conf, acc, binning)


def reliability_bins(probs: Any, labels: Any, n_bins: int = 15, binning: str = "width") -> ReliabilityBins:
    """Per-bin count, mean confidence and accuracy of ``probs (N, C)`` vs ``labels (N,)``."""
    n_bins = check_n_bins(n_bins)
    check_choice(binning, "binning", BINNINGS)
    p, y = check_probs_labels(probs, labels)
    return reliability_from_stats(bin_stats(*top_label(p, y), n_bins, binning), binning)
