"""``report.md`` + self-contained ``report.html`` (figures embedded as base64 PNG), the PNGs in
``out/figures/`` and ``out/results.csv``, all rebuilt from the store alone.

Definitions used in the tables (errors and accuracies as fractions, shown in %):

- corruption accuracy / mean corruption error: plain means over every stored
  (corruption, severity) unit of the network (primary backend);
- mCE (Hendrycks & Dietterich 2019) and relative mCE: normalised by the UNPRUNED network of the
  same model (sparsity 0, so it scores 100 %), computed with
  :func:`prunecal.metrics.robustness.mce_hendrycks` / ``relative_mce`` over the 15 benchmark
  corruptions at the study's severities; only when all of them are stored for both networks;
- cECE / cNLL: mean ECE / NLL over the corrupted units, before and after temperature scaling
  (the temperature is fitted on clean held-out images only).
"""
from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import figures as F
from .export import write_csv
from .store import Store

BASELINE = "none"


def _pct(x: float | None, nd: int = 1) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.{nd}f}"


def _f(x: float | None, nd: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def _kib(x: int | None) -> str:
    return "–" if x is None else f"{x / 1024:,.1f}"


@dataclass
class StudyView:
    """Aggregated, read-only view of one study's units (one ``config_hash``)."""

    config_hash: str
    config: dict[str, Any]
    units: list[dict[str, Any]]
    model: str = ""
    n_bins: int = 15
    methods: list[str] = field(default_factory=list)
    backends: list[str] = field(default_factory=list)
    primary: str = "dense"
    corruptions: list[str] = field(default_factory=list)
    severities: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        cfg = self.config
        self.model = cfg.get("model") or (self.units[0]["model"] if self.units else "?")
        self.n_bins = int(cfg.get("n_bins", 15))
        backends_cfg = list(cfg.get("sparse_backend") or [])
        present_b = {u["backend"] for u in self.units}
        self.backends = [b for b in backends_cfg if b in present_b] + sorted(present_b - set(backends_cfg))
        self.primary = backends_cfg[0] if backends_cfg else (self.backends[0] if self.backends else "dense")
        present_m = {u["method"] for u in self.units} - {BASELINE}
        self.methods = [m for m in cfg.get("methods", []) if m in present_m] + sorted(
            present_m - set(cfg.get("methods", [])))
        present_c = {u["corruption"] for u in self.units} - {"clean"}
        self.corruptions = [c for c in cfg.get("corruptions", []) if c in present_c] + sorted(
            present_c - set(cfg.get("corruptions", [])))
        self.severities = sorted({u["severity"] for u in self.units if u["corruption"] != "clean"})
        self._idx = {(u["method"], round(u["sparsity"], 6), u["corruption"], u["severity"], u["backend"]): u
                     for u in self.units}

    # -- lookups ---------------------------------------------------------------------------
    @staticmethod
    def method_of(method: str, sparsity: float) -> str:
        return BASELINE if sparsity == 0 else method

    def unit(self, method: str, sparsity: float, corruption: str = "clean", severity: int = 0,
             backend: str | None = None) -> dict | None:
        return self._idx.get((self.method_of(method, sparsity), round(float(sparsity), 6),
                              corruption, severity, backend or self.primary))

    def clean_unit(self, method: str, sparsity: float, backend: str | None = None) -> dict | None:
        return self.unit(method, sparsity, backend=backend)

    def sparsities(self, method: str) -> list[float]:
        s = {u["sparsity"] for u in self.units if u["method"] == method}
        if any(u["method"] == BASELINE for u in self.units):
            s.add(0.0)
        return sorted(s)

    def clean_series(self, method: str, backend: str | None = None) -> list[tuple[float, dict]]:
        """``[(sparsity, clean unit)]`` including the unpruned network at 0."""
        out = []
        for s in self.sparsities(method):
            u = self.clean_unit(method, s, backend)
            if u is not None:
                out.append((s, u))
        return out

    def corruption_units(self, method: str, sparsity: float) -> dict[tuple[str, int], dict]:
        m = self.method_of(method, sparsity)
        return {(u["corruption"], u["severity"]): u for u in self.units
                if u["method"] == m and round(u["sparsity"], 6) == round(sparsity, 6)
                and u["corruption"] != "clean" and u["backend"] == self.primary}

    def corruption_summary(self, method: str, sparsity: float) -> dict[str, float] | None:
        """Means over the corrupted units: accuracy, error, ece, ece_ts, nll, nll_ts, n_units."""
        us = list(self.corruption_units(method, sparsity).values())
        if not us:
            return None
        mean = lambda k: float(np.mean([u[k] for u in us]))  # noqa: E731
        return dict(accuracy=mean("accuracy"), error=1 - mean("accuracy"), ece=mean("ece"),
                    ece_ts=mean("ece_ts"), nll=mean("nll"), nll_ts=mean("nll_ts"), n_units=len(us))

    def delta_vs_base(self, method: str, sparsity: float, corruption: str, metric: str) -> float | None:
        """Mean over shared severities of ``metric(pruned) - metric(unpruned)`` under ``corruption``."""
        cu = self.corruption_units(method, sparsity)
        bu = self.corruption_units(BASELINE, 0.0)
        get = (lambda u: 1 - u["accuracy"]) if metric == "error" else (lambda u: u[metric])
        d = [get(cu[(corruption, s)]) - get(bu[(corruption, s)]) for s in self.severities
             if (corruption, s) in cu and (corruption, s) in bu]
        return float(np.mean(d)) if d else None

    def robustness(self, method: str, sparsity: float) -> dict[str, Any]:
        """``{"mce", "rel_mce"}`` (fractions) or ``{"reason": why not computed}``."""
        from prunecal.metrics import robustness as R

        sev = self.severities
        if not sev:
            return {"reason": "no corrupted units"}
        bench = list(R.BENCHMARK_CORRUPTIONS)
        cu = self.corruption_units(method, sparsity)
        bu = self.corruption_units(BASELINE, 0.0)
        if not bu:
            out0: dict[str, Any] = {"reason": "the unpruned network (sparsity 0) is not in the study"}
            if all((c, s) in cu for c in bench for s in sev):
                e0 = {(c, s): 1 - cu[(c, s)]["accuracy"] for c in bench for s in sev}
                out0["mean_error_15"] = R.mean_corruption_error(e0, bench, sev)
            return out0
        missing = sorted({c for c in bench for s in sev if (c, s) not in cu or (c, s) not in bu})
        if missing:
            return {"reason": f"{len(missing)} of the 15 benchmark corruptions missing "
                              f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})"}
        e = {(c, s): 1 - cu[(c, s)]["accuracy"] for c in bench for s in sev}
        b = {(c, s): 1 - bu[(c, s)]["accuracy"] for c in bench for s in sev}
        out: dict[str, Any] = {"mean_error_15": R.mean_corruption_error(e, bench, sev)}
        try:
            out["mce"] = R.mce_hendrycks(e, b, bench, sev)
        except ValueError as exc:
            out["mce_reason"] = str(exc)
        cl, bcl = self.clean_unit(method, sparsity), self.clean_unit(BASELINE, 0.0)
        if cl is None or bcl is None:
            out["rel_reason"] = "clean unit missing"
        else:
            try:
                out["rel_mce"] = R.relative_mce(e, 1 - cl["accuracy"], b, 1 - bcl["accuracy"], bench, sev)
            except ValueError as exc:
                out["rel_reason"] = str(exc)
        return out

    def reference_speed(self) -> tuple[str, float] | None:
        """``(backend, images/s)`` of the unpruned network on ``dense`` (else the primary)."""
        for b in (["dense"] if "dense" in self.backends else []) + [self.primary]:
            u = self.clean_unit(BASELINE, 0.0, b)
            if u is not None:
                return b, float(u["images_per_s"])
        return None


