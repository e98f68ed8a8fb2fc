"""The ``prunecal-eval`` study: a resumable pipeline of cached stages over model x pruning method
x sparsity x seed x fine-tuning length x corruption x severity x backend, its SQLite store and its
report.

- :mod:`.config`        ``StudyConfig``, one settings schema, TOML/YAML loading, resolution, hashing
- :mod:`.stages`        ``StageContext``: base -> [slimming] -> prune -> fine-tune -> temperature
- :mod:`.cache`         ``ArtefactCache``: content-keyed artefacts with sha256 manifests
- :mod:`.evaluate`      compile a network for a backend; logits, speed and metrics of one unit
- :mod:`.sweep`         ``plan`` / ``prepare`` / ``UnitRunner`` and the local ``Sweep`` loop (claims)
- :mod:`.ray_executor`  the same stages as Ray tasks (``--executor ray``)
- :mod:`.store`         ``Store``: SQLite (WAL), one checksummed row per finished unit, claims
- :mod:`.report`        ``build_report(out)``: report.md + self-contained report.html
- :mod:`.view`, :mod:`.verdict`, :mod:`.tables`, :mod:`.render`  the report's data, rule, tables, output
- :mod:`.figures`       matplotlib figures (Agg)
- :mod:`.findings`      the findings list
- :mod:`.export`        ``results.csv``
- :mod:`.progress`      rich bar or log lines
- :mod:`.cli`           ``prunecal-eval`` / ``prunecal-report``
"""
from __future__ import annotations

from .config import StudyConfig, load_config_file, resolve
from .store import Store, StoreFullError

__all__ = ["StudyConfig", "load_config_file", "resolve", "Store", "StoreFullError", "build_report"]


def build_report(out, config_hash=None):
    """See :func:`prunecal.eval.report.build_report`."""
    from .report import build_report as _b

    return _b(out, config_hash=config_hash)
