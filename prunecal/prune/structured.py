"""Structured (channel) pruning that physically removes channels.

The result is a smaller dense network with fewer parameters and FLOPs.
``sparsity`` here is the **fraction of prunable channels removed** (rounded to whole
channels; every group keeps at least ``min_channels``); ``model.prune_info`` also
records the resulting parameter fraction.

Which channels are prunable is found generically with :mod:`torch.fx`: a *channel
group* starts at a ``Conv2d`` (``groups=1``) whose output flows, through channel-wise
ops only (BatchNorm, activations, pooling, dropout, depthwise convs) and with no
other user, into exactly one consumer: a ``Conv2d`` (its input channels) or, after a
channel-major flatten, a ``Linear`` (its input features). Channels that meet a
residual sum, a concatenation or any unknown op are coupled to other layers and are
left alone. Hence, by default:

- CIFAR ResNets: the internal channel of every BasicBlock (``conv1`` out / ``bn1`` /
  ``conv2`` in); the channels coupled through the residual sums are kept.
- VGG: every conv, the last one with the classifier's input features (flatten).
- MobileNetV2: the expansion channels of each inverted residual (expand conv out,
  its BN, the depthwise conv and BN, project conv in), plus any other uncoupled
  conv (e.g. project convs of blocks without a residual, the last 1x1 conv).

Pre-activation networks (:mod:`prunecal.models.preresnet_cifar`) normalise the residual
stream with a BatchNorm at the head of every block, whose channels are coupled through the
sums. Network slimming (Liu et al. 2017) prunes them anyway with a *channel selection* after
that BN (:class:`prunecal.models.ChannelSelection`): the BN keeps every channel and the
selection passes only the kept ones to the next conv. Each selection whose input is a
``BatchNorm2d`` therefore starts a second kind of group (``kind='select'``): the selection's
output channels, flowing through channel-wise ops into one conv or (after pooling / flatten)
``Linear``; removing channels zeroes entries of ``select.indexes`` and slices the consumer's
inputs. Only ``bn_channel`` prunes these groups (ranked by that BN's ``|gamma|``, globally
with the convs' BNs, as network slimming does); ``l1_filter`` has no filters to rank there
and prunes the conv groups only. PreResNets: the internal channels of every block (``conv1``
out / ``bn2`` / ``conv2`` in, and ``conv2`` / ``bn3`` / ``conv3`` in a bottleneck) are conv
groups; ``select`` of every block and the final ``select`` are selection groups.

Methods:
- ``l1_filter`` (Li et al. 2017, "Pruning Filters for Efficient ConvNets"): rank the
  producer conv's filters by the L1 norm of their weights; per group by default
  (``scope='layer'``: the same fraction in every group), or globally
  (``scope='global'``, by the mean ``|w|`` of each filter so layers compare).
- ``bn_channel`` (network slimming, Liu et al. 2017, applied post hoc): rank channels
  by the ``|gamma|`` of the BatchNorm that follows the producer, globally across
  groups by default (``scope='global'``), or per group (``scope='layer'``).
"""
from __future__ import annotations

import numbers
import operator
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Iterable, Literal

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from ..fx_match import RELU_FUNCTIONS, RELU_METHODS
from ..models.preresnet_cifar import ChannelSelection
from .channel_surgery import (is_depthwise, slice_bn, slice_conv_in, slice_conv_out,
                              slice_depthwise, slice_linear_in, slice_selection)

__all__ = ["ChannelGroup", "find_channel_groups", "select_channels", "remove_channels", "restore_structure",
           "l1_filter", "bn_channel", "structured_prune"]

Scope = Literal["global", "layer"]


@dataclass(frozen=True)
class ChannelGroup:
    """Channels that are removed together.

    Attributes:
        producer: name of the ``Conv2d`` whose output channels define the group (for
            ``kind='select'``: of the channel-selection layer).
        channels: number of channels (of a selection: currently selected).
        members: modules sliced along their channel axis, in forward order (the
            producer, BatchNorms, depthwise convs).
        consumer: the module whose input channels are sliced.
        spatial: features per channel at the consumer (``Linear`` after a flatten of a
            ``C x H x W`` map: ``H*W``; 1 for convs and after global pooling).
        kind: ``'conv'`` or ``'select'`` (a :class:`~prunecal.models.ChannelSelection`).
        source: for ``'select'``: the ``BatchNorm2d`` feeding the selection (kept whole;
            its ``|gamma|`` ranks the channels); else ``None``.
    """

    producer: str
    channels: int
    members: tuple[str, ...]
    consumer: str
    spatial: int = 1
    kind: str = "conv"
    source: str | None = None