def load_view(store: Store, config_hash: str | None = None) -> StudyView:
    """The view of ``config_hash`` (default: the study run last). ValueError if absent/empty."""
    cfgs = store.configs()
    if not cfgs:
        raise ValueError(f"{store.path}: the store holds no study yet")
    if config_hash is None:
        chosen = cfgs[0]
    else:
        matches = [c for c in cfgs if c["config_hash"].startswith(config_hash)]
        if len(matches) != 1:
            raise ValueError(f"config hash {config_hash!r} matches {len(matches)} studies; stored: "
                             + ", ".join(c["config_hash"] for c in cfgs))
        chosen = matches[0]
    return StudyView(chosen["config_hash"], chosen["config"], store.units(chosen["config_hash"]))


# ---------------------------------------------------------------------------------------------
# document model: a list of blocks rendered to markdown and to HTML


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclass
class Figure:
    path: Path
    caption: str


def _clean_table(v: StudyView) -> Table:
    head = ["method", "sparsity", "achieved", "T", "acc %", "acc 95 % CI", "ECE %", "ECE % (TS)",
            "MCE %", "MCE % (TS)", "NLL", "NLL (TS)", "Brier", "Brier (TS)", "AURC", "AURC (TS)"]
    rows = []
    for m in v.methods:
        for s, u in v.clean_series(m):
            r, t = u["metrics_json"], u["metrics_ts_json"]
            ci = (u.get("ci_json") or {}).get("accuracy")
            rows.append([m if s > 0 else f"{m} (unpruned)", f"{s:g}", _pct(u.get("sparsity_achieved")),
                         _f(u["temperature"], 2), _pct(u["accuracy"]),
                         f"{_pct(ci[0])}–{_pct(ci[1])}" if ci else "–",
                         _pct(r.get("ece"), 2), _pct(t.get("ece"), 2), _pct(r.get("mce"), 1),
                         _pct(t.get("mce"), 1), _f(r.get("nll")), _f(t.get("nll")),
                         _f(r.get("brier")), _f(t.get("brier")), _f(r.get("aurc"), 4), _f(t.get("aurc"), 4)])
    n_eval = v.config.get("n_evaluation")
    n_cal = v.config.get("n_calibration") or 0
    ts = (f"TS = after temperature scaling with T fitted on {n_cal} held-out clean images per network. "
          if n_cal else "No temperature scaling (--calib-fraction 0): TS columns equal the raw ones. ")
    cap = (f"Clean data ({n_eval if n_eval is not None else '?'} evaluation images, {v.n_bins} "
           f"{v.config.get('binning', 'width')} bins). {ts}"
           "achieved = share of prunable weights removed relative to the unpruned network.")
    return Table(head, rows, cap)


