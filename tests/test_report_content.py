"""Report content (issue #20): every column of every table holds the metric its header names.

A synthetic store with random, mutually distinct values (raw vs temperature-scaled metrics, two
seeds, one-shot and fine-tuned networks, all 15 benchmark corruptions) is rendered; the tables of
report.md and report.html are parsed back and each cell compared with the value computed here
independently from the rows inserted (numpy means / sample sd over seeds, the mCE formula of
Hendrycks & Dietterich written out). A column showing the wrong metric (e.g. "ECE % (TS)" with
the raw ECE) fails.
"""
from __future__ import annotations

import csv
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from prunecal.corruptions import BENCHMARK
from prunecal.eval.report import build_report
from prunecal.eval.store import Store

SEEDS = (0, 1)
SEVS = (1, 3)
# (method, sparsity, finetune_epochs, finetune_recipe)
BASE = ("none", 0.0, 0, "none")
NETS = (BASE, ("global_magnitude", 0.5, 0, "none"), ("global_magnitude", 0.5, 3, "ft-38c543845a"),
        ("l1_filter", 0.3, 0, "none"))
RECIPE = {"lr": 0.001, "batch_size": 128, "epochs": 3, "schedule": "constant"}


def _metrics(rng, acc):
    return {"accuracy": acc, "ece": float(rng.uniform(0.01, 0.2)), "mce": float(rng.uniform(0.1, 0.5)),
            "nll": float(rng.uniform(0.2, 1.5)), "brier": float(rng.uniform(0.05, 0.4)),
            "aurc": float(rng.uniform(0.01, 0.1))}


def _unit(rng, net, seed, corruption, severity, backend, ips):
    method, s, ep, rec = net
    acc = float(rng.uniform(0.5, 0.95))
    raw, ts = _metrics(rng, acc), _metrics(rng, acc)
    n = 15
    edges = np.linspace(0, 1, n + 1)
    rel = {"lower": edges[:-1].tolist(), "upper": edges[1:].tolist(), "count": [10] * n,
           "confidence": (edges[:-1] + 1 / 30).tolist(), "accuracy": [acc] * n, "binning": "width"}
    clean = corruption == "clean"
    ci = None
    if clean:
        w = [float(rng.uniform(0.005, 0.03)) for _ in range(4)]
        ci = {"accuracy": [acc - w[0], acc + w[0]], "ece": [raw["ece"] - w[1], raw["ece"] + w[1]],
              "ece_ts": [ts["ece"] - w[2], ts["ece"] + w[2]], "nll": [raw["nll"] - w[3], raw["nll"] + w[3]]}
    ft = None
    if ep:
        ft = {"recipe": RECIPE, "history": {"loss": [1.0, 0.8, 0.5 + 0.1 * seed],
                                            "train_acc": [0.5, 0.7, 0.8 + 0.01 * seed]},
              "seconds": 10.0 + seed}
    return dict(
        config_hash="h", model="resnet20", method=method, sparsity=s, seed=seed, finetune_epochs=ep,
        finetune_recipe=rec, corruption=corruption, severity=severity, backend=backend, n_images=100,
        n_bins=15, binning="width", temperature=float(rng.uniform(0.8, 2.5)), accuracy=acc,
        ece=raw["ece"], ece_ts=ts["ece"], nll=raw["nll"], nll_ts=ts["nll"], metrics_json=raw,
        metrics_ts_json=ts, reliability_json={"raw": rel, "ts": rel}, ci_json=ci, images_per_s=ips,
        eval_seconds=1.0, threads=2, batch_size=64, bytes_dense=100_000,
        bytes_sparse=int(100_000 * (1 - s) + 5_000), sparsity_achieved=s, params_total=1000,
        params_nonzero=int(1000 * (1 - s)), started_at="a", finished_at="b", finetune_json=ft)


def build_synthetic(out: Path, nets=NETS, seeds=SEEDS, corruptions=BENCHMARK, seed=0) -> list[dict]:
    """Insert the synthetic study into ``out/results.sqlite``; returns the inserted rows."""
    cfg, rows = synthetic(nets, seeds, corruptions, seed)
    with Store(out / "results.sqlite") as st:
        st.record_config("h", cfg)
        for r in rows:
            assert st.insert_unit(r)
    return rows


