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


# function scope on purpose: mutmut maps a test to the functions that run while it runs, and a
# module-scoped fixture would run the table code only in the first test that uses it
@pytest.fixture
def study():
    cfg, rows = synthetic()
    return rows, view_of(cfg, rows)


@pytest.fixture
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


@pytest.fixture
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


# ---- captions: what each table says about how its numbers were made (literal, reviewed) ----------
RULE_TEXT = (
    "Cell colours: green = better than the unpruned network, grey = within the interval, red = worse. "
    "Clean accuracy and ECE: each network's 95 % interval is its bootstrap CI on the test images (mean of "
    "its seeds' bounds), widened to mean ± 2 sd over seeds where that is wider; within = the pruned and "
    "unpruned intervals overlap. mCE and corruption ECE: Student-t 95 % interval of the mean paired change "
    "over the conditions (corruption x severity; per corruption for mCE); within = it contains no change "
    "(mCE 100 %). Speed-up and size reduction (one timing per unit): within = ratio inside ±10% (size ±1%). "
    "'safe & faster' = no accuracy or calibration cell red (accuracy, ECE, ECE (TS), mCE, corruption ECE) "
    "and the speed-up green.")
VERDICT_CAPTION = (
    "One row per pruned network; the reference row holds the unpruned network's own values (accuracy, "
    "ECE, ECE after temperature scaling, cECE in %), every other row the change against it in percentage "
    "points (pp), its mCE (unpruned = 100 %), and its speed-up and size reduction on its fastest backend "
    "(named) against the unpruned network ({ref}; size: its stored bytes vs the unpruned dense bytes). "
    + RULE_TEXT)
CLEAN_CAPTION = (
    "Clean data ({n} evaluation images, 15 width bins). {ts}Values: mean over seeds (± sd over seeds with 2 "
    "or more); 95 % CI: bootstrap interval on the test images (mean of the seeds' bounds). achieved = share "
    "of prunable weights removed relative to the unpruned network.")
TS_50 = "TS = after temperature scaling with T fitted on 50 held-out clean images per network. "
TS_NONE = "No temperature scaling (--calib-fraction 0): TS columns equal the raw ones. "
CORR_CAPTION = (
    "corr. acc, cECE, cNLL: means over all {nc} corruptions x severities 1,3 ({src}), per seed, then mean "
    "± sd over seeds; units counts every seed's. Mean CE: unnormalised mean top-1 error over the 15 "
    "benchmark corruptions at these severities; mCE and relative mCE (Hendrycks & Dietterich 2019) are "
    "normalised by the unpruned network of the same model (= 100 %).")
SPEED_CAPTION = (
    "Clean-data throughput (model forward only, batch 64, 2 threads), mean over seeds; {ref}Every backend "
    "runs the BN-folded, ReLU-fused inference model (csr / bsr: the whole network as one native call, "
    "prunecal.sparse.compile_plan, where the graph compiles; otherwise and for dense / torch: "
    "prunecal.sparse.sparsify); 'stored' counts packed sparse weights. One timing per unit on a possibly "
    "shared machine: treat small differences as noise.")


def test_captions(study):
    _, v = study
    assert T.verdict_table(v).caption == VERDICT_CAPTION.format(ref="on dense")
    assert T.clean_table(v).caption == CLEAN_CAPTION.format(n=100, ts=TS_50)
    assert T.finetune_table(v).caption == (
        "Fine-tuned networks beside the one-shot network of the same method and sparsity (clean data; "
        "cECE: mean over the corrupted units). Mean over seeds ± sd. fine-tune s: wall seconds of "
        "fine-tuning per seed.")
    assert T.recipe_table(v).caption == (
        "Fine-tuning recipes as stored with each network (the recipe key in brackets is a short hash of "
        "it) and the last epoch's training loss / accuracy, mean over seeds.")
    # the synthetic errors are random: gaussian_noise's unpruned corrupted error does not exceed its clean one
    assert T.corruption_table(v).caption == CORR_CAPTION.format(nc=15, src="generated by prunecal.corruptions") + (
        " mCE not computed where shown '–': baseline error of 'gaussian_noise' does not exceed its clean "
        "error (summed degradation -0.1486): relative CE is undefined.")
    assert T.speed_table(v).caption == SPEED_CAPTION.format(
        ref="speed-up relative to the unpruned network on 'dense'. ")
    assert [t.name for t in (T.verdict_table(v), T.recipe_table(v), T.clean_table(v))] == ["verdict wrap", "wrap", ""]