def _corruption_table(v: StudyView) -> Table:
    head = ["method", "sparsity", "units", "corr. acc %", "mean CE % (15 bench.)", "mCE %",
            "relative mCE %", "cECE %", "cECE % (TS)", "cNLL", "cNLL (TS)"]
    rows, reasons = [], set()
    for m in v.methods:
        for s, _ in v.clean_series(m):
            c = v.corruption_summary(m, s)
            if c is None:
                continue
            rb = v.robustness(m, s)
            if "reason" in rb:
                reasons.add(rb["reason"])
            for k in ("mce_reason", "rel_reason"):
                if k in rb:
                    reasons.add(rb[k])
            rows.append([m if s > 0 else f"{m} (unpruned)", f"{s:g}", str(c["n_units"]),
                         _pct(c["accuracy"]), _pct(rb.get("mean_error_15")), _pct(rb.get("mce")),
                         _pct(rb.get("rel_mce")),
                         _pct(c["ece"], 2), _pct(c["ece_ts"], 2), _f(c["nll"]), _f(c["nll_ts"])])
    cap = (f"corr. acc, cECE, cNLL: means over all {len(v.corruptions)} corruptions x severities "
           f"{','.join(map(str, v.severities))} "
           f"({'official CIFAR-10-C files' if v.config.get('cifar10c') else 'generated by prunecal.corruptions'}). "
           "Mean CE: unnormalised mean top-1 error over the 15 benchmark corruptions at these "
           "severities; mCE and relative mCE (Hendrycks & Dietterich 2019) are normalised by the "
           "unpruned network of the same model (= 100 %).")
    if reasons:
        cap += " mCE not computed where shown '–': " + "; ".join(sorted(reasons)) + "."
    return Table(head, rows, cap)


