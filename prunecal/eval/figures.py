"""Report figures (matplotlib, Agg backend). Each function takes the aggregated
:class:`prunecal.eval.report.StudyView`, writes one PNG and returns its path (``None`` when the
store lacks the data the figure needs)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

if TYPE_CHECKING:
    from .report import StudyView

DPI = 100


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp_{path.name}")
    fig.savefig(tmp, dpi=DPI, format="png")  # layout is set per figure (constrained layout)
    plt.close(fig)
    tmp.replace(path)
    return path


def _colors(methods: list[str]) -> dict[str, Any]:
    cmap = plt.get_cmap("tab10")
    return {m: cmap(i % 10) for i, m in enumerate(methods)}


def accuracy_ece_vs_sparsity(v: "StudyView", path: Path) -> Path | None:
    """Two panels (accuracy, ECE) vs sparsity; per method: clean (solid, bootstrap 95 % band)
    and mean over corruptions (dashed)."""
    if not v.methods:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4), layout="constrained")
    col = _colors(v.methods)
    for m in v.methods:
        pts = v.clean_series(m)
        if not pts:
            continue
        xs = [s for s, _ in pts]
        for ax, key, ci_key in ((axes[0], "accuracy", "accuracy"), (axes[1], "ece", "ece"),
                                (axes[2], "ece_ts", "ece_ts")):
            ys = [u[key] for _, u in pts]
            ax.plot(xs, ys, "-o", color=col[m], label=f"{m} clean", ms=4)
            lo = [(u.get("ci_json") or {}).get(ci_key, [math.nan, math.nan])[0] for _, u in pts]
            hi = [(u.get("ci_json") or {}).get(ci_key, [math.nan, math.nan])[1] for _, u in pts]
            if not all(math.isnan(x) for x in lo):
                ax.fill_between(xs, lo, hi, color=col[m], alpha=0.15, lw=0)
        cs = [(s, v.corruption_summary(m, s)) for s, _ in pts]
        cs = [(s, c) for s, c in cs if c is not None]
        if cs:
            axes[0].plot([s for s, _ in cs], [c["accuracy"] for _, c in cs], "--s", color=col[m],
                         label=f"{m} corrupted (mean)", ms=3)
            axes[1].plot([s for s, _ in cs], [c["ece"] for _, c in cs], "--s", color=col[m], ms=3)
            axes[2].plot([s for s, _ in cs], [c["ece_ts"] for _, c in cs], "--s", color=col[m], ms=3)
    axes[0].set_ylabel("accuracy")
    axes[1].set_ylabel(f"ECE ({v.n_bins} bins)")
    axes[2].set_ylabel("ECE after temperature scaling")
    for ax in axes:
        ax.set_xlabel("target sparsity")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower left")
    fig.suptitle(f"{v.model}: clean (solid, 95 % bootstrap band) and mean over corruptions (dashed)")
    return _save(fig, path)


def _reliability(ax, bins: dict, title: str) -> None:
    lo = np.asarray(bins["lower"], float)
    hi = np.asarray(bins["upper"], float)
    acc = np.asarray(bins["accuracy"], float)
    conf = np.asarray(bins["confidence"], float)
    ok = np.isfinite(acc)
    width = hi - lo
    ax.bar(lo[ok], acc[ok], width=width[ok], align="edge", color="tab:blue", edgecolor="k", lw=0.4,
           label="accuracy")
    ax.hlines(conf[ok], lo[ok], hi[ok], colors="tab:red", lw=1.6, zorder=3, label="mean confidence")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=8)
    ax.set_xlabel("confidence", fontsize=8)


def reliability_diagrams(v: "StudyView", path: Path) -> Path | None:
    """Reliability diagrams of the unpruned network and of each method's most-pruned network,
    clean data, before (top row) and after (bottom row) temperature scaling."""
    cols = []
    base = v.clean_unit("none", 0.0)
    if base is not None:
        cols.append(("unpruned", base))
    for m in v.methods:
        pts = [(s, u) for s, u in v.clean_series(m) if s > 0]
        if pts:
            s, u = pts[-1]
            cols.append((f"{m} @ {s:g}", u))
    if not cols:
        return None
    fig, axes = plt.subplots(2, len(cols), figsize=(3.1 * len(cols), 6.4), squeeze=False,
                             layout="constrained")
    for j, (name, u) in enumerate(cols):
        rel = u["reliability_json"]
        _reliability(axes[0, j], rel["raw"], f"{name}\nECE {u['ece']:.3f}, acc {u['accuracy']:.3f}")
        _reliability(axes[1, j], rel["ts"], f"{name}, T={u['temperature']:.2f}\nECE {u['ece_ts']:.3f}")
    axes[0, 0].set_ylabel("accuracy (before TS)")
    axes[1, 0].set_ylabel("accuracy (after TS)")
    axes[0, 0].legend(fontsize=6, loc="upper left")
    fig.suptitle("Reliability diagrams, clean data (dashed: perfect calibration)")
    return _save(fig, path)


def corruption_heatmap(v: "StudyView", path: Path, metric: str) -> Path | None:
    """Heatmap (corruption x pruned network) of the change of ``metric`` (``"error"`` or
    ``"ece"``) vs the unpruned network, averaged over severities."""
    cols = [(m, s) for m in v.methods for s, _ in v.clean_series(m) if s > 0]
    corrs = v.corruptions
    if not cols or not corrs:
        return None
    data = np.full((len(corrs), len(cols)), np.nan)
    for j, (m, s) in enumerate(cols):
        for i, c in enumerate(corrs):
            d = v.delta_vs_base(m, s, c, metric)
            if d is not None:
                data[i, j] = 100.0 * d  # percentage points
    if np.isnan(data).all():
        return None
    lim = float(np.nanmax(np.abs(data))) or 1.0
    fig, ax = plt.subplots(figsize=(3.0 + 0.75 * len(cols), 1.6 + 0.3 * len(corrs)), layout="constrained")
    im = ax.imshow(data, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
    ax.set_xticks(range(len(cols)), [f"{m}\n@{s:g}" for m, s in cols], fontsize=7, rotation=45,
                  ha="right")
    ax.set_yticks(range(len(corrs)), corrs, fontsize=7)
    if data.size <= 400:
        for i in range(data.shape[0]):
            for j in range(data.shape[1]):
                if np.isfinite(data[i, j]):
                    ax.text(j, i, f"{data[i, j]:+.1f}", ha="center", va="center", fontsize=6,
                            color="white" if abs(data[i, j]) > 0.6 * lim else "black")
    label = "error" if metric == "error" else "ECE"
    fig.colorbar(im, ax=ax, label=f"change in {label} vs unpruned, percentage points\n(mean over severities)")
    ax.set_title(f"Change in {label} under each corruption vs the unpruned {v.model}", fontsize=9)
    return _save(fig, path)


def speedup_vs_sparsity(v: "StudyView", path: Path) -> Path | None:
    """Speed-up (images/s over the unpruned network on the reference backend) vs sparsity, one
    line per method and backend present in the store."""
    ref = v.reference_speed()
    if ref is None:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4.2), layout="constrained")
    col = _colors(v.methods)
    styles = ["-o", "--s", ":^", "-.v"]
    drew = False
    for bi, b in enumerate(v.backends):
        for m in v.methods:
            pts = [(s, u) for s, u in v.clean_series(m, backend=b)]
            if not pts:
                continue
            ax.plot([s for s, _ in pts], [u["images_per_s"] / ref[1] for _, u in pts],
                    styles[bi % 4], color=col[m], label=f"{m} [{b}]", ms=4)
            drew = True
    if not drew:
        plt.close(fig)
        return None
    ax.axhline(1.0, color="k", lw=0.6)
    ax.set_xlabel("target sparsity")
    ax.set_ylabel(f"speed-up vs unpruned on '{ref[0]}'")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(f"{v.model}: throughput, batch {v.config.get('batch_size')}, "
                 f"{v.config.get('threads')} threads", fontsize=9)
    return _save(fig, path)


__all__ = ["accuracy_ece_vs_sparsity", "reliability_diagrams", "corruption_heatmap",
           "speedup_vs_sparsity"]