def test_captions_of_other_studies():
    """No temperature scaling, official CIFAR-10-C files, no unpruned network, unknown image count."""
    cfg, rows = synthetic(nets=NETS[1:2], seeds=(0,), corruptions=("fog",))
    cfg = dict(cfg, n_calibration=0, cifar10c="/data/CIFAR-10-C")
    del cfg["n_evaluation"]
    v = view_of(cfg, rows)
    assert T.clean_table(v).caption == CLEAN_CAPTION.format(n="?", ts=TS_NONE)
    assert T.corruption_table(v).caption == CORR_CAPTION.format(nc=1, src="official CIFAR-10-C files") + (
        " mCE not computed where shown '–': the unpruned network (sparsity 0) is not in the study.")
    assert T.speed_table(v).caption == SPEED_CAPTION.format(
        ref="no speed-up column: the unpruned network (sparsity 0) is not in the study. ")
    assert T.verdict_table(v).caption == VERDICT_CAPTION.format(ref="not in the study")
    assert T.finetune_table(v) is None and T.recipe_table(v) is None


# ---- the verdict cells, recomputed here from the rule as documented (verdict.RULE) ---------------
T975 = {14: 2.145, 29: 2.045, 1: 12.706}  # two-sided 95 % Student t (scipy.stats.t.ppf(0.975, df))


def _tclass(diffs, higher_is_better):
    d = np.asarray(diffs, float)
    h = T975[d.size - 1] * d.std(ddof=1) / np.sqrt(d.size)
    lo, hi = d.mean() - h, d.mean() + h
    if lo <= 0 <= hi:
        return "within"
    return "better" if (lo > 0) == higher_is_better else "worse"


def _ratio_class(r, band):
    return "better" if r > 1 + band else "worse" if r < 1 / (1 + band) else "within"


def _expected_cells(rows, net):
    """{column: class} and the verdict of one pruned network (2 seeds, primary backend csr)."""
    out = {}
    for key, col, hib in (("accuracy", "Δ acc (pp)", True), ("ece", "Δ ECE (pp)", False),
                          ("ece_ts", "Δ ECE TS (pp)", False)):
        iv = []
        for n in (net, BASE):
            us = _clean(rows, n)
            x = np.array([u[key] for u in us])
            lo = min(np.mean([u["ci_json"][key][0] for u in us]), x.mean() - 2 * x.std(ddof=1))
            hi = max(np.mean([u["ci_json"][key][1] for u in us]), x.mean() + 2 * x.std(ddof=1))
            iv.append((lo, hi))
        (plo, phi), (blo, bhi) = iv
        out[col] = "within" if plo <= bhi and blo <= phi else ("better" if (plo > bhi) == hib else "worse")

    def seed_mean(n, get):
        d = {}
        for sd in SEEDS:
            for r in _corr(rows, n, sd):
                d.setdefault((r["corruption"], r["severity"]), []).append(get(r))
        return {k: np.mean(x) for k, x in d.items()}

    err = lambda r: 1 - r["accuracy"]  # noqa: E731
    pe, be = seed_mean(net, err), seed_mean(BASE, err)
    out["mCE %"] = _tclass([sum(pe[c, k] for k in SEVS) / sum(be[c, k] for k in SEVS) - 1 for c in BENCHMARK], False)
    pc, bc = seed_mean(net, lambda r: r["ece"]), seed_mean(BASE, lambda r: r["ece"])
    out["Δ cECE (pp)"] = _tclass([pc[k] - bc[k] for k in pc], False)
    ips = {b: np.mean([u["images_per_s"] for u in _clean(rows, net, b)]) for b in ("csr", "dense")}
    fast = max(ips, key=ips.get)
    ref = np.mean([u["images_per_s"] for u in _clean(rows, BASE, "dense")])
    out["speed-up"] = _ratio_class(ips[fast] / ref, 0.10)
    stored = np.mean([u["bytes_sparse"] for u in _clean(rows, net, fast)])
    out["size reduction"] = _ratio_class(100_000 / stored, 0.01)
    names = {"Δ acc (pp)": "accuracy", "Δ ECE (pp)": "ECE", "Δ ECE TS (pp)": "ECE (TS)", "mCE %": "mCE",
             "Δ cECE (pp)": "cECE"}
    worse = [names[c] for c in names if out[c] == "worse"]
    faster = out["speed-up"] == "better"
    if worse:
        verdict = ("faster; worse " if faster else "worse ") + ", ".join(worse)
    else:
        verdict = "safe & faster" if faster else "safe, not faster"
    return out, verdict


