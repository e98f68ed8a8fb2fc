"""Report figures (matplotlib, Agg backend). Each function takes the aggregated
:class:`prunecal.eval.view.StudyView`, writes one PNG (through :func:`prunecal._atomic.atomic_write`,
so concurrent writers never share a temporary name) and returns its path (``None`` when the
store lacks the data the figure needs). Colour = method, line style / marker = fine-tuning
regime, error bars = sd over seeds, the unpruned network = a black star."""
from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from prunecal._atomic import atomic_write  # noqa: E402

from .view import BASE_NET, regime_label  # noqa: E402

if TYPE_CHECKING:
    from .view import Net, StudyView

DPI = 100
_STYLES = [("-", "o"), ("--", "s"), (":", "^"), ("-.", "v"), ((0, (5, 1)), "D")]


def _save(fig, path: Path) -> Path:
    try:
        atomic_write(path, lambda f: fig.savefig(f, dpi=DPI, format="png"))
    finally:
        plt.close(fig)
    return Path(path)


def _colors(methods: list[str]) -> dict[str, Any]:
    cmap = plt.get_cmap("tab10")
    return {m: cmap(i % 10) for i, m in enumerate(methods)}


def _style(v: "StudyView", regime) -> tuple[Any, str]:
    return _STYLES[v.regimes.index(regime) % len(_STYLES)]


def _series(v: "StudyView", nets: list["Net"], get) -> tuple[list, list, list]:
    xs, ys, sd = [], [], []
    for n in nets:
        st = get(n)
        if st is not None:
            xs.append(n.sparsity)
            ys.append(st.mean)
            sd.append(st.sd if st.n >= 2 else 0.0)
    return xs, ys, sd


def accuracy_ece_vs_sparsity(v: "StudyView", path: Path) -> Path | None:
    """Accuracy, ECE and ECE after temperature scaling vs sparsity: clean (top row, bootstrap 95 %
    band) and mean over corruptions (bottom row); one line per method and fine-tuning regime,
    each starting at the unpruned network."""
    if not v.pruned_nets():
        return None
    has_c = any(v.corruption_stat(n, "accuracy") is not None for n in v.nets)
    nrow = 2 if has_c else 1
    fig, axes = plt.subplots(nrow, 3, figsize=(15, 4.2 * nrow), layout="constrained", squeeze=False)
    col = _colors(v.methods)
    keys = (("accuracy", "accuracy"), ("ece", f"ECE ({v.n_bins} bins)"), ("ece_ts", "ECE after temperature scaling"))
    base = [BASE_NET] if v.has_base else []
    for row, kind in enumerate(["clean", "corrupted"][:nrow]):
        for j, (key, ylab) in enumerate(keys):
            ax = axes[row, j]
            get = ((lambda n, k=key: v.clean_stat(n, k)) if kind == "clean"
                   else (lambda n, k=key: v.corruption_stat(n, k)))
            for m in v.methods:
                for r in v.regimes:
                    nets = base + v.pruned_nets(m, r)
                    if len(nets) == len(base):
                        continue
                    xs, ys, sd = _series(v, nets, get)
                    ls, mk = _style(v, r)
                    ax.errorbar(xs, ys, yerr=sd if any(sd) else None, ls=ls, marker=mk, color=col[m],
                                ms=4, capsize=2, label=f"{m}, {regime_label(r)}")
                    if kind == "clean":
                        sts = [get(n) for n in nets]
                        lo = [s.ci[0] if s and s.ci else math.nan for s in sts]
                        hi = [s.ci[1] if s and s.ci else math.nan for s in sts]
                        if not all(math.isnan(x) for x in lo):
                            ax.fill_between([n.sparsity for n in nets], lo, hi, color=col[m], alpha=0.1, lw=0)
            b = get(BASE_NET) if v.has_base else None
            if b is not None:
                ax.plot([0], [b.mean], "k*", ms=12, zorder=5, label="unpruned")
            ax.set_ylabel(f"{ylab} ({kind})")
            ax.set_xlabel("target sparsity")
            ax.grid(alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(4, len(labels)), fontsize=8)
    fig.suptitle(f"{v.model}: clean (top, 95 % bootstrap band){' and mean over corruptions (bottom)' if has_c else ''}"
                 "; error bars: sd over seeds")
    return _save(fig, path)


