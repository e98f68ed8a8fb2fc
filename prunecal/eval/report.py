"""``report.md`` + self-contained ``report.html`` (figures embedded as base64 PNG), the PNGs in
``out/figures/`` and ``out/results.csv``, all rebuilt from the store alone.

Layout: the one-shot note (when no network was fine-tuned), the verdict table (one row per pruned
network: better / within interval / worse than the unpruned network), the findings (one line
per method), then the detailed tables (clean, one-shot vs fine-tuned, fine-tuning recipes,
corruption, speed and size) and the figures. Networks are grouped by (method, sparsity,
fine-tuning epochs, recipe) with mean ± sd over seeds: :mod:`.view`; the verdict rule:
:mod:`.verdict`; tables: :mod:`.tables`; rendering and escaping: :mod:`.render`.
Every file is written with :func:`prunecal._atomic.atomic_write` (unique temporary names).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from prunecal._atomic import atomic_write

from . import figures as F
from . import tables as T
from .export import write_csv
from .render import Bullets, Figure, Note, render_html, render_md
from .store import Store
from .view import BASELINE, StudyView, load_view

FINETUNE_HINT = ("One-shot study (no fine-tuning): every pruned network was evaluated right after "
                 "pruning. Add fine-tuned networks beside them with `--finetune-epochs 0,5 "
                 "--finetune-data PATH` (PATH: a CIFAR-10 training set).")


def _write(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


_FIGURES = (
    (F.tradeoff_scatter, "tradeoff.png",
     "Accuracy–speed and ECE–speed trade-off: each pruned network on its fastest backend (label: "
     "sparsity; filled: one-shot, open: fine-tuned); black star and grey band: the unpruned network "
     "and its 95 % interval."),
    (F.accuracy_ece_vs_sparsity, "accuracy_ece_vs_sparsity.png",
     "Accuracy and ECE (before / after temperature scaling) vs sparsity, one line per method and "
     "fine-tuning regime: clean with 95 % bootstrap band (top) and mean over corruptions (bottom); "
     "error bars: sd over seeds."),
    (F.severity_curves, "severity.png",
     "Accuracy and ECE by corruption severity (0 = clean) for every network, one panel per method: "
     "colour = sparsity, line style = fine-tuning regime, black = the unpruned network."),
    (F.reliability_diagrams, "reliability.png",
     "Reliability diagrams on clean data, unpruned vs the most-pruned network of each method and "
     "fine-tuning regime (first seed)."),
    (lambda vv, p: F.corruption_heatmap(vv, p, "error"), "heatmap_error.png",
     "Change in top-1 error per corruption vs the unpruned network (mean over severities and seeds)."),
    (lambda vv, p: F.corruption_heatmap(vv, p, "ece"), "heatmap_ece.png",
     "Change in ECE per corruption vs the unpruned network (mean over severities and seeds)."),
    (F.speedup_vs_sparsity, "speedup.png",
     "Throughput speed-up vs sparsity for each backend in the store."),
)


def _summary(v: StudyView) -> str:
    cfg = v.config
    regimes = ", ".join(T.regime_label(r) for r in v.regimes) or "–"
    return (f"{len(v.units)} units stored; methods {', '.join(v.methods) or '–'}; fine-tuning "
            f"{regimes}; seeds {', '.join(map(str, v.seeds)) or '–'}; backends "
            f"{', '.join(v.backends) or '–'}; weights sha256 {str(cfg.get('weights_sha256', '?'))[:16]}; "
            f"data {cfg.get('data')} ({cfg.get('n_evaluation', '?')} evaluation + "
            f"{cfg.get('n_calibration', '?')} calibration images, fingerprint "
            f"{cfg.get('data_fingerprint', '?')}).")


def build_report(out: str | Path, *, config_hash: str | None = None) -> dict[str, Path]:
    """Rebuild ``report.md``, ``report.html``, ``figures/*.png`` and ``results.csv`` in ``out``
    from ``out/results.sqlite``. Returns ``{"md", "html", "csv", "figures": [...]}``."""
    from .findings import findings_list

    out = Path(out)
    db = out / "results.sqlite"
    if not db.is_file():
        raise ValueError(f"no result store at {db}")
    with Store(db) as st:
        v = load_view(st, config_hash)
        all_cfgs = st.configs()
        all_units = st.units()
        failed = st.failures(v.config_hash) if v.config_hash else []
    figdir = out / "figures"
    figs: list[Figure] = []
    for fn, name, cap in _FIGURES:
        p = fn(v, figdir / name)
        if p is not None:
            figs.append(Figure(p, cap))

    cfg = v.config
    title = f"prunecal study: {v.model} ({v.config_hash})"
    blocks: list[Any] = []
    if v.units and not v.finetuned:
        blocks.append(Note(FINETUNE_HINT))
    blocks += [_summary(v),
               (2, "Verdict: safe and fast?"), T.verdict_table(v),
               (2, "Findings"), Bullets(findings_list(v))]
    top = [f for f in figs if f.path.name == "tradeoff.png"]
    blocks += top
    if failed:
        blocks += [(2, "Failed units"),
                   Note(f"{len(failed)} unit(s) failed after the executor's retries and are not in "
                        "the tables; re-run the same command to retry them (the store's failures table)."),
                   Bullets([f"{f.get('method')}@{f.get('sparsity')} seed {f.get('seed')} fine-tune "
                            f"{f.get('finetune_epochs')} ep, {f.get('corruption')}/{f.get('severity')} "
                            f"[{f.get('backend')}]: {f.get('error')}" for f in failed])]
    blocks += [(2, "Clean accuracy and calibration"), T.clean_table(v)]
    for heading, tab in (("One-shot vs fine-tuned", T.finetune_table(v)),
                         ("Fine-tuning recipes", T.recipe_table(v))):
        if tab is not None:
            blocks += [(2, heading), tab]
    blocks += [(2, "Corruption robustness"), T.corruption_table(v),
               (2, "Speed and size"), T.speed_table(v),
               (2, "Figures"), *[f for f in figs if f not in top]]
    if len(all_cfgs) > 1:
        blocks += [(2, "Other studies in this store"),
                   "Reported above: the study run last (or the one given with --config-hash). Others: "
                   + "; ".join(f"{c['config_hash']} ({c['n_units']} units, {c['config'].get('model')})"
                               for c in all_cfgs if c["config_hash"] != v.config_hash) + "."]
    blocks += [(2, "Configuration"),
               "Resolved configuration: " + ", ".join(f"{k}={cfg[k]}" for k in sorted(cfg)) + "."]
    md = render_md(title, blocks, out)
    _write(out / "report.md", md)
    _write(out / "report.html", render_html(title, blocks))
    csv_path = write_csv(all_units, out / "results.csv")  # every study; config_hash column
    return {"md": out / "report.md", "html": out / "report.html", "csv": csv_path,
            "figures": [f.path for f in figs]}


__all__ = ["build_report", "StudyView", "load_view", "BASELINE", "FINETUNE_HINT"]