def _shifted_study():
    """The synthetic study with each pruned network moved so that the cells differ: l1_filter
    clearly worse (accuracy down, ECE and corrupted errors up), the one-shot global_magnitude
    clearly better calibrated, the fine-tuned one unchanged."""
    cfg, rows = synthetic()
    for u in rows:
        if u["method"] != "none" and u["corruption"] == "clean":  # speed and size: one of each class
            f, size = {"l1_filter": (0.3, 120_000), "global_magnitude": (1.0, None)}[u["method"]]
            if u["finetune_epochs"]:
                f, size = 1 / 3, 100_500
            u["images_per_s"] *= f
            u["bytes_sparse"] = size or u["bytes_sparse"]
        if u["method"] == "l1_filter":
            u["accuracy"] -= 0.3
            u["ece"] += 0.3
            u["ece_ts"] += 0.3
            if u["ci_json"]:
                u["ci_json"] = {k: [lo + (-0.3 if k == "accuracy" else 0.3), hi + (-0.3 if k == "accuracy" else 0.3)]
                                for k, (lo, hi) in u["ci_json"].items()}
        elif u["method"] == "global_magnitude" and u["finetune_epochs"] == 0:
            u["ece"] -= 0.25
            u["ece_ts"] -= 0.25
            u["accuracy"] = min(u["accuracy"] + 0.04, 0.999)
            if u["ci_json"]:
                u["ci_json"] = dict(u["ci_json"], ece=[x - 0.25 for x in u["ci_json"]["ece"]],
                                    ece_ts=[x - 0.25 for x in u["ci_json"]["ece_ts"]])
    # clean ECE with tight intervals: l1_filter clearly worse, the one-shot global_magnitude clearly
    # better; that one also clearly more robust under corruption (mCE better)
    ece = {"none": (0.05, 0.06), "l1_filter": (0.5, 0.51)}
    for u in rows:
        one_shot_gm = u["method"] == "global_magnitude" and u["finetune_epochs"] == 0
        if u["corruption"] == "clean" and u["backend"] == "csr" and (u["method"] in ece or one_shot_gm):
            e = (0.005, 0.006)[u["seed"]] if one_shot_gm else ece[u["method"]][u["seed"]]
            u["ece"] = e
            u["ci_json"] = dict(u["ci_json"], ece=[e - 0.005, e + 0.005])
        elif one_shot_gm and u["corruption"] != "clean":
            u["accuracy"] = 0.97
    return cfg, rows


@pytest.mark.parametrize("make", [synthetic, _shifted_study])
def test_verdict_cell_classes_follow_the_rule(make):
    cfg, rows = make()
    tab = T.verdict_table(view_of(cfg, rows))
    got = as_dicts(tab)
    seen = set()
    for i, net in enumerate(NETS[1:], start=1):
        want, verdict = _expected_cells(rows, net)
        row = _find(got, net)
        cls = dict(zip(tab.header, tab.classes[got.index(row)]))
        for col, c in want.items():
            assert cls[col] == c, (net, col)
            seen.add(c)
        assert row["verdict"] == verdict, net
        assert cls["verdict"] == ("safe" if verdict == "safe & faster" else "")
        assert all(cls[h] == "" for h in tab.header[:4])
    if make is _shifted_study:
        assert seen == {"better", "within", "worse"}
        for col in ("speed-up", "size reduction", "Δ ECE (pp)", "mCE %"):
            assert {dict(zip(tab.header, c))[col] for c in tab.classes[1:]} == {"better", "within", "worse"}, col


