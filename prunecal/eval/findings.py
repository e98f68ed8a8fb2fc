"""The generated "findings" paragraph: measured facts only, every number formatted from the store.

For each method: clean accuracy and ECE (before / after temperature scaling) from the unpruned
network to the most-pruned one; the mean accuracy and ECE under corruption at both ends; the
mCE of the most-pruned network where computable; then the fastest network per backend. No
interpretation beyond the sign of a change ("rises", "falls") is generated.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .report import StudyView


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def _move(a: float, b: float, what: str, fmt=_pct) -> str:
    if abs(a - b) < 1e-12:
        return f"{what} stays at {fmt(a)}"
    return f"{what} {'rises' if b > a else 'falls'} from {fmt(a)} to {fmt(b)}"


def _bound_note(t: float) -> str:
    try:
        from prunecal.calibrate import T_BOUNDS
    except ImportError:  # pragma: no cover
        return ""
    return ", the fit's upper bound" if t >= 0.999 * T_BOUNDS[1] else ""


def findings(v: "StudyView") -> str:
    """One paragraph of measured facts about the study ``v`` (empty-store safe)."""
    if not v.units:
        return "No unit has been stored yet."
    parts: list[str] = []
    for m in v.methods:
        pts = v.clean_series(m)
        if len(pts) < 2:
            continue
        (s0, u0), (s1, u1) = pts[0], pts[-1]
        rng = f"as {m} sparsity rises from {s0:g} to {s1:g}"
        sent = (f"{_move(u0['accuracy'], u1['accuracy'], 'Clean accuracy')} and "
                f"{_move(u0['ece'], u1['ece'], 'ECE')} {rng}"
                f" (after temperature scaling: ECE {_pct(u0['ece_ts'])} -> {_pct(u1['ece_ts'])}, "
                f"T {u0['temperature']:.2f} -> {u1['temperature']:.2f}{_bound_note(u1['temperature'])}).")
        within = [s for s, u in pts if s > 0 and u0["accuracy"] - u["accuracy"] <= 0.01]
        if within:
            u = dict(pts)[max(within)]
            sent += (f" Up to sparsity {max(within):g} its clean accuracy stays within 1 point of the "
                     f"unpruned network ({_pct(u['accuracy'])}, ECE {_pct(u['ece'])}).")
        else:
            sent += f" Already at sparsity {pts[1][0]:g} clean accuracy is {_pct(pts[1][1]['accuracy'])}."
        c0, c1 = v.corruption_summary(m, s0), v.corruption_summary(m, s1)
        if c0 and c1:
            sent += (f" Under corruption ({c1['n_units']} units) the mean accuracy goes from "
                     f"{_pct(c0['accuracy'])} to {_pct(c1['accuracy'])} and the mean ECE from "
                     f"{_pct(c0['ece'])} to {_pct(c1['ece'])}.")
            rb = v.robustness(m, s1)
            if "mce" in rb:
                sent += f" mCE at {s1:g} is {_pct(rb['mce'])} of the unpruned network's"
                sent += (f" (relative mCE {_pct(rb['rel_mce'])})." if "rel_mce" in rb else ".")
        parts.append(sent)
    ref = v.reference_speed()
    if ref is not None:
        best = None
        for b in v.backends:
            for m in v.methods:
                for s, u in v.clean_series(m, backend=b):
                    if s > 0 and (best is None or u["images_per_s"] > best[3]["images_per_s"]):
                        best = (b, m, s, u)
        if best is not None:
            b, m, s, u = best
            parts.append(f"The fastest pruned network is {m} at {s:g} on the {b} backend: "
                         f"{u['images_per_s']:,.0f} images/s, {u['images_per_s'] / ref[1]:.2f}x the "
                         f"unpruned network on {ref[0]} ({ref[1]:,.0f} images/s), at "
                         f"{_pct(u['accuracy'])} clean accuracy.")
    others = [u for u in v.units if "ref_max_abs_diff" in (u.get("metrics_json") or {})]
    if others:
        worst = max(u["metrics_json"]["ref_max_abs_diff"] for u in others)
        agree = min(u["metrics_json"]["ref_argmax_agree"] for u in others)
        names = sorted({u["backend"] for u in others})
        parts.append(f"On the clean images, {', '.join(names)} {'agrees' if len(names) == 1 else 'agree'} "
                     f"with {v.primary} on {_pct(agree)} of the predicted classes of every network "
                     f"(largest absolute logit difference {worst:.2g}).")
    return " ".join(parts) if parts else "Too few units stored to compare sparsities yet."


__all__ = ["findings"]
