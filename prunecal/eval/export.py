"""CSV export of the store: ``out/results.csv``, one row per unit, flat columns.

Columns: the store's scalar columns, then ``raw_<metric>`` (no temperature) and ``ts_<metric>``
(after temperature scaling) for every key of :func:`prunecal.metrics.summary`, then
``ci_<metric>_lo`` / ``ci_<metric>_hi`` (bootstrap 95 % intervals, clean units only; empty
elsewhere), then for fine-tuned networks ``finetune_seconds``, ``finetune_last_loss`` and
``finetune_last_train_acc`` (the key columns ``finetune_epochs`` / ``finetune_recipe`` are among
the store's scalar columns: 0 / ``none`` for one-shot networks). Reliability bins and the full
recipe stay in the store (JSON) and are not exported.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Iterable

from prunecal._atomic import atomic_write

from .store import JSON_COLUMNS, UNIT_COLUMNS


def flatten(unit: dict[str, Any]) -> dict[str, Any]:
    """One flat dict per unit row (see module doc)."""
    out = {k: unit.get(k) for k in UNIT_COLUMNS if k not in JSON_COLUMNS}
    for prefix, col in (("raw", "metrics_json"), ("ts", "metrics_ts_json")):
        for k, v in (unit.get(col) or {}).items():
            if isinstance(v, (int, float, str, bool)) or v is None:
                out[f"{prefix}_{k}"] = v
    for k, (lo, hi) in (unit.get("ci_json") or {}).items():
        out[f"ci_{k}_lo"], out[f"ci_{k}_hi"] = lo, hi
    ft = unit.get("finetune_json") or {}
    if ft:
        hist = ft.get("history") or {}
        out["finetune_seconds"] = ft.get("seconds")
        out["finetune_last_loss"] = (hist.get("loss") or [None])[-1]
        out["finetune_last_train_acc"] = (hist.get("train_acc") or [None])[-1]
    return out


def write_csv(units: Iterable[dict[str, Any]], path: str | Path) -> Path:
    """Write the units as CSV (atomic replace); returns the path."""
    rows = [flatten(u) for u in units]
    cols: list[str] = []
    for r in rows:
        cols += [c for c in r if c not in cols]
    text = io.StringIO(newline="")
    w = csv.DictWriter(text, fieldnames=cols, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    return atomic_write(path, lambda f: f.write(text.getvalue().encode()))


__all__ = ["flatten", "write_csv"]