def tradeoff_scatter(v: "StudyView", path: Path) -> Path | None:
    """Clean accuracy vs speed-up and clean ECE vs speed-up: every pruned network a point (its
    fastest backend), labelled with its sparsity; the unpruned network a black star at 1x with
    its 95 % interval as a grey band."""
    ref = v.reference_speed()
    if ref is None or not v.pruned_nets():
        return None
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.4), layout="constrained")
    col = _colors(v.methods)
    xs_all = [1.0]
    for ax, key, ylab in ((axes[0], "accuracy", "clean accuracy"), (axes[1], "ece", f"clean ECE ({v.n_bins} bins)")):
        b = v.clean_stat(BASE_NET, key)
        if b is not None:
            iv = b.interval()
            if iv:
                ax.axhspan(iv[0], iv[1], color="0.85", zorder=0, label="unpruned 95 % interval")
            ax.plot([1.0], [b.mean], "k*", ms=14, zorder=5, label=f"unpruned ({ref[0]}, 1.00x)")
        ax.axvline(1.0, color="k", lw=0.6)
        seen = set()
        for n in v.pruned_nets():
            f, st = v.fastest(n), v.clean_stat(n, key)
            if f is None or st is None:
                continue
            x = f[1].mean / ref[1]
            xs_all.append(x)
            ls, mk = _style(v, n.regime)
            lab = f"{n.method}, {regime_label(n.regime)}"
            ax.errorbar([x], [st.mean], yerr=[st.sd] if st.n >= 2 else None, marker=mk, color=col[n.method],
                        ms=7, ls="none", capsize=2, label=None if lab in seen else lab,
                        mfc=col[n.method] if n.regime == (0, "none") else "white")
            seen.add(lab)
            ax.annotate(f"{n.sparsity:g}", (x, st.mean), textcoords="offset points", xytext=(5, 3), fontsize=7)
        ax.set_xlabel(f"speed-up vs unpruned on '{ref[0]}' (fastest backend of each network)")
        ax.set_ylabel(ylab)
        ax.grid(alpha=0.3)
    if max(xs_all) / max(min(xs_all), 1e-9) > 8:
        for ax in axes:
            ax.set_xscale("log")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(4, len(labels)), fontsize=8)
    fig.suptitle(f"{v.model}: what each pruned network trades (labels: sparsity; better = up-right "
                 "for accuracy, down-right for ECE)")
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
    """Reliability diagrams (first seed) of the unpruned network and of each method's most-pruned
    network per fine-tuning regime, clean data, before (top) and after (bottom) temperature scaling."""
    cols = []
    if v.clean_units(BASE_NET):
        cols.append(("unpruned", v.clean_units(BASE_NET)[0]))
    for m in v.methods:
        for r in v.regimes:
            nets = [n for n in v.pruned_nets(m, r) if v.clean_units(n)]
            if nets:
                n = nets[-1]
                cols.append((f"{m} @ {n.sparsity:g}\n{regime_label(r)}", v.clean_units(n)[0]))
    if not cols:
        return None
    cols = cols[:8]
    fig, axes = plt.subplots(2, len(cols), figsize=(3.1 * len(cols), 6.8), squeeze=False,
                             layout="constrained")
    for j, (name, u) in enumerate(cols):
        rel = u["reliability_json"]
        _reliability(axes[0, j], rel["raw"], f"{name}\nECE {u['ece']:.3f}, acc {u['accuracy']:.3f}")
        _reliability(axes[1, j], rel["ts"], f"{name}, T={u['temperature']:.2f}\nECE {u['ece_ts']:.3f}")
    axes[0, 0].set_ylabel("accuracy (before TS)")
    axes[1, 0].set_ylabel("accuracy (after TS)")
    axes[0, 0].legend(fontsize=6, loc="upper left")
    fig.suptitle("Reliability diagrams, clean data, first seed (dashed: perfect calibration)")
    return _save(fig, path)


def _short(n: "Net") -> str:
    return f"{n.method}\n@{n.sparsity:g}" + ("" if n.epochs == 0 else f" ft{n.epochs}")