def synthetic(nets=NETS, seeds=SEEDS, corruptions=BENCHMARK, seed=0) -> tuple[dict, list[dict]]:
    """``(config, unit rows)`` of the synthetic study, not stored."""
    rng = np.random.default_rng(seed)
    cfg = {"model": "resnet20", "methods": ["global_magnitude", "l1_filter"],
           "sparse_backend": ["csr", "dense"], "n_bins": 15, "binning": "width", "batch_size": 64,
           "threads": 2, "corruptions": list(corruptions), "n_calibration": 50, "n_evaluation": 100,
           "seeds": list(seeds)}
    rows = []
    for net in nets:
        for sd in seeds:
            for b in ("csr", "dense"):
                ips = float(rng.uniform(80, 120)) * (1 + 4 * net[1] if b == "csr" else 1)
                rows.append(_unit(rng, net, sd, "clean", 0, b, ips))
            for c in corruptions:
                for sev in SEVS:
                    rows.append(_unit(rng, net, sd, c, sev, "csr", 100.0))
    return cfg, rows


# -- parsing the rendered tables back ---------------------------------------------------------

def md_tables(md: str) -> dict[str, list[dict[str, str]]]:
    """``{section heading: [row dicts]}`` for the first table under each ``## heading``."""
    out, head, cur = {}, None, None
    for line in md.splitlines() + [""]:
        if line.startswith("## "):
            head, cur = line[3:].strip(), None
        elif line.startswith("| ") and head is not None and head not in out:
            cells = [re.sub(r"\s*[🟢⚪🔴]$", "", c.strip()).replace("**", "") for c in line.strip()[2:-2].split(" | ")]
            if cur is None:
                cur = {"header": cells, "rows": []}
            else:
                cur["rows"].append(dict(zip(cur["header"], cells)))
        elif line.startswith("|---"):
            continue
        elif cur is not None and head not in out:
            out[head] = cur["rows"]
            cur = None
    return out