# ---- the view: grouping, ordering and the robustness numbers behind the tables -------------------
def test_view_orders_by_the_config_then_sorted_extras():
    cfg, rows = synthetic(nets=NETS, seeds=(1, 0), corruptions=("snow", "fog"))
    extra = [dict(r, method="aaa", sparsity=0.2) for r in rows if r["method"] == "l1_filter"]
    bsr = [dict(r, backend="bsr") for r in rows if r["method"] == "l1_filter" and r["corruption"] == "clean"]
    gm = [dict(r, corruption="brightness") for r in rows if r["corruption"] == "fog"]
    # the unpruned network fine-tuned (a control): method "none", not the reference
    extra += [dict(r, finetune_epochs=3, finetune_recipe="ft-38c543845a") for r in rows if r["method"] == "none"]
    cfg = dict(cfg, methods=["l1_filter", "global_magnitude"], corruptions=["snow", "fog"], n_bins=10)
    v = view_of(cfg, rows + extra + bsr + gm)
    assert v.model == "resnet20" and v.n_bins == 10
    assert v.methods == ["l1_filter", "global_magnitude", "aaa"]
    assert v.backends == ["csr", "dense", "bsr"] and v.primary == "csr"
    assert v.corruptions == ["snow", "fog", "brightness"]
    assert v.severities == [1, 3] and v.seeds == [0, 1]
    assert v.regimes == [(0, "none"), (3, "ft-38c543845a")]
    # the unpruned network first, the fine-tuned unpruned one next, then the methods in config order (extras
    # last), then sparsity and fine-tuning regime
    assert [(n.method, n.sparsity, n.epochs) for n in v.nets] == [
        ("none", 0.0, 0), ("none", 0.0, 3), ("l1_filter", 0.3, 0), ("global_magnitude", 0.5, 0),
        ("global_magnitude", 0.5, 3), ("aaa", 0.2, 0)]
    assert [n.method for n in v.pruned_nets("global_magnitude", (3, "ft-38c543845a"))] == ["global_magnitude"]
    assert v.has_base and v.finetuned and v.seeds_of(v.nets[2]) == [0, 1]
    bare = view_of({}, [dict(r) for r in rows if r["backend"] == "dense"])
    assert bare.model == "resnet20" and bare.n_bins == 15 and bare.primary == "dense"
    assert bare.backends == ["dense"] and bare.methods == ["global_magnitude", "l1_filter"]
    assert bare.regimes == [(0, "none"), (3, "ft-38c543845a")]
    assert view_of({}, rows[:1]).model == "resnet20"  # no model in the config: the unit's
    empty = view_of({}, [])
    assert empty.model == "?" and empty.primary == "dense" and empty.nets == [] and not empty.has_base
    assert view_of({"sparse_backend": ["dense", "csr"]}, rows).primary == "dense"


def test_robustness_reasons():
    from prunecal.eval.view import BASE_NET, Net

    cfg, rows = synthetic(nets=NETS[:2], seeds=(0,), corruptions=("fog", "snow", "frost", "glass_blur"))
    v = view_of(cfg, rows)
    gm = Net("global_magnitude", 0.5)
    assert v.robustness_net(gm) == {"reason": "11 of the 15 benchmark corruptions missing "
                                              "(brightness, contrast, defocus_blur, ...)"}
    few = [r for r in synthetic(nets=NETS[:2], seeds=(0,))[1]
           if r["corruption"] not in ("zoom_blur", "snow", "brightness")]
    assert view_of(cfg, few).robustness_net(gm) == {
        "reason": "3 of the 15 benchmark corruptions missing (brightness, snow, zoom_blur)"}
    clean_only = [r for r in rows if r["corruption"] == "clean"]
    assert view_of(cfg, clean_only).robustness_net(gm) == {"reason": "no corrupted units"}
    # no unpruned network: the unnormalised mean error only
    cfg2, rows2 = synthetic(nets=NETS[1:2], seeds=(0, 1))
    r = view_of(cfg2, rows2).robustness_net(gm)
    assert set(r) == {"reason", "mean_error_15"}
    assert r["reason"] == "the unpruned network (sparsity 0) is not in the study"
    want = [np.mean([1 - u["accuracy"] for u in _corr(rows2, NETS[1], sd)]) for sd in (0, 1)]
    assert (r["mean_error_15"].mean, r["mean_error_15"].n) == (pytest.approx(np.mean(want)), 2)
    assert view_of(cfg, clean_only).robustness_net(BASE_NET) == {"reason": "no corrupted units"}


