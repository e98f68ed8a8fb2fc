"""Figures of docs/study.md from a study's store (csr backend rows, one fine-tuning recipe):

- ``clean_vs_sparsity.png``: clean accuracy and ECE (before / after temperature scaling) against
  sparsity, one panel column per method, one-shot solid and fine-tuned dashed, mean ± sd over seeds;
- ``severity.png``: corruption accuracy and ECE per severity (mean over the corruptions of each
  seed, then mean ± sd over seeds) for every network with all conditions evaluated.

    python scripts/study_figures.py runs/study-r20 --recipe ft-... --to docs/study
"""
from __future__ import annotations

import argparse
import statistics as stats
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from prunecal.eval.store import Store  # noqa: E402

METHODS = ("global_magnitude", "l1_filter", "bn_channel", "random")


def _msd(xs: list[float]) -> tuple[float, float]:
    return stats.mean(xs), (stats.stdev(xs) if len(xs) > 1 else 0.0)


def load(out: str, recipe: str | None) -> list[dict]:
    with Store(f"{out}/results.sqlite") as st:
        units = [u for u in st.units(st.latest_config_hash()) if u["backend"] == "csr"]
    return [u for u in units if recipe is None or u["finetune_recipe"] in ("none", recipe)]


def clean_figure(units: list[dict], path: Path) -> None:
    clean = [u for u in units if u["corruption"] == "clean"]
    base = [u for u in clean if u["method"] == "none"]
    methods = [m for m in METHODS if any(u["method"] == m for u in clean)]
    fig, axes = plt.subplots(2, len(methods), figsize=(3.6 * len(methods), 6.4), sharey="row",
                             squeeze=False)
    for j, m in enumerate(methods):
        for ft, style in sorted({(u["finetune_epochs"], "-" if u["finetune_epochs"] == 0 else "--")
                                 for u in clean if u["method"] == m}):
            rows = [u for u in clean if u["method"] == m and u["finetune_epochs"] == ft] + base
            label = "one-shot" if ft == 0 else f"fine-tuned {ft} ep"
            color = "C0" if ft == 0 else f"C{1 + ft % 8}"
            for i, (key, name) in enumerate((("accuracy", "clean accuracy %"), ("ece", "ECE %"))):
                by_s: dict[float, list[float]] = defaultdict(list)
                for u in rows:
                    by_s[u["sparsity"]].append(100 * u[key])
                xs = sorted(by_s)
                ms = [_msd(by_s[x]) for x in xs]
                axes[i][j].errorbar(xs, [a for a, _ in ms], yerr=[s for _, s in ms], ls=style,
                                    marker="o", ms=3, capsize=2, label=label, color=color)
                if key == "ece":
                    ts: dict[float, list[float]] = defaultdict(list)
                    for u in rows:
                        ts[u["sparsity"]].append(100 * u["ece_ts"])
                    axes[i][j].plot(xs, [stats.mean(ts[x]) for x in xs], ls=style, marker="x",
                                    ms=3, alpha=0.45, color=color, label=f"{label}, after TS")
                axes[i][0].set_ylabel(name)
        axes[0][j].set_title(m)
        axes[1][j].set_xlabel("sparsity")
        for i in range(2):
            axes[i][j].grid(alpha=0.3)
    axes[1][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def severity_figure(units: list[dict], path: Path, n_conditions: int = 75) -> None:
    corr = [u for u in units if u["corruption"] != "clean"]
    per: dict[tuple, dict[int, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for u in corr:
        per[(u["method"], u["sparsity"], u["finetune_epochs"])][u["seed"]].append(u)
    nets = sorted((n for n, seeds in per.items()
                   if any(len(v) == n_conditions for v in seeds.values())),
                  key=lambda n: (n[0] != "none", n[0], n[1], n[2]))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for net in nets:
        seeds = {s: v for s, v in per[net].items() if len(v) == n_conditions}
        label = "unpruned" if net[0] == "none" else (
            f"{net[0]} {net[1]:g} " + ("one-shot" if net[2] == 0 else f"{net[2]} ep"))
        style = dict(ls="-" if net[2] == 0 else "--", marker="o", ms=3, capsize=2)
        if net[0] == "none":
            style.update(color="black", lw=2)
        for ax, key in zip(axes, ("accuracy", "ece")):
            ys = []
            for sev in range(1, 6):
                vals = [stats.mean(100 * u[key] for u in v if u["severity"] == sev)
                        for v in seeds.values()]
                ys.append(_msd(vals))
            ax.errorbar(range(1, 6), [a for a, _ in ys], yerr=[s for _, s in ys], label=label,
                        **style)
    axes[0].set_ylabel("corruption accuracy % (mean of 15)")
    axes[1].set_ylabel("corruption ECE % (mean of 15)")
    for ax in axes:
        ax.set_xlabel("severity")
        ax.set_xticks(range(1, 6))
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--recipe", help="only this fine-tuning recipe (besides one-shot)")
    ap.add_argument("--to", default="docs/study", help="folder for the PNG files")
    a = ap.parse_args()
    units = load(a.out, a.recipe)
    to = Path(a.to)
    to.mkdir(parents=True, exist_ok=True)
    clean_figure(units, to / "clean_vs_sparsity.png")
    severity_figure(units, to / "severity.png")
    print(f"wrote {to / 'clean_vs_sparsity.png'} and {to / 'severity.png'}")


if __name__ == "__main__":
    main()
