"""The verdict rule: is a pruned network's change against the unpruned network *better*, *within*
its interval, or *worse*? Pure functions on numbers, no store access.

Three kinds of evidence, one rule each (stated under the report's verdict table, :data:`RULE`):

- clean metrics with bootstrap CIs (accuracy, ECE, ECE after temperature scaling): each network's
  95 % interval is its bootstrap CI (mean of the seeds' bounds), widened to mean ± 2 sd over
  seeds where that is wider; *within* when the two networks' intervals overlap
  (:func:`network_interval`, :func:`overlap_class`);
- corruption metrics (mCE, corruption ECE): the per-condition paired changes (one per
  corruption x severity, or per corruption for mCE) give a Student-t 95 % interval of the mean
  change; *within* when it contains 0 (:func:`paired_interval`, :func:`interval_class`);
- speed-up and size reduction (one timing per unit on a shared machine): a ratio inside
  ``[1/(1+band), 1+band]`` (band 10 %) is *within*; size uses a 1 % band.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

BETTER, WITHIN, WORSE, NA = "better", "within", "worse", "na"
CLASSES = (BETTER, WITHIN, WORSE, NA)
SPEED_BAND = 0.10
SIZE_BAND = 0.01

# two-sided 95 % Student-t quantiles, df 1..30 (larger df: normal 1.96)
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045, 2.042)

RULE = (
    "Cell colours: green = better than the unpruned network, grey = within the interval, "
    "red = worse. Clean accuracy and ECE: each network's 95 % interval "
    "is its bootstrap CI on the test images (mean of its seeds' bounds), widened to mean ± 2 sd "
    "over seeds where that is wider; within = the pruned and unpruned intervals overlap. mCE and "
    "corruption ECE: Student-t 95 % interval of the mean paired change over the conditions "
    "(corruption x severity; per corruption for mCE); within = it contains no change (mCE 100 %). "
    f"Speed-up and size reduction (one timing per unit): within = ratio inside ±{SPEED_BAND:.0%} "
    f"(size ±{SIZE_BAND:.0%}). 'safe & faster' = no accuracy or calibration cell red "
    "(accuracy, ECE, ECE (TS), mCE, corruption ECE) and the speed-up green.")


def t975(df: int) -> float:
    """Two-sided 95 % quantile of Student's t with ``df`` degrees of freedom (df >= 1)."""
    if df < 1:
        raise ValueError(f"df must be >= 1, got {df}")
    return _T975[df - 1] if df <= len(_T975) else 1.96


def mean_std(values: Iterable[float]) -> tuple[float, float, int]:
    """(mean, sample standard deviation (0 for one value), n) of the finite values; NaNs if none."""
    xs = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    n = len(xs)
    if n == 0:
        return math.nan, math.nan, 0
    m = sum(xs) / n
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1)) if n > 1 else 0.0
    return m, sd, n


def network_interval(mean: float, sd: float, n_seeds: int, ci: tuple[float, float] | None
                     ) -> tuple[float, float] | None:
    """A network's 95 % interval for one metric: the bootstrap CI ``ci`` widened to
    ``mean ± 2 sd`` over seeds (when there are at least 2). None without any interval."""
    lo, hi = (ci if ci is not None else (math.nan, math.nan))
    if n_seeds >= 2 and math.isfinite(sd):
        lo = mean - 2 * sd if not math.isfinite(lo) else min(lo, mean - 2 * sd)
        hi = mean + 2 * sd if not math.isfinite(hi) else max(hi, mean + 2 * sd)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return None
    return float(lo), float(hi)


def overlap_class(pruned: tuple[float, float] | None, unpruned: tuple[float, float] | None,
                  *, higher_is_better: bool) -> str:
    """``within`` when the intervals overlap, else ``better`` / ``worse`` by direction;
    ``na`` when either interval is missing."""
    if pruned is None or unpruned is None:
        return NA
    if pruned[0] <= unpruned[1] and unpruned[0] <= pruned[1]:
        return WITHIN
    higher = pruned[0] > unpruned[1]
    return BETTER if higher == higher_is_better else WORSE


def paired_interval(diffs: Sequence[float]) -> tuple[float, float, float] | None:
    """``(mean, lo, hi)``: Student-t 95 % interval of the mean of paired changes; None for
    fewer than 2 finite values."""
    m, sd, n = mean_std(diffs)
    if n < 2:
        return None
    h = t975(n - 1) * sd / math.sqrt(n)
    return m, m - h, m + h


def interval_class(lo: float, hi: float, *, higher_is_better: bool, null: float = 0.0) -> str:
    """``within`` when ``[lo, hi]`` contains ``null``, else better / worse by direction."""
    if lo <= null <= hi:
        return WITHIN
    return BETTER if (lo > null) == higher_is_better else WORSE


def ratio_class(ratio: float | None, band: float) -> str:
    """For a ratio where higher is better (speed-up, size reduction): within ``[1/(1+band), 1+band]``."""
    if ratio is None or not math.isfinite(ratio) or ratio <= 0:
        return NA
    if ratio > 1 + band:
        return BETTER
    if ratio < 1 / (1 + band):
        return WORSE
    return WITHIN


SAFETY_KEYS = ("accuracy", "ece", "ece_ts", "mce", "cece")


def overall(classes: dict[str, str]) -> str:
    """The verdict of one network from its cells: ``safe & faster``, ``safe, not faster``,
    ``faster; worse: ...`` or ``worse: ...`` (``safety`` = none of :data:`SAFETY_KEYS` worse;
    ``na`` cells do not count against it, but at least accuracy must be known)."""
    worse = [k for k in SAFETY_KEYS if classes.get(k) == WORSE]
    fast = classes.get("speedup") == BETTER
    if not worse and classes.get("accuracy", NA) == NA:
        return "no clean interval"
    names = {"accuracy": "accuracy", "ece": "ECE", "ece_ts": "ECE (TS)", "mce": "mCE", "cece": "cECE"}
    if not worse:
        return "safe & faster" if fast else "safe, not faster"
    w = ", ".join(names[k] for k in worse)
    return f"faster; worse {w}" if fast else f"worse {w}"


__all__ = ["BETTER", "WITHIN", "WORSE", "NA", "CLASSES", "RULE", "SPEED_BAND", "SIZE_BAND",
           "t975", "mean_std", "network_interval", "overlap_class", "paired_interval",
           "interval_class", "ratio_class", "overall", "SAFETY_KEYS"]