def test_robustness_numbers_and_per_seed_clean_units():
    from prunecal.eval.view import Net

    cfg, rows = synthetic(nets=NETS[:2])
    rng = np.random.default_rng(3)
    for u in rows:
        if u["corruption"] == "clean":
            u["accuracy"] = float(rng.uniform(0.96, 0.99))
    gm = Net("global_magnitude", 0.5)
    r = view_of(cfg, rows).robustness_net(gm)
    base = {}
    for sd in SEEDS:
        for u in _corr(rows, BASE, sd):
            base.setdefault((u["corruption"], u["severity"]), []).append(1 - u["accuracy"])
    base = {k: np.mean(x) for k, x in base.items()}
    mean_e = {}
    for sd in SEEDS:
        for u in _corr(rows, NETS[1], sd):
            mean_e.setdefault((u["corruption"], u["severity"]), []).append(1 - u["accuracy"])
    ratios = [sum(np.mean(mean_e[c, k]) for k in SEVS) / sum(base[c, k] for k in SEVS) for c in BENCHMARK]
    assert r["mce_ratios"] == pytest.approx(ratios, rel=1e-12)
    assert "mce_reason" not in r and "rel_reason" not in r and r["rel_mce"].n == 2
    # seed 0 without its clean unit: relative mCE from seed 1 alone; no clean unit at all: the reason
    no0 = [u for u in rows if not (u["method"] == "global_magnitude" and u["corruption"] == "clean"
                                   and u["seed"] == 0 and u["backend"] == "csr")]
    r1 = view_of(cfg, no0).robustness_net(gm)
    assert r1["rel_mce"].n == 1 and "rel_reason" not in r1
    none = [u for u in no0 if not (u["method"] == "global_magnitude" and u["corruption"] == "clean"
                                   and u["backend"] == "csr")]
    r2 = view_of(cfg, none).robustness_net(gm)
    assert "rel_mce" not in r2 and r2["rel_reason"] == "clean unit missing"
    # an unpruned error of 0 under one corruption: mCE undefined, said why
    zero = [dict(u, accuracy=1.0) if u["method"] == "none" and u["corruption"] == "fog" else u for u in rows]
    r3 = view_of(cfg, zero).robustness_net(gm)
    assert "mce" not in r3 and r3["mce_reason"] == "baseline error of 'fog' is 0 at every severity: CE is undefined"


def test_load_view_picks_the_study(tmp_path):
    from prunecal.eval.store import Store
    from prunecal.eval.view import load_view

    cfg, rows = synthetic(nets=NETS[:2], seeds=(0,), corruptions=("fog",))
    with Store(tmp_path / "results.sqlite") as st:
        with pytest.raises(ValueError) as e:
            load_view(st)
        assert str(e.value) == f"{st.path}: the store holds no study yet"
        for h, model in (("aaa111", "resnet20"), ("aab222", "vgg16")):
            st.record_config(h, dict(cfg, model=model))
            for r in rows:
                assert st.insert_unit(dict(r, config_hash=h, model=model))
        v = load_view(st)  # the study run last
        assert (v.config_hash, v.model, v.config["model"], len(v.units)) == ("aab222", "vgg16", "vgg16", len(rows))
        assert load_view(st, "aaa").config_hash == "aaa111" and load_view(st, "aaa").model == "resnet20"
        assert len(load_view(st, "aab2").units) == len(rows)
        for prefix, n in (("aa", 2), ("zz", 0)):
            with pytest.raises(ValueError) as e:
                load_view(st, prefix)
            assert str(e.value) == f"config hash {prefix!r} matches {n} studies; stored: aab222, aaa111"


