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
from test_report_content import (BASE, BENCHMARK, NETS, SEEDS, SEVS, _clean, _corr, _find, _key, fmt,
                                 synthetic)
from test_report_content import test_clean_table_columns as test_clean_table_columns  # noqa: F401
from test_report_content import test_corruption_table_columns as test_corruption_table_columns  # noqa: F401
from test_report_content import test_finetune_table_columns as test_finetune_table_columns  # noqa: F401
from test_report_content import test_verdict_table_columns as test_verdict_table_columns  # noqa: F401

from prunecal.eval import tables as T
from prunecal.eval.view import StudyView

TITLES = {"Verdict: safe and fast?": T.verdict_table, "Clean accuracy and calibration": T.clean_table,
          "One-shot vs fine-tuned": T.finetune_table, "Fine-tuning recipes": T.recipe_table,
          "Corruption robustness": T.corruption_table, "Speed and size": T.speed_table}


def as_dicts(table: T.Table) -> list[dict[str, str]]:
    assert all(len(r) == len(table.header) for r in table.rows)
    return [dict(zip(table.header, r)) for r in table.rows]


def view_of(cfg, rows) -> StudyView:
    """The view of the synthetic rows as the store returns them (test_report_content goes
    through the store and the rendered report)."""
    return StudyView("h", cfg, [dict(r) for r in rows])


@pytest.fixture(scope="module")
def study():
    cfg, rows = synthetic()
    return rows, view_of(cfg, rows)


@pytest.fixture(scope="module")
def report(study):
    """The shape test_report_content's checks take: (rows, markdown, {title: rows}, paths)."""
    rows, v = study
    tabs = {title: as_dicts(fn(v)) for title, fn in TITLES.items()}
    return rows, "", tabs, None


# ---- columns test_report_content does not check -----------------------------------------------
def test_relative_mce_and_achieved_sparsity():
    """relative mCE (Hendrycks & Dietterich): per seed, mean over the 15 corruptions of
    sum_s (E(c, s) - E_clean) / sum_s (E_unpruned(c, s) - E_unpruned_clean), the unpruned errors
    averaged over its seeds first; 'achieved' = mean stored sparsity_achieved in %."""
    cfg, rows = synthetic()
    rng = np.random.default_rng(7)
    for u in rows:  # clean error below every corrupted one: positive degradations
        if u["corruption"] == "clean":
            u["accuracy"] = float(rng.uniform(0.96, 0.99))
            u["sparsity_achieved"] = u["sparsity"] * float(rng.uniform(0.9, 1.0))
    v = view_of(cfg, rows)
    corr = as_dicts(T.corruption_table(v))
    clean = as_dicts(T.clean_table(v))
    base_c = {}
    for sd in SEEDS:
        for r in _corr(rows, BASE, sd):
            base_c.setdefault((r["corruption"], r["severity"]), []).append(1 - r["accuracy"])
    base_c = {k: np.mean(x) for k, x in base_c.items()}
    base_clean = np.mean([1 - u["accuracy"] for u in _clean(rows, BASE)])
    for net in NETS:
        rel = []
        for sd in SEEDS:
            e = {(r["corruption"], r["severity"]): 1 - r["accuracy"] for r in _corr(rows, net, sd)}
            ec = 1 - next(u["accuracy"] for u in _clean(rows, net) if u["seed"] == sd)
            rel.append(np.mean([sum(e[c, k] - ec for k in SEVS) / sum(base_c[c, k] - base_clean for k in SEVS)
                                for c in BENCHMARK]))
        assert _find(corr, net)["relative mCE %"] == fmt(rel), net
        ach = np.mean([u["sparsity_achieved"] for u in _clean(rows, net)])
        assert _find(clean, net)["achieved"] == f"{100 * ach:.1f}", net


@pytest.fixture(scope="module")
def speed_study():
    """The synthetic study (fog only) with the sparse backend's comparison against the dense
    forward in metrics_json, as the sweep stores it."""
    cfg, rows = synthetic(corruptions=("fog",))
    rng = np.random.default_rng(5)
    for u in rows:
        if u["backend"] == "csr" and u["corruption"] == "clean":
            u["metrics_json"] = dict(u["metrics_json"], ref_max_abs_diff=float(rng.uniform(1e-7, 1e-5)),
                                     ref_argmax_agree=float(rng.uniform(0.99, 1.0)))
    return rows, view_of(cfg, rows)


def test_speed_table_columns(speed_study):
    rows, v = speed_study
    tab = T.speed_table(v)
    assert tab.header[-2] == "max abs logit diff vs csr"  # the primary backend (first in the config)
    got = as_dicts(tab)
    assert len(got) == len(NETS) * 2
    ref = np.mean([u["images_per_s"] for u in _clean(rows, BASE, "dense")])  # unpruned, dense
    for i, net in enumerate(NETS):
        cells = [r for r in got if (r["method"], r["sparsity"], r["fine-tuning"]) == _key(net)]
        assert [r["backend"] for r in cells] == ["csr", "dense"], net  # config order
        for r in cells:
            us = _clean(rows, net, r["backend"])
            ips = np.mean([u["images_per_s"] for u in us])
            bd, bs = np.mean([u["bytes_dense"] for u in us]), np.mean([u["bytes_sparse"] for u in us])
            assert r["images/s"] == f"{ips:,.0f}"
            assert r["speed-up"] == f"{ips / ref:.2f}x"
            assert r["model KiB (dense)"] == f"{bd / 1024:,.1f}" and r["model KiB (stored)"] == f"{bs / 1024:,.1f}"
            assert r["compression"] == f"{bd / bs:.2f}x"
            if r["backend"] == "csr":
                assert r["max abs logit diff vs csr"] == f"{max(u['metrics_json']['ref_max_abs_diff'] for u in us):.2e}"
                assert r["argmax agree %"] == f"{100 * min(u['metrics_json']['ref_argmax_agree'] for u in us):.1f}"
            else:
                assert r["max abs logit diff vs csr"] == "(reference)" and r["argmax agree %"] == "–"
    assert tab.row_classes == ["ref", "ref"] + [""] * (2 * len(NETS) - 2)


def test_verdict_cells_safe_and_faster():
    """The Table-level twin of test_report_verdict's rendered check: a copy of the unpruned
    network as 'global_magnitude @ 0.7', 3x faster on csr, corrupted ECE changes of both signs."""
    cfg, base = synthetic(nets=(BASE,), seeds=(0,), corruptions=("fog", "snow"))
    rows = list(base)
    for u in base:
        if u["backend"] == "csr" or u["corruption"] == "clean":
            u = dict(u, method="global_magnitude", sparsity=0.7, bytes_sparse=30_000)
            if u["backend"] == "csr":
                u["images_per_s"] *= 3
            if u["corruption"] != "clean":
                u["ece"] += 0.001 * (1 if u["corruption"] == "fog" else -1)
            rows.append(u)
    tab = T.verdict_table(view_of(cfg, rows))
    row, cls = as_dicts(tab)[1], dict(zip(tab.header, tab.classes[1]))
    assert row["verdict"] == "safe & faster" and cls["verdict"] == "safe"
    assert row["Δ acc (pp)"] == "+0.0" and row["Δ ECE (pp)"] == "+0.00" and row["Δ ECE TS (pp)"] == "+0.00"
    assert {cls[k] for k in ("Δ acc (pp)", "Δ ECE (pp)", "Δ ECE TS (pp)", "Δ cECE (pp)")} == {"within"}
    assert cls["speed-up"] == "better" and cls["size reduction"] == "better"
    assert tab.classes[0] == [""] * len(tab.header) and tab.row_classes == ["ref", ""]
