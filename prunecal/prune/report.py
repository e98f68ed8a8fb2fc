"""Sparsity and FLOPs report of a (pruned) network.

FLOPs are counted as multiply-accumulates (MACs) for one input image: a conv costs
``C_out * H_out * W_out * (C_in / groups) * kh * kw``, a linear ``out * in`` (times
any leading non-batch positions). Output sizes are measured with forward hooks, so
any input size works. Effective MACs = dense MACs x weight density, the work left
for a kernel that skips zero weights.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from .masks import PRUNABLE_TYPES, effective_weight

__all__ = ["LayerStats", "SparsityReport", "sparsity_report", "weight_sparsity"]


@dataclass(frozen=True)
class LayerStats:
    """One ``Conv2d`` / ``Linear`` layer: ``params`` and ``nonzero`` count weights only
    (biases are in the model totals); ``macs`` per image."""

    name: str
    type: str
    shape: tuple[int, ...]
    params: int
    nonzero: int
    macs: int

    @property
    def density(self) -> float:
        """Fraction of nonzero weights."""
        return self.nonzero / self.params if self.params else 1.0

    @property
    def effective_macs(self) -> float:
        """``macs * density``."""
        return self.macs * self.density


@dataclass
class SparsityReport:
    """Per-layer and total statistics; ``str(report)`` is a readable table."""

    layers: list[LayerStats]
    input_size: tuple[int, ...]
    total_params: int
    total_nonzero: int
    extra: dict = field(default_factory=dict)

    @property
    def prunable_params(self) -> int:
        """Weights of all Conv2d / Linear layers."""
        return sum(layer.params for layer in self.layers)

    @property
    def prunable_nonzero(self) -> int:
        return sum(layer.nonzero for layer in self.layers)

    @property
    def sparsity(self) -> float:
        """Fraction of zero weights over the Conv2d / Linear layers."""
        p = self.prunable_params
        return 1.0 - self.prunable_nonzero / p if p else 0.0

    @property
    def dense_macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    @property
    def effective_macs(self) -> float:
        return sum(layer.effective_macs for layer in self.layers)

    def to_dict(self) -> dict:
        """Plain-Python dict (JSON-serialisable)."""
        return {
            "input_size": list(self.input_size),
            "total_params": self.total_params, "total_nonzero": self.total_nonzero,
            "prunable_params": self.prunable_params, "prunable_nonzero": self.prunable_nonzero,
            "sparsity": self.sparsity, "dense_macs": self.dense_macs,
            "effective_macs": self.effective_macs,
            "layers": [{**asdict(layer), "shape": list(layer.shape), "density": layer.density,
                        "effective_macs": layer.effective_macs} for layer in self.layers],
            **self.extra,
        }

    def __str__(self) -> str:
        rows = [("layer", "type", "shape", "params", "nonzero", "density", "MMACs", "eff. MMACs")]
        for s in self.layers:
            rows.append((s.name, s.type, "x".join(map(str, s.shape)), f"{s.params:,}",
                         f"{s.nonzero:,}", f"{s.density:.3f}", f"{s.macs / 1e6:.3f}",
                         f"{s.effective_macs / 1e6:.3f}"))
        rows.append(("total", "", "", f"{self.prunable_params:,}", f"{self.prunable_nonzero:,}",
                     f"{1 - self.sparsity:.3f}", f"{self.dense_macs / 1e6:.3f}",
                     f"{self.effective_macs / 1e6:.3f}"))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        fmt = lambda r: "  ".join(c.ljust(w) if i < 3 else c.rjust(w)  # noqa: E731
                                  for i, (c, w) in enumerate(zip(r, widths)))
        lines = [fmt(rows[0]), "-" * (sum(widths) + 2 * (len(widths) - 1))]
        lines += [fmt(r) for r in rows[1:-1]]
        lines += [lines[1], fmt(rows[-1])]
        lines.append(f"input {tuple(self.input_size)}; all parameters {self.total_params:,} "
                     f"({self.total_nonzero:,} nonzero); weight sparsity {self.sparsity:.4f}")
        return "\n".join(lines)


@torch.no_grad()
def weight_sparsity(model: nn.Module) -> float:
    """Fraction of the ``Conv2d`` / ``Linear`` weights of ``model`` that are exactly zero
    (0.0 when it has none): ``sparsity_report(model).sparsity`` without the forward pass,
    so any input shape and no MACs. Weights reparametrised by ``torch.nn.utils.prune`` are
    read as ``orig * mask``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    params = nonzero = 0
    for m in model.modules():
        if isinstance(m, PRUNABLE_TYPES):
            w = effective_weight(m)
            params += w.numel()
            nonzero += int(torch.count_nonzero(w))
    return 1.0 - nonzero / params if params else 0.0


def _macs(m: nn.Module, out: torch.Tensor) -> int:
    if isinstance(m, nn.Conv2d):
        kh, kw = m.kernel_size
        return out[0].numel() * (m.in_channels // m.groups) * kh * kw
    return out[0].numel() * m.in_features  # Linear: out_features * in per position


@torch.no_grad()
def sparsity_report(model: nn.Module, input_size: tuple[int, ...] = (3, 32, 32)) -> SparsityReport:
    """Measure ``model`` on one zero input of shape ``(1, *input_size)`` (eval mode; the
    model's mode is restored). Weights reparametrised by ``torch.nn.utils.prune`` are
    read as ``orig * mask``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    try:
        size = tuple(int(v) for v in input_size)
    except (TypeError, ValueError):
        raise TypeError(f"input_size must be a tuple of ints, got {input_size!r}") from None
    if not size or any(v < 1 for v in size):
        raise ValueError(f"input_size must be positive ints (C, H, W), got {input_size!r}")
    param = next(model.parameters(), None)
    dev = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)]
    macs: dict[str, int] = {}

    def hook(name):
        def f(m, inp, out):
            macs[name] = macs.get(name, 0) + _macs(m, out)
        return f

    handles = [m.register_forward_hook(hook(n)) for n, m in layers]
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros((1, *size), device=dev, dtype=dtype))
    except Exception as e:
        raise ValueError(f"sparsity_report: forward pass of {type(model).__name__} on input "
                         f"(1, {', '.join(map(str, size))}) failed: {e}") from e
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    stats = []
    for n, m in layers:
        w = effective_weight(m)
        stats.append(LayerStats(n, type(m).__name__, tuple(w.shape), w.numel(),
                                int(torch.count_nonzero(w)), int(macs.get(n, 0))))
    total = nonzero = 0
    eff = {n: effective_weight(m) for n, m in layers}
    for mn, m in model.named_modules():
        for pn, p in m.named_parameters(recurse=False):
            if pn == "weight_orig" and mn in eff:
                p = eff[mn]
            total += p.numel()
            nonzero += int(torch.count_nonzero(p))
    info = getattr(model, "prune_info", None)
    extra = {"prune_info": {k: v for k, v in info.items() if k != "groups"}} \
        if isinstance(info, dict) else {}
    return SparsityReport(stats, size, total, nonzero, extra)
