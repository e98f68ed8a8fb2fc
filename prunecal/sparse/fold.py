"""BatchNorm folding and ReLU fusion for inference.

Pure helpers used by :func:`prunecal.sparse.sparsify`:

- :func:`fold_bn_params` folds an eval-mode BatchNorm into the preceding layer's weight and
  bias: ``w' = w * s``, ``b' = (b - mean) * s + beta`` with ``s = gamma / sqrt(var + eps)``,
  per output channel. Zeros of ``w`` stay exactly zero, so pruning sparsity is preserved.
- :func:`find_chains` finds ``conv -> bn (-> relu)`` and ``conv/linear -> relu`` chains in a
  :mod:`torch.fx` graph where each intermediate value has exactly one user (so folding or
  fusing cannot change any other consumer, e.g. a residual branch).
- :func:`find_sequential_chains` is the fallback for models that do not trace: it only looks
  inside plain :class:`torch.nn.Sequential` containers, where data flow is provably linear.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.fx
from torch import nn

from prunecal.fx_match import is_relu_call

__all__ = [
    "fold_bn_params",
    "fold_conv_bn",
    "can_fold_bn",
    "is_relu_module",
    "has_hooks",
    "Chain",
    "find_chains",
    "SeqChain",
    "find_sequential_chains",
]


def can_fold_bn(bn: nn.Module) -> str | None:
    """``None`` when ``bn`` can be folded at inference, else the reason it cannot.

    Only :class:`~torch.nn.BatchNorm2d` (after a conv) or :class:`~torch.nn.BatchNorm1d` (after a
    linear layer; the caller checks which layer precedes) with running statistics qualifies: a
    BatchNorm created with ``track_running_stats=False`` normalises with batch statistics even
    in eval mode, which no constant weight can reproduce.
    """
    if type(bn) not in (nn.BatchNorm2d, nn.BatchNorm1d):
        return f"{type(bn).__name__} is not BatchNorm2d or BatchNorm1d"
    if not bn.track_running_stats or bn.running_mean is None or bn.running_var is None:
        return "BatchNorm without running statistics (track_running_stats=False)"
    return None


def fold_bn_params(
    weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.Module
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold the eval-mode BatchNorm ``bn`` into ``weight`` (out channels first) and ``bias``.

    Args:
        weight: ``(C_out, ...)`` conv or linear weight.
        bias: ``(C_out,)`` or ``None`` (treated as zeros).
        bn: a BatchNorm over ``C_out`` channels with running statistics (BatchNorm1d: only
            with a linear weight ``(C_out, in)``).

    Returns:
        ``(weight', bias')`` new tensors with ``weight``'s dtype; the arithmetic is done in
        float64 so the folded layer matches ``bn(layer(x))`` to float32 rounding.

    Raises:
        ValueError: channel mismatch, missing running statistics, or non-finite statistics.
    """
    reason = can_fold_bn(bn) if isinstance(bn, nn.modules.batchnorm._BatchNorm) else "not a BatchNorm"
    if reason is not None:
        raise ValueError(f"bn: cannot fold: {reason}")
    if type(bn) is nn.BatchNorm1d and weight.dim() != 2:
        raise ValueError(f"bn: a BatchNorm1d folds only into a linear weight (out, in), got shape {tuple(weight.shape)}")
    c_out = weight.shape[0]
    if bn.num_features != c_out:
        raise ValueError(f"bn: has {bn.num_features} channels but the layer has {c_out} outputs")
    if bias is not None and bias.shape != (c_out,):
        raise ValueError(f"bias: shape {tuple(bias.shape)} != ({c_out},)")
    mean = bn.running_mean.detach().double()
    var = bn.running_var.detach().double()
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(mean)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(mean)
    for name, t in (("running_mean", mean), ("running_var", var), ("weight", gamma), ("bias", beta)):
        if not torch.isfinite(t).all():
            raise ValueError(f"bn: {name} has non-finite values; cannot fold")
    if (var + bn.eps <= 0).any():
        raise ValueError("bn: running_var + eps must be > 0")
    scale = gamma / torch.sqrt(var + bn.eps)
    b = bias.detach().double() if bias is not None else torch.zeros_like(mean)
    shape = (-1,) + (1,) * (weight.dim() - 1)
    w_new = (weight.detach().double() * scale.reshape(shape)).to(weight.dtype)
    b_new = ((b - mean) * scale + beta).to(weight.dtype)
    return w_new, b_new