def test_view_lookups():
    from prunecal.eval.view import BASE_NET, Net, Stat, fmt_stat, net_of

    cfg, rows = synthetic(nets=NETS[:2], corruptions=("fog", "snow"))
    gm = Net("global_magnitude", 0.5)
    for u in rows:
        if u["backend"] == "dense":  # the dense backend stores no sparse bytes; dense the fastest for gm
            u["bytes_sparse"] = None
            if u["method"] == "global_magnitude":
                u["images_per_s"] = 1e6
        elif u["method"] == "none" and u["corruption"] == "clean":
            u["bytes_dense"] = None  # the unpruned dense bytes recorded on the dense backend only
    v = view_of(cfg, rows)
    assert v.stored_bytes(gm, "dense") == 100_000 and v.stored_bytes(gm, "csr") == 55_000
    assert v.stored_bytes(gm, "bsr") is None and v.reference_bytes() == 100_000
    assert v.fastest(gm)[0] == "dense" and v.fastest(gm)[1].mean == 1e6
    row = as_dicts(T.verdict_table(v))[1]  # size on the fastest backend: dense, nothing saved
    assert row["speed-up"].endswith("x (dense)") and row["size reduction"] == "1.00x"
    speed = {(r["method"], r["backend"]): r for r in as_dicts(T.speed_table(v))}
    assert speed["global_magnitude", "dense"]["compression"] == "–"  # no stored sparse bytes
    assert speed["global_magnitude", "csr"]["compression"] == f"{100_000 / 55_000:.2f}x"
    tie = [dict(u, images_per_s=50.0) if u["corruption"] == "clean" else u for u in rows]
    assert view_of(cfg, tie).fastest(gm)[0] == "csr"  # a tie goes to the first backend
    assert v.seeds_of(Net("x", 0.9)) == [] and v.clean_units(Net("x", 0.9)) == []
    # per-condition changes of the error, pruned minus unpruned, seeds averaged first
    ch = v.condition_changes(gm, "error")
    assert set(ch) == {(c, k) for c in ("fog", "snow") for k in SEVS}
    for (c, k), d in ch.items():
        e = lambda net: np.mean([1 - r["accuracy"] for sd in SEEDS for r in _corr(rows, net, sd)  # noqa: E731
                                 if r["corruption"] == c and r["severity"] == k])
        assert d == pytest.approx(e(NETS[1]) - e(BASE), rel=1e-12)
    # a metric without bootstrap CI: interval from the seed spread alone
    t = v.clean_stat(gm, "temperature")
    x = [u["temperature"] for u in _clean(rows, NETS[1])]
    assert t.ci is None and t.interval() == pytest.approx((np.mean(x) - 2 * np.std(x, ddof=1),
                                                          np.mean(x) + 2 * np.std(x, ddof=1)))
    # grouping: sparsity to 6 decimals, a missing recipe is "none"
    u = dict(rows[0])
    del u["finetune_recipe"]
    assert net_of(u) == BASE_NET and net_of(dict(u, sparsity=4e-7)) == BASE_NET
    assert net_of(dict(u, sparsity=0.5000004, method="m")) == Net("m", 0.5, 0, "none")
    assert net_of(dict(u, finetune_recipe=None, finetune_epochs=None)) == BASE_NET
    # formatting of a Stat: "± sd" with two or more seeds only
    assert fmt_stat(Stat(0.5, 0.01, 1)) == "50.0" and fmt_stat(Stat(0.5, 0.01, 2)) == "50.0 ± 1.0"
    assert fmt_stat(None) == "–" and fmt_stat(Stat(float("nan"), 0.0, 1)) == "–"
    assert fmt_stat(Stat(0.1234, 0.001, 3), 1, 3) == "0.123 ± 0.001"


def test_reference_rows(study):
    rows, v = study
    tab = T.verdict_table(v)
    ref = as_dicts(tab)[0]
    per_seed_cece = [np.mean([r["ece"] for r in _corr(rows, BASE, sd)]) for sd in SEEDS]
    ips = np.mean([u["images_per_s"] for u in _clean(rows, BASE, "dense")])
    assert ref == {
        "method": "unpruned (reference)", "sparsity": "0", "fine-tuning": "one-shot", "seeds": "2",
        "Δ acc (pp)": fmt([u["accuracy"] for u in _clean(rows, BASE)]) + " %",
        "Δ ECE (pp)": fmt([u["ece"] for u in _clean(rows, BASE)], nd=2) + " %",
        "Δ ECE TS (pp)": fmt([u["ece_ts"] for u in _clean(rows, BASE)], nd=2) + " %",
        "mCE %": "100.0", "Δ cECE (pp)": fmt(per_seed_cece, nd=2) + " %",
        "speed-up": f"1.00x (dense, {ips:,.0f} img/s)", "size reduction": f"1.00x ({100_000 / 1024:,.1f} KiB)",
        "verdict": "reference"}
    for t in (T.clean_table(v), T.corruption_table(v), T.verdict_table(v)):
        assert t.row_classes == ["ref", "", "", ""]


