"""The report's tables, built from a :class:`prunecal.eval.view.StudyView`: the verdict table,
clean accuracy and calibration, one-shot vs fine-tuned, corruption robustness, fine-tuning
recipes, speed and size. Every table lists the unpruned network once, as its first
(reference) row; values are means over seeds, ``± sd`` where a network has 2 or more seeds."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import verdict as V
from .view import BASE_NET, ONESHOT, Net, Stat, StudyView, fmt_stat, regime_label


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    caption: str = ""
    classes: list[list[str]] | None = None  # per cell: a verdict class (better/within/worse) or ""
    row_classes: list[str] | None = None  # per row: "ref" for the reference row, else ""
    name: str = ""  # CSS class of the HTML table


def _pct(x: float | None, nd: int = 1) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.{nd}f}"


def _kib(x: float | None) -> str:
    return "–" if x is None else f"{x / 1024:,.1f}"


def _signed_pp(x: float | None, nd: int = 1) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{100 * x:+.{nd}f}"


def _abs(st: Stat | None, nd: int = 1) -> str:
    """An absolute value in the reference row of a table of changes: ``92.0 %``."""
    t = fmt_stat(st, nd=nd)
    return t if t == "–" else t + " %"


def _ci(st: Stat | None, nd: int = 1) -> str:
    """The bootstrap 95 % CI (mean of the seeds' bounds), in %: ``89.4–93.5``."""
    return f"{_pct(st.ci[0], nd)}–{_pct(st.ci[1], nd)}" if st is not None and st.ci else "–"


def net_cells(v: StudyView, n: Net) -> list[str]:
    """method, sparsity, fine-tuning, seeds."""
    return ["unpruned (reference)" if n.is_base else n.method, f"{n.sparsity:g}",
            n.regime_label(), str(len(v.seeds_of(n)))]


NET_HEAD = ["method", "sparsity", "fine-tuning", "seeds"]


# -- verdict -----------------------------------------------------------------------------------

def assess(v: StudyView, n: Net) -> dict[str, Any]:
    """The verdict cells of one pruned network against the unpruned one:
    ``{key: (value, class)}`` for accuracy / ece / ece_ts (changes), mce (the mCE), cece (change),
    speedup and size (ratios; ``speed_backend``), and ``verdict`` (:func:`verdict.overall`)."""
    out: dict[str, Any] = {}
    for key, hib in (("accuracy", True), ("ece", False), ("ece_ts", False)):
        p, b = v.clean_stat(n, key), v.clean_stat(BASE_NET, key)
        if p is None or b is None:
            out[key] = (None, V.NA)
        else:
            out[key] = (p.mean - b.mean,
                        V.overlap_class(p.interval(), b.interval(), higher_is_better=hib))
    rb = v.robustness_net(n)
    mce = rb.get("mce")
    if isinstance(mce, Stat):
        pi = V.paired_interval([r - 1 for r in rb.get("mce_ratios", [])])
        out["mce"] = (mce.mean, V.interval_class(pi[1], pi[2], higher_is_better=False) if pi else V.NA)
    else:
        out["mce"] = (None, V.NA)
    ch = list(v.condition_changes(n, "ece").values())
    pi = V.paired_interval(ch)
    out["cece"] = (float(np.mean(ch)) if ch else None,
                   V.interval_class(pi[1], pi[2], higher_is_better=False) if pi else V.NA)
    ref, fast = v.reference_speed(), v.fastest(n)
    if ref and fast:
        r = fast[1].mean / ref[1]
        out["speedup"], out["speed_backend"] = (r, V.ratio_class(r, V.SPEED_BAND)), fast[0]
        rb_, nb = v.reference_bytes(), v.stored_bytes(n, fast[0])
        r = rb_ / nb if rb_ and nb else None
        out["size"] = (r, V.ratio_class(r, V.SIZE_BAND))
    else:
        out["speedup"], out["speed_backend"], out["size"] = (None, V.NA), None, (None, V.NA)
    out["verdict"] = V.overall({k: c for k, (_, c) in ((k, out[k]) for k in
                                                       ("accuracy", "ece", "ece_ts", "mce", "cece", "speedup"))})
    return out


VERDICT_HEAD = NET_HEAD + ["Δ acc (pp)", "Δ ECE (pp)", "Δ ECE TS (pp)", "mCE %", "Δ cECE (pp)",
                           "speed-up", "size reduction", "verdict"]


def verdict_table(v: StudyView) -> Table:
    rows, classes, rcls = [], [], []
    ref = v.reference_speed()
    if v.has_base:
        b = BASE_NET
        c = v.corruption_stat(b, "ece")
        rb = v.reference_bytes()
        rows.append(net_cells(v, b) + [
            _abs(v.clean_stat(b, "accuracy")), _abs(v.clean_stat(b, "ece"), 2),
            _abs(v.clean_stat(b, "ece_ts"), 2), "100.0" if v.robustness_net(b).get("mce") else "–",
            _abs(c, 2), f"1.00x ({ref[0]}, {ref[1]:,.0f} img/s)" if ref else "–",
            f"1.00x ({_kib(rb)} KiB)" if rb else "–", "reference"])
        classes.append([""] * len(VERDICT_HEAD))
        rcls.append("ref")
    for n in v.pruned_nets():
        a = assess(v, n)
        sp, sz = a["speedup"][0], a["size"][0]
        rows.append(net_cells(v, n) + [
            _signed_pp(a["accuracy"][0]), _signed_pp(a["ece"][0], 2), _signed_pp(a["ece_ts"][0], 2),
            _pct(a["mce"][0]), _signed_pp(a["cece"][0], 2),
            f"{sp:.2f}x ({a['speed_backend']})" if sp else "–", f"{sz:.2f}x" if sz else "–",
            a["verdict"]])
        classes.append([""] * 4 + [a[k][1] for k in ("accuracy", "ece", "ece_ts", "mce", "cece",
                                                    "speedup", "size")]
                       + ["safe" if a["verdict"] == "safe & faster" else ""])
        rcls.append("")
    cap = ("One row per pruned network; the reference row holds the unpruned network's own values "
           "(accuracy, ECE, ECE after temperature scaling, cECE in %), every other row the change "
           "against it in percentage points (pp), its mCE (unpruned = 100 %), and its speed-up and "
           "size reduction on its fastest backend (named) against the unpruned network "
           f"({'on ' + ref[0] if ref else 'not in the study'}; size: its stored bytes vs the "
           "unpruned dense bytes). " + V.RULE)
    return Table(VERDICT_HEAD, rows, cap, classes, rcls, name="verdict wrap")


# -- clean -------------------------------------------------------------------------------------

def clean_table(v: StudyView) -> Table:
    head = NET_HEAD + ["achieved", "T", "acc %", "acc 95 % CI", "ECE %", "ECE 95 % CI", "ECE % (TS)",
                       "ECE (TS) 95 % CI", "MCE %",
                       "MCE % (TS)", "NLL", "NLL (TS)", "Brier", "Brier (TS)", "AURC", "AURC (TS)"]
    rows, rcls = [], []
    for n in v.nets:
        if not v.clean_units(n):
            continue
        s = lambda k: v.clean_stat(n, k)  # noqa: E731
        acc = s("accuracy")
        rows.append(net_cells(v, n) + [
            _pct(s("sparsity_achieved").mean if s("sparsity_achieved") else None),
            fmt_stat(s("temperature"), 1, 2), fmt_stat(acc), _ci(acc),
            fmt_stat(s("raw:ece"), nd=2), _ci(s("ece"), 2), fmt_stat(s("ts:ece"), nd=2), _ci(s("ece_ts"), 2),
            fmt_stat(s("raw:mce")), fmt_stat(s("ts:mce")),
            fmt_stat(s("raw:nll"), 1, 3), fmt_stat(s("ts:nll"), 1, 3),
            fmt_stat(s("raw:brier"), 1, 3), fmt_stat(s("ts:brier"), 1, 3),
            fmt_stat(s("raw:aurc"), 1, 4), fmt_stat(s("ts:aurc"), 1, 4)])
        rcls.append("ref" if n.is_base else "")
    n_eval = v.config.get("n_evaluation")
    n_cal = v.config.get("n_calibration") or 0
    ts = (f"TS = after temperature scaling with T fitted on {n_cal} held-out clean images per network. "
          if n_cal else "No temperature scaling (--calib-fraction 0): TS columns equal the raw ones. ")
    cap = (f"Clean data ({n_eval if n_eval is not None else '?'} evaluation images, {v.n_bins} "
           f"{v.config.get('binning', 'width')} bins). {ts}"
           "Values: mean over seeds (± sd over seeds with 2 or more); 95 % CI: bootstrap interval "
           "on the test images (mean of the seeds' bounds). achieved = share of prunable weights "
           "removed relative to the unpruned network.")
    return Table(head, rows, cap, row_classes=rcls)


# -- one-shot vs fine-tuned --------------------------------------------------------------------

def finetune_table(v: StudyView) -> Table | None:
    """Each fine-tuned network beside the one-shot network of the same method and sparsity."""
    if not v.finetuned:
        return None
    head = ["method", "sparsity", "fine-tuning", "seeds", "acc % one-shot", "acc % fine-tuned",
            "Δ acc (pp)", "ECE % one-shot", "ECE % fine-tuned", "ECE % (TS) one-shot",
            "ECE % (TS) fine-tuned", "cECE % one-shot", "cECE % fine-tuned", "fine-tune s"]
    rows = []
    for n in v.pruned_nets():
        if n.regime == ONESHOT:
            continue
        o = Net(n.method, n.sparsity, *ONESHOT)
        cs = lambda net, k: v.clean_stat(net, k)  # noqa: E731
        ao, af = cs(o, "accuracy"), cs(n, "accuracy")
        secs = [j.get("seconds") for j in v.finetune_info(n) if j.get("seconds") is not None]
        rows.append(net_cells(v, n) + [
            fmt_stat(ao), fmt_stat(af), _signed_pp(af.mean - ao.mean) if ao and af else "–",
            fmt_stat(cs(o, "ece"), nd=2), fmt_stat(cs(n, "ece"), nd=2),
            fmt_stat(cs(o, "ece_ts"), nd=2), fmt_stat(cs(n, "ece_ts"), nd=2),
            fmt_stat(v.corruption_stat(o, "ece"), nd=2), fmt_stat(v.corruption_stat(n, "ece"), nd=2),
            f"{np.mean(secs):,.0f}" if secs else "–"])
    cap = ("Fine-tuned networks beside the one-shot network of the same method and sparsity "
           "(clean data; cECE: mean over the corrupted units). Mean over seeds ± sd. "
           "fine-tune s: wall seconds of fine-tuning per seed.")
    return Table(head, rows, cap)


def recipe_table(v: StudyView) -> Table | None:
    """The fine-tuning recipes and their last-epoch training loss / accuracy."""
    if not v.finetuned:
        return None
    head = ["method", "sparsity", "fine-tuning", "seeds", "recipe", "last loss", "last train acc %"]
    rows = []
    for n in v.pruned_nets():
        if n.regime == ONESHOT:
            continue
        info = v.finetune_info(n)
        rec = next((j.get("recipe") for j in info if j.get("recipe")), None) or {}
        hist = [j.get("history") or {} for j in info]
        loss = [h["loss"][-1] for h in hist if h.get("loss")]
        tacc = [h["train_acc"][-1] for h in hist if h.get("train_acc")]
        rows.append(net_cells(v, n) + [
            ", ".join(f"{k}={rec[k]}" for k in sorted(rec)) or "–",
            fmt_stat(Stat(*V.mean_std(loss)) if loss else None, 1, 3),
            fmt_stat(Stat(*V.mean_std(tacc)) if tacc else None)])
    return Table(head, rows, name="wrap", caption="Fine-tuning recipes as stored with each network (the recipe key in "
                             "brackets is a short hash of it) and the last epoch's training loss / "
                             "accuracy, mean over seeds.")


# -- corruption --------------------------------------------------------------------------------

def corruption_table(v: StudyView) -> Table:
    head = NET_HEAD + ["units", "corr. acc %", "mean CE % (15 bench.)", "mCE %", "relative mCE %",
                       "cECE %", "cECE % (TS)", "cNLL", "cNLL (TS)"]
    rows, rcls, reasons = [], [], set()
    for n in v.nets:
        acc = v.corruption_stat(n, "accuracy")
        if acc is None:
            continue
        rb = v.robustness_net(n)
        for k in ("reason", "mce_reason", "rel_reason"):
            if k in rb:
                reasons.add(rb[k])
        c = lambda k: v.corruption_stat(n, k)  # noqa: E731
        rows.append(net_cells(v, n) + [
            str(v.n_corruption_units(n)), fmt_stat(acc), fmt_stat(rb.get("mean_error_15")),
            fmt_stat(rb.get("mce")), fmt_stat(rb.get("rel_mce")),
            fmt_stat(c("ece"), nd=2), fmt_stat(c("ece_ts"), nd=2),
            fmt_stat(c("nll"), 1, 3), fmt_stat(c("nll_ts"), 1, 3)])
        rcls.append("ref" if n.is_base else "")
    cap = (f"corr. acc, cECE, cNLL: means over all {len(v.corruptions)} corruptions x severities "
           f"{','.join(map(str, v.severities))} "
           f"({'official CIFAR-10-C files' if v.config.get('cifar10c') else 'generated by prunecal.corruptions'})"
           ", per seed, then mean ± sd over seeds; units counts every seed's. "
           "Mean CE: unnormalised mean top-1 error over the 15 benchmark corruptions at these "
           "severities; mCE and relative mCE (Hendrycks & Dietterich 2019) are normalised by the "
           "unpruned network of the same model (= 100 %).")
    if reasons:
        cap += " mCE not computed where shown '–': " + "; ".join(sorted(reasons)) + "."
    return Table(head, rows, cap, row_classes=rcls)


# -- speed -------------------------------------------------------------------------------------

def speed_table(v: StudyView) -> Table:
    ref = v.reference_speed()
    head = NET_HEAD + ["backend", "images/s", "speed-up", "model KiB (dense)", "model KiB (stored)",
                       "compression", "max abs logit diff vs " + v.primary, "argmax agree %"]
    rows, rcls = [], []
    for n in v.nets:
        for b in v.backends:
            us = v.clean_units(n, b)
            if not us:
                continue
            ips = v.clean_stat(n, "images_per_s", b)
            bd = np.mean([u["bytes_dense"] for u in us if u.get("bytes_dense")] or [np.nan])
            bs = np.mean([u["bytes_sparse"] for u in us if u.get("bytes_sparse")] or [np.nan])
            diff = [u["metrics_json"]["ref_max_abs_diff"] for u in us if "ref_max_abs_diff" in u["metrics_json"]]
            agree = [u["metrics_json"]["ref_argmax_agree"] for u in us if "ref_argmax_agree" in u["metrics_json"]]
            rows.append(net_cells(v, n) + [
                b, f"{ips.mean:,.0f}", f"{ips.mean / ref[1]:.2f}x" if ref else "–",
                _kib(bd if np.isfinite(bd) else None), _kib(bs if np.isfinite(bs) else None),
                f"{bd / bs:.2f}x" if np.isfinite(bd) and np.isfinite(bs) else "–",
                f"{max(diff):.2e}" if diff else "(reference)", _pct(min(agree), 1) if agree else "–"])
            rcls.append("ref" if n.is_base else "")
    cap = (f"Clean-data throughput (model forward only, batch {v.config.get('batch_size')}, "
           f"{v.config.get('threads')} threads), mean over seeds; "
           + (f"speed-up relative to the unpruned network on '{ref[0]}'. " if ref else
              "no speed-up column: the unpruned network (sparsity 0) is not in the study. ")
           + "Every backend runs the BN-folded, ReLU-fused inference model (csr / bsr: the whole "
           "network as one native call, prunecal.sparse.compile_plan, where the graph compiles; "
           "otherwise and for dense / torch: prunecal.sparse.sparsify); 'stored' counts packed sparse "
           "weights. One timing per unit on a possibly shared machine: treat small differences as noise.")
    return Table(head, rows, cap, row_classes=rcls)


__all__ = ["Table", "assess", "verdict_table", "clean_table", "finetune_table", "recipe_table",
           "corruption_table", "speed_table", "regime_label"]
