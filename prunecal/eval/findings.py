"""The generated findings: a short list, one line per method (plus one for the unpruned
reference and one for speed), every number formatted from the store. Per method and
fine-tuning regime: the most-pruned network that is 'safe' (no accuracy / calibration cell worse
than the unpruned network, :func:`prunecal.eval.verdict.overall`) and the most-pruned network
measured. No interpretation beyond the measured change and the verdict rule is generated.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .tables import assess
from .view import BASE_NET, fmt_stat, regime_label

if TYPE_CHECKING:
    from .view import Net, StudyView


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def _bound_note(t: float) -> str:
    try:
        from prunecal.calibrate import T_BOUNDS
    except ImportError:  # pragma: no cover
        return ""
    return " (T at the fit's upper bound)" if t >= 0.999 * T_BOUNDS[1] else ""


def _net_numbers(v: "StudyView", n: "Net", a: dict) -> str:
    acc, ece, ts = (v.clean_stat(n, k) for k in ("accuracy", "ece", "ece_ts"))
    t = v.clean_stat(n, "temperature")
    parts = [f"acc {fmt_stat(acc)} %"]
    if a["accuracy"][0] is not None:
        parts[-1] += f" ({100 * a['accuracy'][0]:+.1f} pp)"
    parts.append(f"ECE {fmt_stat(ece)} % (TS {fmt_stat(ts)} %{_bound_note(t.mean) if t else ''})")
    if a["mce"][0] is not None:
        parts.append(f"mCE {_pct(a['mce'][0])}")
    if a["cece"][0] is not None:
        parts.append(f"cECE {100 * a['cece'][0]:+.1f} pp")
    if a["speedup"][0] is not None:
        parts.append(f"{a['speedup'][0]:.2f}x on {a['speed_backend']}")
    return ", ".join(parts)


def method_line(v: "StudyView", method: str) -> str | None:
    """``method: <regime>: safe up to s (numbers); at s_max: numbers; <regime>: ...``."""
    segs = []
    for r in v.regimes:
        nets = v.pruned_nets(method, r)
        if not nets:
            continue
        ass = {n: assess(v, n) for n in nets}
        safe = [n for n in nets if ass[n]["verdict"] in ("safe & faster", "safe, not faster")]
        seg = f"{regime_label(r)}: "
        top = nets[-1]
        judged = v.has_base and ass[top]["verdict"] != "no clean interval"
        if judged and safe and safe[-1] != top:
            s = safe[-1]
            seg += f"{ass[s]['verdict']} up to {s.sparsity:g} ({_net_numbers(v, s, ass[s])}); "
        elif judged and not safe:
            seg += "no sparsity safe; "
        seg += f"at {top.sparsity:g}: {_net_numbers(v, top, ass[top])}"
        seg += f" [{ass[top]['verdict']}]" if judged else ""
        segs.append(seg)
    return f"{method} — " + "; ".join(segs) if segs else None


def findings_list(v: "StudyView") -> list[str]:
    """The findings as lines (empty-store safe)."""
    if not v.units:
        return ["No unit has been stored yet."]
    lines: list[str] = []
    if v.has_base:
        acc, ece, ts = (v.clean_stat(BASE_NET, k) for k in ("accuracy", "ece", "ece_ts"))
        ref = v.reference_speed()
        lines.append(f"unpruned (reference) — acc {fmt_stat(acc)} %, ECE {fmt_stat(ece)} % "
                     f"(TS {fmt_stat(ts)} %)" + (f", {ref[1]:,.0f} images/s on {ref[0]}" if ref else ""))
    for m in v.methods:
        line = method_line(v, m)
        if line:
            lines.append(line)
    ref = v.reference_speed()
    if ref is not None:
        best = None
        for n in v.pruned_nets():
            f = v.fastest(n)
            if f and (best is None or f[1].mean > best[2].mean):
                best = (n, f[0], f[1])
        if best is not None:
            n, b, st = best
            acc = v.clean_stat(n, "accuracy")
            lines.append(f"fastest — {n.method} at {n.sparsity:g} ({n.regime_label()}) on {b}: "
                         f"{st.mean:,.0f} images/s, {st.mean / ref[1]:.2f}x the unpruned network on "
                         f"{ref[0]} ({ref[1]:,.0f} images/s), at {fmt_stat(acc)} % clean accuracy")
    others = [u for u in v.units if "ref_max_abs_diff" in (u.get("metrics_json") or {})]
    if others:
        worst = max(u["metrics_json"]["ref_max_abs_diff"] for u in others)
        agree = min(u["metrics_json"]["ref_argmax_agree"] for u in others)
        names = sorted({u["backend"] for u in others})
        lines.append(f"backends — {', '.join(names)} {'agrees' if len(names) == 1 else 'agree'} with "
                     f"{v.primary} on {_pct(agree)} of the predicted classes of every network "
                     f"(largest absolute logit difference {worst:.2g})")
    return lines if len(lines) > 1 or not v.has_base else lines + ["Too few units stored to compare yet."]


def findings(v: "StudyView") -> str:
    """The findings as one text (lines joined), for callers that want a string."""
    return "\n".join(findings_list(v))


__all__ = ["findings", "findings_list", "method_line"]
