"""The report's tables straight from :mod:`prunecal.eval.tables` (no rendering, no figures).

The column checks of ``test_report_content`` (every cell against values computed there from the
inserted rows) run here a second time on the :class:`~prunecal.eval.tables.Table` objects, in
about a second instead of a full report build: fast enough for ``scripts/mutation.sh report``,
which runs this file and ``test_report_verdict.py`` against every mutant of the content modules
(view.py, tables.py, verdict.py). Further checks below were added for that run's survivors.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from test_report_content import (BASE, BENCHMARK, NETS, SEEDS, SEVS, _clean, _corr, _find, build_synthetic,
                                 fmt)
from test_report_content import test_clean_table_columns as test_clean_table_columns  # noqa: F401
from test_report_content import test_corruption_table_columns as test_corruption_table_columns  # noqa: F401
from test_report_content import test_finetune_table_columns as test_finetune_table_columns  # noqa: F401
from test_report_content import test_verdict_table_columns as test_verdict_table_columns  # noqa: F401

from prunecal.eval import tables as T
from prunecal.eval.store import Store
from prunecal.eval.view import load_view

TITLES = {"Verdict: safe and fast?": T.verdict_table, "Clean accuracy and calibration": T.clean_table,
          "One-shot vs fine-tuned": T.finetune_table, "Fine-tuning recipes": T.recipe_table,
          "Corruption robustness": T.corruption_table, "Speed and size": T.speed_table}


def as_dicts(table: T.Table) -> list[dict[str, str]]:
    assert all(len(r) == len(table.header) for r in table.rows)
    return [dict(zip(table.header, r)) for r in table.rows]


def view_of(out):
    with Store(out / "results.sqlite") as st:
        return load_view(st)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("tables")
    rows = build_synthetic(out)
    return rows, view_of(out)


@pytest.fixture(scope="module")
def report(study):
    """The shape test_report_content's checks take: (rows, markdown, {title: rows}, paths)."""
    rows, v = study
    tabs = {title: as_dicts(fn(v)) for title, fn in TITLES.items()}
    return rows, "", tabs, None