class _LeafTracer(fx.Tracer):
    """Treats every module without children as a leaf, so custom ops stay opaque, and
    remembers which module it was inside when tracing fails."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return next(iter(m.children()), None) is None or super().is_leaf_module(m, qualname)

    def call_module(self, m, forward, args, kwargs):
        self.stack.append(self.path_of_module(m))
        out = super().call_module(m, forward, args, kwargs)
        self.stack.pop()
        return out


_CHANNELWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.SiLU,
    nn.GELU, nn.ELU, nn.Sigmoid, nn.Tanh, nn.PReLU, nn.Identity, nn.Dropout, nn.Dropout2d,
)
_POOL_MODULES = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_ELEMENTWISE_FNS: set = {
    *RELU_FUNCTIONS, F.relu6, F.hardtanh, F.leaky_relu, F.gelu,
    F.silu, F.elu, F.hardswish, F.hardsigmoid, torch.sigmoid, torch.tanh, F.sigmoid,
    F.tanh, F.dropout,
}
_POOL_FNS: set = {F.avg_pool2d, F.max_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d}
_ELEMENTWISE_METHODS = {*RELU_METHODS, "sigmoid", "tanh", "contiguous", "clamp", "clamp_"}


def _is_shape_only(n: fx.Node) -> bool:
    """``x.size(...)``, ``x.dim()``, ``x.shape`` or an item of those."""
    if n.op == "call_method" and n.target in ("size", "dim"):
        return True
    if n.op == "call_function" and n.target is getattr:
        return n.args[1:] == ("shape",)
    if n.op == "call_function" and n.target is operator.getitem:
        return isinstance(n.args[0], fx.Node) and _is_shape_only(n.args[0])
    return False


def _is_batch_dim(a: object) -> bool:
    """``x.size(0)`` or ``x.shape[0]`` (the batch size in a flatten-by-view)."""
    if not isinstance(a, fx.Node) or not _is_shape_only(a):
        return False
    if a.op == "call_method":
        return a.args[1:] == (0,)
    return a.target is operator.getitem and a.args[1] == 0


def _spatial_dims(u: fx.Node) -> tuple[set, bool]:
    dims = u.args[1] if len(u.args) > 1 else u.kwargs.get("dim")
    keep = bool(u.args[2] if len(u.args) > 2 else u.kwargs.get("keepdim", False))
    dims = set(dims) if isinstance(dims, (tuple, list)) else {dims}
    return dims, keep


def _other_node_args(u: fx.Node, cur: fx.Node) -> bool:
    """True if ``u`` takes a tensor other than ``cur`` (ignoring size() nodes)."""
    return any(a is not cur and not _is_shape_only(a) for a in _flat_nodes(u))


def _flat_nodes(u: fx.Node) -> list[fx.Node]:
    out: list[fx.Node] = []
    fx.node.map_arg((u.args, u.kwargs), lambda x: out.append(x) or x)
    return out


def _start_dim(u: fx.Node, default: int) -> int:
    if len(u.args) > 1:
        return u.args[1]
    return u.kwargs.get("start_dim", default)


def _follow(start: fx.Node, mods: dict[str, nn.Module], calls: Counter, channels: int,
            kind: str = "conv", source: str | None = None) -> ChannelGroup | None:
    members = [start.target]
    extra = {} if kind == "conv" else {"kind": kind, "source": source}
    cur, flat = start, False
    while True:
        users = [u for u in cur.users if not _is_shape_only(u)]
        if len(users) != 1:
            return None
        u = users[0]
        if u.op == "call_module":
            if calls[u.target] != 1:
                return None
            m = mods[u.target]
            if isinstance(m, nn.Conv2d) and not flat:
                if m.groups == 1:
                    return ChannelGroup(start.target, channels, tuple(members), u.target, 1, **extra)
                if is_depthwise(m):
                    members.append(u.target)
                    cur = u
                    continue
                return None
            if isinstance(m, nn.Linear) and flat:
                if m.in_features % channels:
                    return None
                return ChannelGroup(start.target, channels, tuple(members), u.target,
                                    m.in_features // channels, **extra)
            if isinstance(m, nn.BatchNorm2d) and not flat:
                members.append(u.target)
            elif isinstance(m, nn.Flatten) and not flat and m.start_dim == 1:
                flat = True
            elif isinstance(m, _CHANNELWISE_MODULES) and not (isinstance(m, nn.PReLU)
                                                              and m.num_parameters > 1):
                pass
            elif isinstance(m, _POOL_MODULES) and not flat:
                pass
            else:
                return None
        elif u.op == "call_function":
            if _other_node_args(u, cur):
                return None
            if u.target in _ELEMENTWISE_FNS:
                pass
            elif u.target in _POOL_FNS and not flat:
                pass
            elif u.target is torch.flatten and not flat and _start_dim(u, 0) == 1:
                flat = True
            elif u.target in (torch.mean, torch.amax, torch.sum) and not flat and \
                    _spatial_dims(u)[0] in ({2, 3}, {-1, -2}):
                flat = not _spatial_dims(u)[1]
            else:
                return None
        elif u.op == "call_method":
            if _other_node_args(u, cur):
                return None
            if u.target in _ELEMENTWISE_METHODS:
                pass
            elif u.target == "flatten" and not flat and _start_dim(u, 0) == 1:
                flat = True
            elif (u.target in ("view", "reshape") and not flat and len(u.args) == 3
                  and u.args[2] == -1 and _is_batch_dim(u.args[1])):
                flat = True  # x.view(x.size(0), -1)
            elif u.target in ("mean", "amax", "sum") and not flat and \
                    _spatial_dims(u)[0] in ({2, 3}, {-1, -2}):
                flat = not _spatial_dims(u)[1]  # global pooling: (N, C) unless keepdim
            else:
                return None
        else:
            return None
        cur = u


def find_channel_groups(model: nn.Module) -> list[ChannelGroup]:
    """The prunable channel groups of ``model``, in forward order.

    Raises ``ValueError`` naming the model class (and torch.fx's reason) when the
    model cannot be traced, or when it has no prunable group.
    """
    tracer = _LeafTracer()
    try:
        graph = tracer.trace(model)
    except Exception as e:  # torch.fx raises many types for data-dependent control flow
        where = tracer.stack[-1] if tracer.stack else ""
        where = (f"module {where!r} ({type(model.get_submodule(where)).__name__}) of "
                 if where else "the forward of ")
        raise ValueError(f"structured pruning: cannot trace {where}{type(model).__name__} "
                         f"with torch.fx, so its channel dependencies are unknown: {e}") from e
    mods = dict(model.named_modules())
    calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
    groups = []
    for node in graph.nodes:
        if node.op != "call_module" or calls[node.target] != 1:
            continue
        m = mods[node.target]
        g = None
        if isinstance(m, nn.Conv2d) and m.groups == 1:
            g = _follow(node, mods, calls, m.out_channels)
        elif isinstance(m, ChannelSelection):
            src = node.args[0] if len(node.args) == 1 and not node.kwargs else None
            if isinstance(src, fx.Node) and src.op == "call_module" and calls[src.target] == 1 \
                    and isinstance(mods[src.target], nn.BatchNorm2d) \
                    and mods[src.target].num_features == m.num_channels:
                g = _follow(node, mods, calls, int(m.selected().numel()), "select", src.target)
        if g is not None:
            groups.append(g)
    if not groups:
        raise ValueError(f"structured pruning: {type(model).__name__} has no channel group "
                         "that can be removed without breaking residual/concat couplings")
    return groups


def select_channels(groups: list[ChannelGroup], scores: list[torch.Tensor], sparsity: float,
                    scope: Scope, min_channels: int = 1) -> list[torch.Tensor]:
    """Sorted kept-channel indices per group: remove ``round(sparsity * C)`` channels with
    the lowest scores (``C`` = channels of the group for ``scope='layer'``, of all
    groups for ``scope='global'``), ties to the lower index, each group keeping at least
    ``min_channels``."""
    if isinstance(min_channels, bool) or not isinstance(min_channels, numbers.Integral) or min_channels < 1:
        raise ValueError(f"min_channels must be an int >= 1, got {min_channels!r}")
    drop = [torch.zeros(g.channels, dtype=torch.bool) for g in groups]
    if scope == "layer":
        for d, g, s in zip(drop, groups, scores):
            k = min(int(round(sparsity * g.channels)), max(g.channels - min_channels, 0))
            if k > 0:
                d[torch.sort(s.double().cpu(), stable=True).indices[:k]] = True
    elif scope == "global":
        total = sum(g.channels for g in groups)
        k = int(round(sparsity * total))
        flat = torch.cat([s.double().cpu().reshape(-1) for s in scores])
        gid = torch.cat([torch.full((g.channels,), i) for i, g in enumerate(groups)])
        cid = torch.cat([torch.arange(g.channels) for g in groups])
        room = [max(g.channels - min_channels, 0) for g in groups]
        removed = 0
        for j in torch.sort(flat, stable=True).indices.tolist():
            if removed >= k:
                break
            i = int(gid[j])
            if room[i] > 0:
                room[i] -= 1
                drop[i][cid[j]] = True
                removed += 1
    else:
        raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
    return [torch.nonzero(~d).reshape(-1) for d in drop]


@torch.no_grad()
def remove_channels(model: nn.Module, group: ChannelGroup, keep: torch.Tensor) -> None:
    """Keep only channels ``keep`` of ``group`` in ``model`` (in place)."""
    mods = dict(model.named_modules())
    if group.kind == "select":
        sel = mods[group.producer]
        if int(sel.selected().numel()) != group.channels:
            raise ValueError(f"channel selection {group.producer!r} selects "
                             f"{int(sel.selected().numel())} channels, the group has {group.channels}")
        slice_selection(sel, keep)
    else:
        slice_conv_out(mods[group.producer], keep)
    for name in group.members[1:]:
        m = mods[name]
        if isinstance(m, nn.BatchNorm2d):
            slice_bn(m, keep)
        elif is_depthwise(m):
            slice_depthwise(m, keep)
        else:
            raise TypeError(f"cannot slice {name!r} ({type(m).__name__}) along channels")
    c = mods[group.consumer]
    if isinstance(c, nn.Linear):
        slice_linear_in(c, keep, group.spatial)
    else:
        slice_conv_in(c, keep)


def restore_structure(model: nn.Module, prune_info: dict) -> nn.Module:
    """Redo, on an unpruned ``model`` of the same architecture, the channel removals recorded
    in ``prune_info`` (a structured result's ``prune_info`` and its ``previous`` chain, oldest
    first; unstructured steps need nothing), in place; returns ``model``.

    This is how a saved structurally pruned network is loaded again: build the dense
    architecture, restore the structure, then load the state dict
    (:func:`prunecal.models.load_checkpoint` does this itself when the checkpoint carries
    ``prune_info``). Raises ``ValueError`` naming the group when the recorded structure
    does not fit ``model``.
    """
    if not isinstance(prune_info, dict):
        raise TypeError(f"prune_info must be a dict, got {type(prune_info).__name__}")
    chain = []
    info: object = prune_info
    while isinstance(info, dict):
        chain.append(info)
        info = info.get("previous")
    for step in reversed(chain):
        if step.get("kind") != "structured":
            continue
        recorded = step.get("groups")
        if not isinstance(recorded, dict):
            raise ValueError("prune_info of a structured step has no 'groups' record")
        groups = {g.producer: g for g in find_channel_groups(model)}
        for producer, rec in recorded.items():
            g = groups.get(producer)
            if g is None or g.channels != rec.get("channels") or \
                    list(g.members) != list(rec.get("members", g.members)) or \
                    g.consumer != rec.get("consumer", g.consumer):
                found = f"{g.channels} channels" if g is not None else "no such channel group"
                raise ValueError(f"recorded structure does not fit {type(model).__name__}: group "
                                 f"{producer!r} had {rec.get('channels')} channels, model has {found}")
            keep = torch.as_tensor(rec["kept_index"], dtype=torch.int64)
            if keep.numel() < g.channels:
                remove_channels(model, g, keep)
    return model


def _select_groups(groups: list[ChannelGroup], layers: Iterable[str] | None) -> list[ChannelGroup]:
    if layers is None:
        return groups
    if isinstance(layers, str):
        raise TypeError("layers must be a list of producer conv names, not a string")
    by_name = {g.producer: g for g in groups}
    names = list(dict.fromkeys(layers))
    if not names:
        raise ValueError(f"layers: empty list of producer convs to prune; prunable: {list(by_name)}")
    bad = [n for n in names if n not in by_name]
    if bad:
        raise ValueError(f"layers: {bad} are not prunable channel groups; prunable producer "
                         f"convs: {list(by_name)}")
    return [g for g in groups if g.producer in names]


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


ScoreFn = Callable[[nn.Module, list[ChannelGroup], Scope], list[torch.Tensor]]


def structured_prune(model: nn.Module, sparsity: float, *, method: str, score_fn: ScoreFn,
                     scope: Scope, seed: int = 0, layers: Iterable[str] | None = None,
                     min_channels: int = 1, selections: bool = True) -> nn.Module:
    """Remove the ``sparsity`` fraction of lowest-scoring prunable channels (in place).

    ``score_fn(model, groups, scope)`` returns one score tensor ``(channels,)`` per group.
    ``selections=False`` leaves channel-selection groups out. Records ``model.prune_info``;
    returns ``model``.
    """
    if scope not in ("global", "layer"):
        raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
    found = find_channel_groups(model)
    if not selections:
        found = [g for g in found if g.kind == "conv"]
        if not found:
            raise ValueError(f"{method}: {type(model).__name__} has no conv channel group to prune "
                             "(only channel selections, which bn_channel prunes)")
    groups = _select_groups(found, layers)
    before = _n_params(model)
    keeps = select_channels(groups, score_fn(model, groups, scope), sparsity, scope, min_channels)
    for g, keep in zip(groups, keeps):
        if keep.numel() < g.channels:
            remove_channels(model, g, keep)
    after = _n_params(model)
    total = sum(g.channels for g in groups)
    kept = sum(int(k.numel()) for k in keeps)
    model.prune_info = {
        "method": method, "kind": "structured", "sparsity": float(sparsity), "seed": int(seed),
        "scope": scope,
        "groups": {g.producer: {"channels": g.channels, "kept": int(k.numel()),
                                "kept_index": k.tolist(), "members": list(g.members),
                                "consumer": g.consumer,
                                **({"kind": g.kind, "source": g.source} if g.kind != "conv" else {})}
                   for g, k in zip(groups, keeps)},
        "achieved_sparsity": (total - kept) / total,
        "params_before": before, "params_after": after, "param_fraction": after / before,
    }
    return model


def _l1_scores(model: nn.Module, groups: list[ChannelGroup], scope: Scope) -> list[torch.Tensor]:
    mods = dict(model.named_modules())
    out = []
    for g in groups:
        w = mods[g.producer].weight.detach().abs().reshape(g.channels, -1)
        out.append(w.mean(1) if scope == "global" else w.sum(1))
    return out


def _bn_scores(model: nn.Module, groups: list[ChannelGroup], scope: Scope) -> list[torch.Tensor]:
    mods = dict(model.named_modules())
    out = []
    for g in groups:
        if g.kind == "select":
            bn = mods[g.source]
            if bn.weight is None:
                raise ValueError(f"bn_channel: BatchNorm {g.source!r} before channel selection "
                                 f"{g.producer!r} has no affine weight to rank by")
            out.append(bn.weight.detach().abs()[mods[g.producer].selected().to(bn.weight.device)])
            continue
        bn = next((mods[n] for n in g.members if isinstance(mods[n], nn.BatchNorm2d)), None)
        if bn is None or bn.weight is None:
            raise ValueError(f"bn_channel: channel group of {g.producer!r} has no affine "
                             "BatchNorm to rank by; pass layers= to exclude it or use l1_filter")
        out.append(bn.weight.detach().abs())
    return out


def l1_filter(model: nn.Module, sparsity: float, *, seed: int = 0, scope: Scope = "layer",
              layers: Iterable[str] | None = None, min_channels: int = 1) -> nn.Module:
    """L1-norm filter pruning (Li et al. 2017); in place, returns ``model``.

    Options: ``scope`` (``'layer'`` default: the same fraction per group; ``'global'``:
    one ranking by mean ``|w|``), ``layers`` (producer conv names to restrict to),
    ``min_channels`` (kept per group, default 1). Channel selections are not pruned.
    """
    return structured_prune(model, sparsity, method="l1_filter", score_fn=_l1_scores,
                            scope=scope, seed=seed, layers=layers, min_channels=min_channels,
                            selections=False)


def bn_channel(model: nn.Module, sparsity: float, *, seed: int = 0, scope: Scope = "global",
               layers: Iterable[str] | None = None, min_channels: int = 1) -> nn.Module:
    """BN-scaling-factor channel pruning (network slimming, post hoc); in place.

    Options: ``scope`` (``'global'`` default: ``|gamma|`` ranked across groups;
    ``'layer'``), ``layers`` (producer convs and channel-selection layers),
    ``min_channels`` (as for :func:`l1_filter`). Channel-selection groups are ranked by
    the ``|gamma|`` of the BatchNorm before the selection.
    """
    return structured_prune(model, sparsity, method="bn_channel", score_fn=_bn_scores,
                            scope=scope, seed=seed, layers=layers, min_channels=min_channels)