def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new :class:`~torch.nn.Conv2d` (with bias) equal to ``bn(conv(x))`` in eval mode.

    ``conv`` and ``bn`` are not modified. Same result as
    :func:`torch.nn.utils.fusion.fuse_conv_bn_eval`, computed in float64.
    """
    if not isinstance(conv, nn.Conv2d):
        raise TypeError(f"conv: expected nn.Conv2d, got {type(conv).__name__}")
    w, b = fold_bn_params(conv.weight, conv.bias, bn)
    out = nn.Conv2d(
        conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
        padding=conv.padding, dilation=conv.dilation, groups=conv.groups, bias=True,
        padding_mode=conv.padding_mode, device=w.device, dtype=w.dtype,
    )
    with torch.no_grad():
        out.weight.copy_(w)
        out.bias.copy_(b)
    return out.eval()


def has_hooks(m: nn.Module) -> bool:
    """True when ``m`` has forward (pre-)hooks, which folding it away would silently drop."""
    return bool(m._forward_hooks or m._forward_pre_hooks)


def is_relu_module(m: nn.Module) -> bool:
    """True for a plain :class:`~torch.nn.ReLU` (in-place or not)."""
    return type(m) is nn.ReLU


def _is_relu_node(node: torch.fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        m = modules.get(node.target)  # type: ignore[arg-type]
        return is_relu_module(m) and not has_hooks(m)
    return is_relu_call(node)


@dataclass
class Chain:
    """A foldable chain in an fx graph: ``layer`` node, optional ``bn`` and ``relu`` nodes."""

    layer: torch.fx.Node
    bn: torch.fx.Node | None = None
    relu: torch.fx.Node | None = None


def _sole_user(node: torch.fx.Node) -> torch.fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def find_chains(
    gm: torch.fx.GraphModule,
    layer_types: tuple[type, ...] = (nn.Conv2d, nn.Linear),
    *,
    fold_bn: bool = True,
    fuse_relu: bool = True,
) -> tuple[list[Chain], dict[str, str]]:
    """Find ``layer -> bn -> relu`` chains that can be folded/fused without changing results.

    A BN is folded only after an :class:`~torch.nn.Conv2d` whose output feeds only that BN
    (and the BN module is called only once); a ReLU is fused only where the value it reads (the
    layer's, or the folded BN's output) feeds only that ReLU. A layer module called more than
    once (weight sharing) is never folded or fused.

    Returns:
        ``(chains, notes)``: one :class:`Chain` per call of a layer of ``layer_types`` (exact
        types; called-once layers only), and ``notes[target]`` explaining why a BN that follows
        a conv was not folded.
    """
    modules = dict(gm.named_modules())
    calls: dict[str, int] = {}
    for n in gm.graph.nodes:
        if n.op == "call_module":
            calls[n.target] = calls.get(n.target, 0) + 1
    chains: list[Chain] = []
    notes: dict[str, str] = {}
    for n in gm.graph.nodes:
        if n.op != "call_module" or type(modules.get(n.target)) not in layer_types:
            continue
        chain = Chain(n)
        chains.append(chain)
        if calls[n.target] != 1:
            notes[n.target] = "module called more than once; not folded or fused"
            continue
        nxt = _sole_user(n)
        if (
            fold_bn
            and nxt is not None
            and nxt.op == "call_module"
            and isinstance(modules.get(nxt.target), nn.modules.batchnorm._BatchNorm)
        ):
            if type(modules[n.target]) is not nn.Conv2d:
                notes[n.target] = "BatchNorm after a non-conv layer is not folded"
                continue
            reason = can_fold_bn(modules[nxt.target])
            if reason is None and has_hooks(modules[nxt.target]):
                reason = "BatchNorm has forward hooks"
            if reason is None and calls[nxt.target] != 1:
                reason = "BatchNorm module called more than once"
            if reason is None and (len(nxt.args) != 1 or nxt.kwargs):
                reason = "BatchNorm called with extra arguments"
            if reason is not None:
                notes[n.target] = f"BatchNorm {nxt.target} not folded: {reason}"
                continue
            chain.bn = nxt
            nxt = _sole_user(nxt)
        elif fold_bn and len(n.users) > 1 and any(
            u.op == "call_module" and isinstance(modules.get(u.target), nn.modules.batchnorm._BatchNorm)
            for u in n.users
        ):
            notes[n.target] = "output has several users; BatchNorm not folded"
            continue
        if fuse_relu and nxt is not None and _is_relu_node(nxt, modules):
            chain.relu = nxt
    return chains, notes


@dataclass
class SeqChain:
    """A chain inside a plain ``nn.Sequential``: the container's path and child names."""

    seq: str
    layer: str
    bn: str | None = None
    relu: str | None = None


def find_sequential_chains(
    model: nn.Module,
    layer_types: tuple[type, ...] = (nn.Conv2d, nn.Linear),
    *,
    fold_bn: bool = True,
    fuse_relu: bool = True,
) -> list[SeqChain]:
    """Chains ``layer, BatchNorm2d, ReLU`` of consecutive children of plain ``nn.Sequential``.

    Only containers whose class does not override ``forward`` and that have no hooks are used,
    because only there the output of one child provably feeds only the next one.
    """
    out: list[SeqChain] = []
    for path, seq in model.named_modules():
        if not isinstance(seq, nn.Sequential) or type(seq).forward is not nn.Sequential.forward:
            continue
        if has_hooks(seq):
            continue
        items = [(k, v) for k, v in seq._modules.items() if v is not None]
        names = [k for k, _ in items]
        kids = [v for _, v in items]
        i = 0
        while i < len(kids):
            m = kids[i]
            if type(m) not in layer_types or has_hooks(m):
                i += 1
                continue
            ch = SeqChain(path, names[i])
            j = i + 1
            if (
                fold_bn and type(m) is nn.Conv2d and j < len(kids)
                and type(kids[j]) is nn.BatchNorm2d and can_fold_bn(kids[j]) is None
                and not has_hooks(kids[j])
            ):
                ch.bn = names[j]
                j += 1
            if fuse_relu and j < len(kids) and is_relu_module(kids[j]) and not has_hooks(kids[j]):
                ch.relu = names[j]
                j += 1
            out.append(ch)
            i = j
    return out