def corruption_heatmap(v: "StudyView", path: Path, metric: str) -> Path | None:
    """Heatmap (corruption x pruned network) of the change of ``metric`` (``"error"`` or
    ``"ece"``) vs the unpruned network, averaged over severities and seeds."""
    cols = v.pruned_nets()
    corrs = v.corruptions
    if not cols or not corrs:
        return None
    data = np.full((len(corrs), len(cols)), np.nan)
    for j, n in enumerate(cols):
        for i, c in enumerate(corrs):
            d = v.delta_by_corruption(n, c, metric)
            if d is not None:
                data[i, j] = 100.0 * d  # percentage points
    if np.isnan(data).all():
        return None
    lim = float(np.nanmax(np.abs(data))) or 1.0
    fig, ax = plt.subplots(figsize=(3.0 + 0.75 * len(cols), 1.6 + 0.3 * len(corrs)), layout="constrained")
    im = ax.imshow(data, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
    ax.set_xticks(range(len(cols)), [_short(n) for n in cols], fontsize=7, rotation=45, ha="right")
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
    line per method and backend (mean over seeds and fine-tuning regimes)."""
    ref = v.reference_speed()
    if ref is None:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4.2), layout="constrained")
    col = _colors(v.methods)
    drew = False
    for bi, b in enumerate(v.backends):
        ls, mk = _STYLES[bi % len(_STYLES)]
        for m in v.methods:
            by_s: dict[float, list[float]] = {}
            for n in ([BASE_NET] if v.has_base else []) + v.pruned_nets(m):
                st = v.clean_stat(n, "images_per_s", b)
                if st is not None:
                    by_s.setdefault(n.sparsity, []).append(st.mean)
            if not by_s:
                continue
            xs = sorted(by_s)
            ax.plot(xs, [np.mean(by_s[s]) / ref[1] for s in xs], ls=ls, marker=mk, color=col[m],
                    label=f"{m} [{b}]", ms=4)
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


def severity_curves(v: "StudyView", path: Path) -> Path | None:
    """Accuracy (top) and ECE (bottom) vs corruption severity (0 = clean), mean over the
    corruptions and seeds; one column per method, one line per pruned network (colour: sparsity,
    line style: fine-tuning regime), the unpruned network in black in every column."""
    if not v.severities or not v.pruned_nets():
        return None
    sev = [0] + list(v.severities)

    def curve(n: "Net", key: str) -> list[float]:
        ys = [v.clean_stat(n, key).mean if v.clean_stat(n, key) else math.nan]
        for k in v.severities:
            vals = [u[key] for sd in v.seeds for (c, kk), u in v.corruption_units_of(n, sd).items() if kk == k]
            ys.append(float(np.mean(vals)) if vals else math.nan)
        return ys

    methods = [m for m in v.methods if v.pruned_nets(m)]
    fig, axes = plt.subplots(2, len(methods), figsize=(4.2 * len(methods) + 1, 7), squeeze=False,
                             layout="constrained")
    spars = sorted({n.sparsity for n in v.pruned_nets()})
    cmap = plt.get_cmap("viridis")
    shade = {s: cmap(0.85 * i / max(1, len(spars) - 1)) for i, s in enumerate(spars)}
    for j, m in enumerate(methods):
        for i, key in enumerate(("accuracy", "ece")):
            ax = axes[i, j]
            if v.has_base:
                ax.plot(sev, curve(BASE_NET, key), "k-*", ms=8, lw=2, label="unpruned")
            for n in v.pruned_nets(m):
                ls, mk = _style(v, n.regime)
                ax.plot(sev, curve(n, key), ls=ls, marker=mk, ms=4, color=shade[n.sparsity],
                        label=f"{n.sparsity:g}, {regime_label(n.regime)}")
            ax.set_xticks(sev, ["clean"] + [str(k) for k in v.severities])
            ax.set_xlabel("corruption severity")
            ax.set_ylabel("accuracy" if key == "accuracy" else f"ECE ({v.n_bins} bins)")
            ax.set_title(m, fontsize=9)
            ax.grid(alpha=0.3)
        axes[0, j].legend(fontsize=6, loc="lower left")
    fig.suptitle(f"{v.model}: accuracy and ECE by corruption severity (mean over corruptions and seeds)")
    return _save(fig, path)


__all__ = ["accuracy_ece_vs_sparsity", "tradeoff_scatter", "severity_curves", "reliability_diagrams",
           "corruption_heatmap", "speedup_vs_sparsity"]
