"""Corruption-robustness summaries over CIFAR-10-C-style (corruption, severity) results.

Tables are accepted in two layouts: ``{(corruption, severity): value}`` or
``{corruption: [value at severity 1, ..., value at severity 5]}``. Severities are 1-based.
Accuracies and errors are fractions in ``[0, 1]`` (not percent).

Definitions (``E_{s,c}`` the top-1 error at severity ``s`` of corruption ``c``):

- :func:`mean_corruption_error` (RobustBench / CIFAR convention, unnormalised):
  ``mean_{c, s} E_{s,c}`` over the 15 benchmark corruptions x 5 severities.
- :func:`mce_hendrycks` (Hendrycks & Dietterich 2019): ``CE_c = sum_s E_{s,c} / sum_s E^base_{s,c}``,
  ``mCE = mean_c CE_c``.
- :func:`relative_mce`: ``relCE_c = sum_s (E_{s,c} - E_clean) / sum_s (E^base_{s,c} - E^base_clean)``,
  ``relative mCE = mean_c relCE_c``.
- :func:`mean_over_corruptions`: plain mean of any metric over the (corruption, severity) units,
  e.g. cECE / cNLL = mean ECE / NLL under corruption.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

BENCHMARK_CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
    "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
    "jpeg_compression",
)
"""The 15 CIFAR-10-C / ImageNet-C benchmark corruptions (Hendrycks & Dietterich 2019)."""
BENCHMARK_15 = BENCHMARK_CORRUPTIONS
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)

Table = dict[str, dict[int, float]]


def _check_value(v: Any, where: str, what: str) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise TypeError(f"{what} for {where} must be a number, got {type(v).__name__}") from None
    if not math.isfinite(f):
        raise ValueError(f"{what} for {where} is not finite: {v!r}")
    return f


def normalize_table(table: Mapping, what: str = "value", *, fraction: bool = False) -> Table:
    """Either layout -> ``{corruption: {severity: float}}``. ``fraction=True`` demands ``[0, 1]``."""
    if not isinstance(table, Mapping) or not table:
        raise ValueError(f"expected a non-empty dict of {what}s keyed by corruption or (corruption, severity)")
    out: Table = {}
    for key, val in table.items():
        if isinstance(key, tuple):
            if len(key) != 2:
                raise ValueError(f"keys must be (corruption, severity) pairs, got {key!r}")
            name, sev = key
            if not isinstance(name, (str, np.str_)):
                raise ValueError(f"corruption names must be strings, got {name!r}")
            name = str(name)
            items = [(sev, val)]
        elif isinstance(key, (str, np.str_)):
            key = str(key)
            name = key
            if isinstance(val, Mapping):
                items = list(val.items())
            elif isinstance(val, Sequence) or hasattr(val, "__len__"):
                items = [(i + 1, v) for i, v in enumerate(list(val))]
            else:
                raise ValueError(f"{what}s of {name!r} must be a sequence over severities 1..5 "
                                 f"or a dict severity -> {what}, got {type(val).__name__}")
        else:
            raise ValueError(f"keys must be corruption names or (corruption, severity) pairs, got {key!r}")
        for sev, v in items:
            if isinstance(sev, bool) or not isinstance(sev, (int, np.integer)) or sev < 1:
                raise ValueError(f"severity of {name!r} must be an integer >= 1, got {sev!r}")
            sev = int(sev)
            f = _check_value(v, f"{name}/{sev}", what)
            if fraction and not 0.0 <= f <= 1.0:
                raise ValueError(f"{what} for {name}/{sev} must be a fraction in [0, 1] (not percent), got {f}")
            if sev in out.setdefault(name, {}):
                raise ValueError(f"duplicate entry for {name}/{sev}")
            out[name][sev] = f
    return out


def _require(table: Table, corruptions: Sequence[str], severities: Sequence[int], what: str) -> None:
    missing_c = [c for c in corruptions if c not in table]
    if missing_c:
        raise ValueError(f"{what} lacks corruptions: {', '.join(missing_c)}")
    missing_s = [f"{c}/{s}" for c in corruptions for s in severities if s not in table[c]]
    if missing_s:
        raise ValueError(f"{what} lacks (corruption/severity): {', '.join(missing_s)}")


def corruption_errors(acc_table: Mapping) -> Table:
    """Top-1 errors ``1 - accuracy`` as ``{corruption: {severity: error}}`` from an accuracy
    table in either layout (fractions in ``[0, 1]``)."""
    return {c: {s: 1.0 - a for s, a in sorted(d.items())}
            for c, d in normalize_table(acc_table, "accuracy", fraction=True).items()}


def mean_corruption_error(errors: Mapping, corruptions: Sequence[str] = BENCHMARK_CORRUPTIONS,
                          severities: Sequence[int] = SEVERITIES) -> float:
    """Unnormalised mean error over ``corruptions`` x ``severities`` (default 15 x 5)."""
    t = normalize_table(errors, "error", fraction=True)
    _require(t, corruptions, severities, "errors")
    vals = [t[c][s] for c in corruptions for s in severities]
    return sum(vals) / len(vals)


def mce_hendrycks(errors: Mapping, baseline_errors: Mapping, corruptions: Sequence[str] = BENCHMARK_CORRUPTIONS,
                  severities: Sequence[int] = SEVERITIES, *, per_corruption: bool = False):
    """Hendrycks mCE: mean over corruptions of ``sum_s E / sum_s E^base``.

    Returns the mCE (float; 1.0 = as robust as the baseline), or ``(mCE, {corruption: CE_c})``
    with ``per_corruption=True``. A baseline with zero summed error raises ``ValueError``.
    """
    t = normalize_table(errors, "error", fraction=True)
    b = normalize_table(baseline_errors, "baseline error", fraction=True)
    _require(t, corruptions, severities, "errors")
    _require(b, corruptions, severities, "baseline_errors")
    ce: dict[str, float] = {}
    for c in corruptions:
        den = sum(b[c][s] for s in severities)
        if den <= 0.0:
            raise ValueError(f"baseline error of {c!r} is 0 at every severity: CE is undefined")
        ce[c] = sum(t[c][s] for s in severities) / den
    m = sum(ce.values()) / len(ce)
    return (m, ce) if per_corruption else m


def relative_mce(errors: Mapping, clean_error: float, baseline_errors: Mapping, baseline_clean_error: float,
                 corruptions: Sequence[str] = BENCHMARK_CORRUPTIONS, severities: Sequence[int] = SEVERITIES,
                 *, per_corruption: bool = False):
    """Relative mCE: mean over corruptions of ``sum_s (E - E_clean) / sum_s (E^base - E^base_clean)``.

    Returns a float, or ``(relative mCE, {corruption: relCE_c})`` with ``per_corruption=True``.
    A baseline that does not degrade under a corruption (denominator <= 0) raises ``ValueError``.
    """
    e0 = _check_value(clean_error, "clean", "clean_error")
    b0 = _check_value(baseline_clean_error, "clean", "baseline_clean_error")
    for v, n in ((e0, "clean_error"), (b0, "baseline_clean_error")):
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"{n} must be a fraction in [0, 1], got {v}")
    t = normalize_table(errors, "error", fraction=True)
    b = normalize_table(baseline_errors, "baseline error", fraction=True)
    _require(t, corruptions, severities, "errors")
    _require(b, corruptions, severities, "baseline_errors")
    rce: dict[str, float] = {}
    for c in corruptions:
        den = sum(b[c][s] - b0 for s in severities)
        if den <= 0.0:
            raise ValueError(f"baseline error of {c!r} does not exceed its clean error "
                             f"(summed degradation {den:.4g}): relative CE is undefined")
        rce[c] = sum(t[c][s] - e0 for s in severities) / den
    m = sum(rce.values()) / len(rce)
    return (m, rce) if per_corruption else m


def mean_over_corruptions(metric_table: Mapping, corruptions: Sequence[str] | None = None,
                          severities: Sequence[int] | None = None) -> float:
    """Mean of a metric (ECE, NLL, ...) over (corruption, severity) units, e.g. cECE.

    Without ``corruptions``/``severities`` every unit in the table counts; with them, exactly
    those units are averaged and missing ones raise ``ValueError``.
    """
    t = normalize_table(metric_table, "metric")
    if corruptions is None and severities is None:
        vals = [v for d in t.values() for v in d.values()]
    else:
        cs = list(t) if corruptions is None else list(corruptions)
        ss = SEVERITIES if severities is None else severities
        _require(t, cs, ss, "metric_table")
        vals = [t[c][s] for c in cs for s in ss]
    return sum(vals) / len(vals)


def per_corruption_mean(metric_table: Mapping) -> dict[str, float]:
    """``{corruption: mean over its severities}`` of a metric table."""
    return {c: sum(d.values()) / len(d) for c, d in normalize_table(metric_table, "metric").items()}