def test_missing_values_show_a_dash():
    """One seed; no CIs, achieved sparsity, byte counts; the one-shot global_magnitude without
    clean units on the primary backend, the fine-tuned one without corrupted units and without
    recipe / seconds / training accuracy: every such cell is '–' and no later row is lost."""
    cfg, rows = synthetic(seeds=(0,), corruptions=("fog",))
    gm0, gmft = NETS[1], NETS[2]
    out = []
    for u in rows:
        net = (u["method"], u["sparsity"], u["finetune_epochs"], u["finetune_recipe"])
        if net == gm0 and u["corruption"] == "clean" and u["backend"] == "csr":
            continue
        if net == gmft and u["corruption"] != "clean":
            continue
        u = dict(u, ci_json=None, sparsity_achieved=None, bytes_dense=None, bytes_sparse=None)
        if u["finetune_json"]:
            u["finetune_json"] = {"history": {"loss": [1.0, 0.7]}}
        out.append(u)
    v = view_of(cfg, out)
    clean = as_dicts(T.clean_table(v))
    assert [(r["method"], r["fine-tuning"]) for r in clean] == [
        ("unpruned (reference)", "one-shot"), ("global_magnitude", "fine-tuned 3 ep [ft-38c543845a]"),
        ("l1_filter", "one-shot")]
    assert {r[c] for r in clean for c in ("achieved", "acc 95 % CI", "ECE 95 % CI", "ECE (TS) 95 % CI")} == {"–"}
    corr = as_dicts(T.corruption_table(v))
    assert [(r["method"], r["fine-tuning"]) for r in corr] == [
        ("unpruned (reference)", "one-shot"), ("global_magnitude", "one-shot"), ("l1_filter", "one-shot")]
    speed = as_dicts(T.speed_table(v))
    assert [(r["method"], r["fine-tuning"], r["backend"]) for r in speed] == [
        ("unpruned (reference)", "one-shot", "csr"), ("unpruned (reference)", "one-shot", "dense"),
        ("global_magnitude", "one-shot", "dense"),
        ("global_magnitude", "fine-tuned 3 ep [ft-38c543845a]", "csr"),
        ("global_magnitude", "fine-tuned 3 ep [ft-38c543845a]", "dense"),
        ("l1_filter", "one-shot", "csr"), ("l1_filter", "one-shot", "dense")]
    assert {r[c] for r in speed for c in ("model KiB (dense)", "model KiB (stored)", "compression")} == {"–"}
    verdict = as_dicts(T.verdict_table(v))
    assert verdict[0]["size reduction"] == "–" and verdict[0]["verdict"] == "reference"
    assert verdict[0]["mCE %"] == "–"  # one corruption: no mCE, not even for the reference
    g = _find(verdict, gm0)
    assert (g["Δ acc (pp)"], g["Δ ECE (pp)"], g["size reduction"], g["verdict"]) == ("–", "–", "–", "no clean interval")
    ft = _find(as_dicts(T.finetune_table(v)), gmft)
    assert (ft["acc % one-shot"], ft["Δ acc (pp)"], ft["fine-tune s"], ft["cECE % fine-tuned"]) == ("–", "–", "–", "–")
    assert ft["seeds"] == "1" and ft["acc % fine-tuned"] == fmt([u["accuracy"] for u in _clean(out, gmft)])
    rec = _find(as_dicts(T.recipe_table(v)), gmft)
    assert (rec["recipe"], rec["last loss"], rec["last train acc %"], rec["seeds"]) == ("–", "0.700", "–", "1")


def test_no_unpruned_network_no_speed_up():
    cfg, rows = synthetic(nets=NETS[1:3], seeds=(0,), corruptions=("fog",))
    v = view_of(cfg, rows)
    assert {r["speed-up"] for r in as_dicts(T.speed_table(v))} == {"–"}
    verdict = as_dicts(T.verdict_table(v))
    assert [r["method"] for r in verdict] == ["global_magnitude"] * 2
    assert {(r["speed-up"], r["size reduction"], r["mCE %"], r["Δ acc (pp)"]) for r in verdict} == {("–", "–", "–", "–")}


def test_finetune_and_recipe_columns(study):
    rows, v = study
    ft, one = NETS[2], NETS[1]
    got = _find(as_dicts(T.finetune_table(v)), ft)
    d = np.mean([u["accuracy"] for u in _clean(rows, ft)]) - np.mean([u["accuracy"] for u in _clean(rows, one)])
    assert got["seeds"] == "2" and got["Δ acc (pp)"] == f"{100 * d:+.1f}"
    rec = _find(as_dicts(T.recipe_table(v)), ft)
    assert rec["seeds"] == "2" and rec["last train acc %"] == fmt([0.8, 0.81])  # history's last epoch per seed
    assert rec["recipe"] == "batch_size=128, epochs=3, lr=0.001, schedule=constant"
    assert T.recipe_table(v).header == ["method", "sparsity", "fine-tuning", "seeds", "recipe", "last loss",
                                        "last train acc %"]


def test_corruption_caption_lists_every_reason():
    """An unpruned error of 0 under fog: the mCE and the relative mCE are undefined, both said."""
    cfg, rows = synthetic(nets=NETS[:2])
    rows = [dict(u, accuracy=1.0) if u["method"] == "none" and u["corruption"] == "fog" else u for u in rows]
    cap = T.corruption_table(view_of(cfg, rows)).caption
    tail = cap.split(" mCE not computed where shown '–': ", 1)[1]
    assert tail.endswith(".") and tail[:-1].split("; ") == sorted(tail[:-1].split("; "))
    reasons = tail[:-1].split("; ")
    assert "baseline error of 'fog' is 0 at every severity: CE is undefined" in reasons and len(reasons) == 2


