"""The ``prunecal-eval`` study: a resumable sweep over pruning method x sparsity x corruption x
severity x backend, its SQLite store and its report.

- :mod:`.config`   ``StudyConfig``, TOML/YAML loading, flag overrides, resolution, hashing
- :mod:`.store`    ``Store``: SQLite (WAL), one complete row per finished unit
- :mod:`.sweep`    ``Sweep``: the unit loop (prune, fit temperature, sparsify, evaluate, store)
- :mod:`.cache`    pruned-model cache (atomic writes)
- :mod:`.report`   ``build_report(out)``: report.md + self-contained report.html
- :mod:`.figures`  matplotlib figures (Agg)
- :mod:`.findings` the generated findings paragraph
- :mod:`.export`   ``results.csv``
- :mod:`.cli`      ``prunecal-eval`` / ``prunecal-report``
"""
from __future__ import annotations

from .config import StudyConfig, load_config_file, resolve
from .store import Store, StoreFullError

__all__ = ["StudyConfig", "load_config_file", "resolve", "Store", "StoreFullError", "build_report"]


def build_report(out, config_hash=None):
    """See :func:`prunecal.eval.report.build_report`."""
    from .report import build_report as _b

    return _b(out, config_hash=config_hash)