class _HTMLTables(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tables, self._row, self._cell, self._cls = [], None, None, None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self.tables.append({"class": a.get("class", ""), "rows": [], "cls": []})
        elif tag == "tr":
            self._row, self._cls = [], []
        elif tag in ("td", "th"):
            self._cell = ""
            self._cls.append(a.get("class", ""))

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self._row.append(self._cell)
            self._cell = None
        elif tag == "tr":
            self.tables[-1]["rows"].append(self._row)
            self.tables[-1]["cls"].append(self._cls)


def html_tables(text: str) -> list[dict]:
    p = _HTMLTables()
    p.feed(text)
    return p.tables


# -- the expected values, computed here -------------------------------------------------------

def fmt(vals, scale=100.0, nd=1):
    vals = [float(x) for x in vals]
    s = f"{scale * np.mean(vals):.{nd}f}"
    return s + (f" ± {scale * np.std(vals, ddof=1):.{nd}f}" if len(vals) >= 2 else "")


def _key(net):
    return ("unpruned (reference)" if net == BASE else net[0], f"{net[1]:g}",
            "one-shot" if net[2] == 0 else f"fine-tuned {net[2]} ep [{net[3]}]")


def _find(rows, net):
    k = _key(net)
    hits = [r for r in rows if (r["method"], r["sparsity"], r["fine-tuning"]) == k]
    assert len(hits) == 1, (k, rows)
    return hits[0]


def _clean(rows, net, backend="csr"):
    return [r for r in rows if (r["method"], r["sparsity"], r["finetune_epochs"], r["finetune_recipe"]) == net
            and r["corruption"] == "clean" and r["backend"] == backend]


def _corr(rows, net, seed):
    return [r for r in rows if (r["method"], r["sparsity"], r["finetune_epochs"], r["finetune_recipe"]) == net
            and r["corruption"] != "clean" and r["seed"] == seed]


def _mce_per_seed(rows, net):
    """Hendrycks & Dietterich: mean over the 15 corruptions of sum_s E / sum_s E_unpruned, the
    unpruned errors averaged over its seeds first."""
    base = {}
    for sd in SEEDS:
        for r in _corr(rows, BASE, sd):
            base.setdefault((r["corruption"], r["severity"]), []).append(1 - r["accuracy"])
    base = {k: np.mean(v) for k, v in base.items()}
    out = []
    for sd in SEEDS:
        e = {(r["corruption"], r["severity"]): 1 - r["accuracy"] for r in _corr(rows, net, sd)}
        out.append(np.mean([sum(e[c, k] for k in SEVS) / sum(base[c, k] for k in SEVS) for c in BENCHMARK]))
    return out


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    rows = build_synthetic(out)
    paths = build_report(out)
    md = paths["md"].read_text(encoding="utf-8")
    return rows, md, md_tables(md), paths


CLEAN_COLS = {  # header -> (column getter, scale, decimals)
    "T": (lambda r: r["temperature"], 1, 2),
    "acc %": (lambda r: r["accuracy"], 100, 1),
    "ECE %": (lambda r: r["metrics_json"]["ece"], 100, 2),
    "ECE % (TS)": (lambda r: r["metrics_ts_json"]["ece"], 100, 2),
    "MCE %": (lambda r: r["metrics_json"]["mce"], 100, 1),
    "MCE % (TS)": (lambda r: r["metrics_ts_json"]["mce"], 100, 1),
    "NLL": (lambda r: r["metrics_json"]["nll"], 1, 3),
    "NLL (TS)": (lambda r: r["metrics_ts_json"]["nll"], 1, 3),
    "Brier": (lambda r: r["metrics_json"]["brier"], 1, 3),
    "Brier (TS)": (lambda r: r["metrics_ts_json"]["brier"], 1, 3),
    "AURC": (lambda r: r["metrics_json"]["aurc"], 1, 4),
    "AURC (TS)": (lambda r: r["metrics_ts_json"]["aurc"], 1, 4),
}


def test_clean_table_columns(report):
    rows, md, tabs, _ = report
    tab = tabs["Clean accuracy and calibration"]
    assert len(tab) == len(NETS)
    assert tab[0]["method"] == "unpruned (reference)"  # the reference row once, first
    assert sum(r["method"] == "unpruned (reference)" for r in tab) == 1
    for net in NETS:
        got, us = _find(tab, net), _clean(rows, net)
        assert got["seeds"] == "2"
        for col, (get, scale, nd) in CLEAN_COLS.items():
            assert got[col] == fmt([get(u) for u in us], scale, nd), (net, col)
        for col, key, nd in (("acc 95 % CI", "accuracy", 1), ("ECE 95 % CI", "ece", 2),
                             ("ECE (TS) 95 % CI", "ece_ts", 2)):
            lo = np.mean([u["ci_json"][key][0] for u in us])
            hi = np.mean([u["ci_json"][key][1] for u in us])
            assert got[col] == f"{100 * lo:.{nd}f}–{100 * hi:.{nd}f}", (net, col)


def test_corruption_table_columns(report):
    rows, _, tabs, _ = report
    tab = tabs["Corruption robustness"]
    assert tab[0]["method"] == "unpruned (reference)"
    for net in NETS:
        got = _find(tab, net)
        per_seed = {k: [np.mean([r[k] for r in _corr(rows, net, sd)]) for sd in SEEDS]
                    for k in ("accuracy", "ece", "ece_ts", "nll", "nll_ts")}
        assert got["units"] == str(len(SEEDS) * len(BENCHMARK) * len(SEVS))
        assert got["corr. acc %"] == fmt(per_seed["accuracy"])
        assert got["cECE %"] == fmt(per_seed["ece"], nd=2)
        assert got["cECE % (TS)"] == fmt(per_seed["ece_ts"], nd=2)
        assert got["cNLL"] == fmt(per_seed["nll"], 1, 3)
        assert got["cNLL (TS)"] == fmt(per_seed["nll_ts"], 1, 3)
        assert got["mCE %"] == fmt(_mce_per_seed(rows, net))
        err = [np.mean([1 - r["accuracy"] for r in _corr(rows, net, sd)]) for sd in SEEDS]
        assert got["mean CE % (15 bench.)"] == fmt(err)


def test_verdict_table_columns(report):
    rows, md, tabs, _ = report
    tab = tabs["Verdict: safe and fast?"]
    assert [r["method"] for r in tab].count("unpruned (reference)") == 1
    assert len(tab) == len(NETS)
    ref_ips = np.mean([u["images_per_s"] for u in _clean(rows, BASE, "dense")])
    for net in NETS[1:]:
        got = _find(tab, net)
        for col, key in (("Δ acc (pp)", "accuracy"), ("Δ ECE (pp)", "ece"), ("Δ ECE TS (pp)", "ece_ts")):
            nd = 1 if key == "accuracy" else 2
            d = np.mean([u[key] for u in _clean(rows, net)]) - np.mean([u[key] for u in _clean(rows, BASE)])
            assert got[col] == f"{100 * d:+.{nd}f}", (net, col)
        d = np.mean([np.mean([r["ece"] for r in _corr(rows, net, sd) if r["corruption"] == c and r["severity"] == k])
                     - np.mean([r["ece"] for r in _corr(rows, BASE, sd) if r["corruption"] == c and r["severity"] == k])
                     for c in BENCHMARK for k in SEVS for sd in SEEDS])
        assert got["Δ cECE (pp)"] == f"{100 * d:+.2f}"
        assert got["mCE %"] == f"{100 * np.mean(_mce_per_seed(rows, net)):.1f}"
        best = max(("csr", "dense"), key=lambda b: np.mean([u["images_per_s"] for u in _clean(rows, net, b)]))
        sp = np.mean([u["images_per_s"] for u in _clean(rows, net, best)]) / ref_ips
        assert got["speed-up"] == f"{sp:.2f}x ({best})"
        size = 100_000 / np.mean([u["bytes_sparse"] for u in _clean(rows, net, best)])
        assert got["size reduction"] == f"{size:.2f}x"
    ref = tab[0]
    assert ref["Δ acc (pp)"] == fmt([u["accuracy"] for u in _clean(rows, BASE)]) + " %"
    assert ref["Δ ECE TS (pp)"] == fmt([u["ece_ts"] for u in _clean(rows, BASE)], nd=2) + " %"


def test_finetune_table_columns(report):
    rows, md, tabs, _ = report
    tab = tabs["One-shot vs fine-tuned"]
    ft, one = NETS[2], NETS[1]
    assert len(tab) == 1
    got = _find(tab, ft)
    for col, net, key, nd in (("acc % one-shot", one, "accuracy", 1), ("acc % fine-tuned", ft, "accuracy", 1),
                              ("ECE % one-shot", one, "ece", 2), ("ECE % fine-tuned", ft, "ece", 2),
                              ("ECE % (TS) one-shot", one, "ece_ts", 2), ("ECE % (TS) fine-tuned", ft, "ece_ts", 2)):
        assert got[col] == fmt([u[key] for u in _clean(rows, net)], nd=nd), col
    for col, net in (("cECE % one-shot", one), ("cECE % fine-tuned", ft)):
        assert got[col] == fmt([np.mean([r["ece"] for r in _corr(rows, net, sd)]) for sd in SEEDS], nd=2)
    assert got["fine-tune s"] == "10"  # mean of 10 and 11 seconds, rounded
    rec = tabs["Fine-tuning recipes"]
    assert "lr=0.001" in _find(rec, ft)["recipe"] and _find(rec, ft)["last loss"] == fmt([0.5, 0.6], 1, 3)
    assert "One-shot study (no fine-tuning)" not in md


def test_html_tables_match_markdown(report):
    """The HTML holds the same cells as the markdown, with a verdict class on every change cell."""
    _, _, tabs, paths = report
    ht = html_tables(paths["html"].read_text(encoding="utf-8"))
    md_order = ["Verdict: safe and fast?", "Clean accuracy and calibration", "One-shot vs fine-tuned",
                "Fine-tuning recipes", "Corruption robustness", "Speed and size"]
    assert len(ht) == len(md_order)
    for h, t in zip(md_order, ht):
        header, *body = t["rows"]
        assert [dict(zip(header, r)) for r in body] == tabs[h], h
    verdict = ht[0]
    assert "verdict" in verdict["class"].split()
    header = verdict["rows"][0]
    for cls in verdict["cls"][2:]:  # pruned rows
        for col in ("Δ acc (pp)", "Δ ECE TS (pp)", "mCE %", "Δ cECE (pp)", "speed-up"):
            assert cls[header.index(col)] in ("better", "within", "worse")


def test_csv_has_finetune_columns(report):
    rows, _, _, paths = report
    with open(paths["csv"], newline="") as f:
        got = list(csv.DictReader(f))
    assert len(got) == len(rows)
    assert {"finetune_epochs", "finetune_recipe", "seed", "raw_ece", "ts_ece", "ci_accuracy_lo"} <= set(got[0])
    ft = [r for r in got if r["finetune_epochs"] == "3"]
    assert ft and all(r["finetune_recipe"] == "ft-38c543845a" for r in ft)
    assert {r["finetune_recipe"] for r in got if r["finetune_epochs"] == "0"} == {"none"}
    clean_ft = [r for r in ft if r["corruption"] == "clean"]
    assert {r["finetune_seconds"] for r in clean_ft} == {"10.0", "11.0"}


def test_one_shot_study_says_so_first(tmp_path):
    build_synthetic(tmp_path, nets=NETS[:2], seeds=(0,), corruptions=("fog",))
    paths = build_report(tmp_path)
    head = "\n".join(paths["md"].read_text(encoding="utf-8").splitlines()[:4])
    assert "One-shot study (no fine-tuning)" in head and "--finetune-epochs 0,5 --finetune-data PATH" in head
    assert "<code>--finetune-epochs 0,5 --finetune-data PATH</code>" in paths["html"].read_text()
    tabs = md_tables(paths["md"].read_text(encoding="utf-8"))
    assert "One-shot vs fine-tuned" not in tabs
    # one seed: plain values, no "±"
    assert "±" not in "".join(str(r) for r in tabs["Clean accuracy and calibration"])


def test_stored_strings_are_escaped(tmp_path):
    evil = "<script>alert(1)</script>"
    nets = (BASE, (evil, 0.5, 0, "none"), ("global_magnitude", 0.5, 2, "<img src=x onerror=alert(2)>"))
    build_synthetic(tmp_path, nets=nets, seeds=(0,), corruptions=("fog",))
    paths = build_report(tmp_path)
    for p in (paths["md"], paths["html"]):
        text = p.read_text(encoding="utf-8")
        assert "<script" not in text and "<img src=x" not in text, p.name
        assert "&lt;script&gt;" in text


def _findings(md):
    sec = md.split("## Findings", 1)[1].split("\n## ", 1)[0]
    return [l[2:] for l in sec.splitlines() if l.startswith("- ")]


def test_findings_one_line_per_method(report):
    rows, md, _, _ = report
    lines = _findings(md)
    assert [l.split(" — ")[0] for l in lines] == ["unpruned (reference)", "global_magnitude", "l1_filter",
                                                  "fastest"]
    gm = lines[1]
    # one-shot and fine-tuned segments on the method's one line, each with its numbers
    one, ft = NETS[1], NETS[2]
    assert "one-shot: " in gm and "fine-tuned 3 ep [ft-38c543845a]: " in gm
    for net in (one, ft):
        acc = [u["accuracy"] for u in _clean(rows, net)]
        ts = [u["ece_ts"] for u in _clean(rows, net)]
        assert f"acc {fmt(acc)} %" in gm and f"TS {fmt(ts)} %" in gm
    assert lines[0].startswith(f"unpruned (reference) — acc {fmt([u['accuracy'] for u in _clean(rows, BASE)])} %")


def test_findings_without_unpruned_network(tmp_path):
    build_synthetic(tmp_path, nets=NETS[1:2], seeds=(0,), corruptions=("fog",))
    lines = _findings(build_report(tmp_path)["md"].read_text(encoding="utf-8"))
    assert len(lines) == 1 and lines[0].startswith("global_magnitude — one-shot: at 0.5: acc ")
    assert "safe" not in lines[0]  # no verdict without the unpruned network