def test_clean_caption_names_the_binning():
    cfg, rows = synthetic(nets=NETS[:1], seeds=(0,), corruptions=("fog",))
    del cfg["binning"]
    assert T.clean_table(view_of(cfg, rows)).caption.startswith("Clean data (100 evaluation images, 15 width bins). ")
    cfg = dict(cfg, binning="mass", n_bins=10)
    assert T.clean_table(view_of(cfg, rows)).caption.startswith("Clean data (100 evaluation images, 10 mass bins). ")


def test_size_unknown_for_the_pruned_network_only():
    cfg, rows = synthetic(nets=NETS[:2], seeds=(0,), corruptions=("fog",))
    rows = [dict(u, bytes_sparse=None, bytes_dense=None) if u["method"] != "none" else u for u in rows]
    row = as_dicts(T.verdict_table(view_of(cfg, rows)))[1]
    assert row["size reduction"] == "–" and row["speed-up"] != "–"


def test_robustness_with_incomplete_seeds_and_missing_conditions():
    from prunecal.eval.view import Net

    cfg, rows = synthetic(nets=NETS[:2])
    gm = Net("global_magnitude", 0.5)

    def drop(pred):
        return view_of(cfg, [u for u in rows if not pred(u)]).robustness_net(gm)

    def gm_corr(u):
        return u["method"] == "global_magnitude" and u["corruption"] != "clean"

    # seed 0 lacks one condition, seed 1 is complete: the mCE from seed 1 alone
    r = drop(lambda u: gm_corr(u) and u["seed"] == 0 and u["corruption"] == "fog" and u["severity"] == 3)
    assert "reason" not in r and r["mce"].n == 1 and r["mean_error_15"].n == 1
    e = {(x["corruption"], x["severity"]): 1 - x["accuracy"] for x in _corr(rows, NETS[1], 1)}
    assert r["mean_error_15"].mean == pytest.approx(np.mean(list(e.values())), rel=1e-12)
    # no corrupted unit of this network (others have them): all 15 missing
    assert drop(gm_corr) == {"reason": "15 of the 15 benchmark corruptions missing "
                                       "(brightness, contrast, defocus_blur, ...)"}
    # the unpruned network lacks one: missing as well
    assert drop(lambda u: u["method"] == "none" and u["corruption"] == "zoom_blur") == {
        "reason": "1 of the 15 benchmark corruptions missing (zoom_blur)"}
    four = ("brightness", "contrast", "fog", "snow")
    assert drop(lambda u: u["corruption"] in four) == {
        "reason": "4 of the 15 benchmark corruptions missing (brightness, contrast, fog, ...)"}


def test_primary_backend_and_model_come_from_the_config():
    cfg, rows = synthetic(nets=NETS[:2], seeds=(0,), corruptions=("fog",))
    dense_only = [u for u in rows if u["backend"] == "dense"]
    # the first configured backend stays the primary one before any of its units is stored
    v = view_of(dict(cfg, sparse_backend=["bsr", "dense"]), dense_only)
    assert v.primary == "bsr" and v.backends == ["dense"]
    csr_only = [u for u in rows if u["backend"] == "csr"]
    nocfg = {k: x for k, x in cfg.items() if k not in ("sparse_backend", "model")}
    assert view_of(nocfg, csr_only).primary == "csr"  # no configured backends: the first stored one
    assert view_of(dict(cfg, model="vgg16"), rows).model == "vgg16"


def test_reference_row_without_clean_units():
    """The unpruned network evaluated under corruption only: its clean cells, speed and size
    are '–' (not '– %'), its cECE is shown."""
    cfg, rows = synthetic(nets=NETS[:2], seeds=(0,), corruptions=("fog",))
    rows = [u for u in rows if not (u["method"] == "none" and u["corruption"] == "clean")]
    v = view_of(cfg, rows)
    ref = as_dicts(T.verdict_table(v))[0]
    cece = np.mean([r["ece"] for r in _corr(rows, BASE, 0)])
    assert ref == {"method": "unpruned (reference)", "sparsity": "0", "fine-tuning": "one-shot", "seeds": "1",
                   "Δ acc (pp)": "–", "Δ ECE (pp)": "–", "Δ ECE TS (pp)": "–", "mCE %": "–",
                   "Δ cECE (pp)": f"{100 * cece:.2f} %", "speed-up": "–", "size reduction": "–",
                   "verdict": "reference"}
    assert {r["speed-up"] for r in as_dicts(T.speed_table(v))} == {"–"}