def _speed_table(v: StudyView) -> Table:
    ref = v.reference_speed()
    head = ["method", "sparsity", "backend", "images/s", "speed-up", "model KiB (dense)",
            "model KiB (stored)", "compression", "max abs logit diff vs " + v.primary, "argmax agree %"]
    rows = []
    for m in v.methods:
        for b in v.backends:
            for s, u in v.clean_series(m, backend=b):
                raw = u["metrics_json"]
                bd, bs = u.get("bytes_dense"), u.get("bytes_sparse")
                rows.append([m if s > 0 else f"{m} (unpruned)", f"{s:g}", b, f"{u['images_per_s']:,.0f}",
                             f"{u['images_per_s'] / ref[1]:.2f}x" if ref else "–", _kib(bd), _kib(bs),
                             f"{bd / bs:.2f}x" if bd and bs else "–",
                             f"{raw['ref_max_abs_diff']:.2e}" if "ref_max_abs_diff" in raw else "(reference)",
                             _pct(raw.get("ref_argmax_agree"), 1) if "ref_argmax_agree" in raw else "–"])
    cap = (f"Clean-data throughput (model forward only, batch {v.config.get('batch_size')}, "
           f"{v.config.get('threads')} threads); "
           + (f"speed-up relative to the unpruned network on '{ref[0]}'. " if ref else
              "no speed-up column: the unpruned network (sparsity 0) is not in the study. ")
           + "Every backend runs the BN-folded, ReLU-fused inference model (csr / bsr: the whole "
           "network as one native call, prunecal.sparse.compile_plan, where the graph compiles; "
           "otherwise and for dense / torch: prunecal.sparse.sparsify); 'stored' counts packed sparse "
           "weights. One timing per unit on a possibly shared machine: treat small differences as noise.")
    return Table(head, rows, cap)


def _render_md(title: str, blocks: list[Any], out: Path) -> str:
    lines = [f"# {title}", ""]
    for b in blocks:
        if isinstance(b, str):
            lines += [b, ""]
        elif isinstance(b, tuple):  # heading
            lines += [f"{'#' * b[0]} {b[1]}", ""]
        elif isinstance(b, Table):
            if not b.rows:
                lines += ["_(no data)_", ""]
                continue
            lines.append("| " + " | ".join(b.header) + " |")
            lines.append("|" + "|".join("---" for _ in b.header) + "|")
            lines += ["| " + " | ".join(r) + " |" for r in b.rows]
            lines += ["", f"_{b.caption}_", ""]
        elif isinstance(b, Figure):
            lines += [f"![{b.caption}]({b.path.relative_to(out).as_posix()})", "", f"_{b.caption}_", ""]
    return "\n".join(lines)


_CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:12px;margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 6px;
text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
.cap{font-size:12px;color:#555;margin-bottom:1.5em}img{max-width:100%}code{background:#f3f3f3}"""


def _render_html(title: str, blocks: list[Any]) -> str:
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title>"
             f"<style>{_CSS}</style></head><body><h1>{e(title)}</h1>"]
    for b in blocks:
        if isinstance(b, str):
            parts.append(f"<p>{e(b)}</p>")
        elif isinstance(b, tuple):
            parts.append(f"<h{b[0]}>{e(b[1])}</h{b[0]}>")
        elif isinstance(b, Table):
            if not b.rows:
                parts.append("<p><em>(no data)</em></p>")
                continue
            parts.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in b.header) + "</tr>")
            parts += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in b.rows]
            parts.append(f"</table><div class='cap'>{e(b.caption)}</div>")
        elif isinstance(b, Figure):
            data = base64.b64encode(b.path.read_bytes()).decode()
            parts.append(f"<figure><img alt='{e(b.caption)}' src='data:image/png;base64,{data}'>"
                         f"<figcaption class='cap'>{e(b.caption)}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".tmp_{path.name}")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def build_report(out: str | Path, *, config_hash: str | None = None) -> dict[str, Path]:
    """Rebuild ``report.md``, ``report.html``, ``figures/*.png`` and ``results.csv`` in ``out``
    from ``out/results.sqlite``. Returns ``{"md", "html", "csv", "figures": [...]}``."""
    from .findings import findings

    out = Path(out)
    db = out / "results.sqlite"
    if not db.is_file():
        raise ValueError(f"no result store at {db}")
    with Store(db) as st:
        v = load_view(st, config_hash)
        all_cfgs = st.configs()
        all_units = st.units()
    figdir = out / "figures"
    figs: list[Figure] = []
    for fn, name, cap in (
            (F.accuracy_ece_vs_sparsity, "accuracy_ece_vs_sparsity.png",
             "Accuracy and ECE (before / after temperature scaling) vs sparsity: clean with 95 % "
             "bootstrap band (solid) and mean over corruptions (dashed)."),
            (F.reliability_diagrams, "reliability.png",
             "Reliability diagrams on clean data, unpruned vs the most-pruned network of each method."),
            (lambda vv, p: F.corruption_heatmap(vv, p, "error"), "heatmap_error.png",
             "Change in top-1 error per corruption vs the unpruned network (mean over severities)."),
            (lambda vv, p: F.corruption_heatmap(vv, p, "ece"), "heatmap_ece.png",
             "Change in ECE per corruption vs the unpruned network (mean over severities)."),
            (F.speedup_vs_sparsity, "speedup.png",
             "Throughput speed-up vs sparsity for each backend in the store.")):
        p = fn(v, figdir / name)
        if p is not None:
            figs.append(Figure(p, cap))

    cfg = v.config
    title = f"prunecal study: {v.model} ({v.config_hash})"
    blocks: list[Any] = [
        f"{len(v.units)} units stored; methods {', '.join(v.methods) or '–'}; backends "
        f"{', '.join(v.backends) or '–'}; weights sha256 {str(cfg.get('weights_sha256', '?'))[:16]}; "
        f"data {cfg.get('data')} ({cfg.get('n_evaluation', '?')} evaluation + "
        f"{cfg.get('n_calibration', '?')} calibration images, fingerprint {cfg.get('data_fingerprint', '?')}); "
        f"seed {cfg.get('seed')}.",
        (2, "Findings"), findings(v),
        (2, "Clean accuracy and calibration"), _clean_table(v),
        (2, "Corruption robustness"), _corruption_table(v),
        (2, "Speed and size"), _speed_table(v),
        (2, "Figures"), *figs,
    ]
    if len(all_cfgs) > 1:
        blocks += [(2, "Other studies in this store"),
                   "Reported above: the study run last (or the one given with --config-hash). Others: "
                   + "; ".join(f"{c['config_hash']} ({c['n_units']} units, {c['config'].get('model')})"
                               for c in all_cfgs if c["config_hash"] != v.config_hash) + "."]
    blocks += [(2, "Configuration"),
               "Resolved configuration: " + ", ".join(f"{k}={cfg[k]}" for k in sorted(cfg)) + "."]
    md = _render_md(title, blocks, out)
    _write(out / "report.md", md)
    _write(out / "report.html", _render_html(title, blocks))
    csv_path = write_csv(all_units, out / "results.csv")  # every study; config_hash column
    return {"md": out / "report.md", "html": out / "report.html", "csv": csv_path,
            "figures": [f.path for f in figs]}


__all__ = ["build_report", "StudyView", "load_view"]
