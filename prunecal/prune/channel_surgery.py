"""Channel surgery: keep a subset of channels of one layer, in place.

Each helper takes the module and ``keep``, a sorted 1-D ``int64`` tensor of channel
indices to keep, and rewrites parameters, buffers and size attributes so the module
is a smaller dense layer computing exactly the kept channels.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["slice_conv_out", "slice_conv_in", "slice_depthwise", "slice_bn",
           "slice_linear_in", "slice_selection", "is_depthwise"]


def _check_keep(keep: torch.Tensor, n: int, what: str) -> torch.Tensor:
    keep = torch.as_tensor(keep, dtype=torch.int64).reshape(-1)
    if keep.numel() == 0:
        raise ValueError(f"{what}: cannot remove every channel (keep at least 1)")
    if int(keep.min()) < 0 or int(keep.max()) >= n:
        raise ValueError(f"{what}: channel index out of range [0, {n})")
    if keep.unique().numel() != keep.numel():
        raise ValueError(f"{what}: duplicate channel indices")
    return keep.sort().values


def _param(t: torch.Tensor, requires_grad: bool) -> nn.Parameter:
    return nn.Parameter(t.detach().clone().contiguous(), requires_grad=requires_grad)


def is_depthwise(conv: nn.Module) -> bool:
    """True for a ``Conv2d`` with ``groups == in_channels == out_channels`` (a 1-channel
    conv counts too, so a depthwise conv pruned to one channel stays sliceable)."""
    return isinstance(conv, nn.Conv2d) and conv.groups == conv.in_channels == conv.out_channels


@torch.no_grad()
def slice_conv_out(conv: nn.Conv2d, keep: torch.Tensor) -> nn.Conv2d:
    """Keep output channels ``keep`` of a ``groups=1`` conv (weight ``[C_out, C_in, kh, kw]``
    -> ``[len(keep), C_in, kh, kw]``, bias likewise)."""
    if conv.groups != 1:
        raise ValueError(f"slice_conv_out: grouped conv (groups={conv.groups}); "
                         "use slice_depthwise for depthwise convs")
    keep = _check_keep(keep, conv.out_channels, "slice_conv_out").to(conv.weight.device)
    conv.weight = _param(conv.weight[keep], conv.weight.requires_grad)
    if conv.bias is not None:
        conv.bias = _param(conv.bias[keep], conv.bias.requires_grad)
    conv.out_channels = int(keep.numel())
    return conv


@torch.no_grad()
def slice_conv_in(conv: nn.Conv2d, keep: torch.Tensor) -> nn.Conv2d:
    """Keep input channels ``keep`` of a ``groups=1`` conv (weight ``[C_out, C_in, kh, kw]``
    -> ``[C_out, len(keep), kh, kw]``)."""
    if conv.groups != 1:
        raise ValueError(f"slice_conv_in: grouped conv (groups={conv.groups}); "
                         "use slice_depthwise for depthwise convs")
    keep = _check_keep(keep, conv.in_channels, "slice_conv_in").to(conv.weight.device)
    conv.weight = _param(conv.weight[:, keep], conv.weight.requires_grad)
    conv.in_channels = int(keep.numel())
    return conv


@torch.no_grad()
def slice_depthwise(conv: nn.Conv2d, keep: torch.Tensor) -> nn.Conv2d:
    """Keep channels ``keep`` of a depthwise conv (input = output channels = groups;
    weight ``[C, 1, kh, kw]`` -> ``[len(keep), 1, kh, kw]``)."""
    if not is_depthwise(conv):
        raise ValueError("slice_depthwise: conv is not depthwise "
                         f"(in={conv.in_channels}, out={conv.out_channels}, groups={conv.groups})")
    keep = _check_keep(keep, conv.out_channels, "slice_depthwise").to(conv.weight.device)
    conv.weight = _param(conv.weight[keep], conv.weight.requires_grad)
    if conv.bias is not None:
        conv.bias = _param(conv.bias[keep], conv.bias.requires_grad)
    n = int(keep.numel())
    conv.in_channels = conv.out_channels = conv.groups = n
    return conv


@torch.no_grad()
def slice_bn(bn: nn.modules.batchnorm._BatchNorm, keep: torch.Tensor):
    """Keep channels ``keep`` of a BatchNorm (affine parameters and running stats)."""
    keep = _check_keep(keep, bn.num_features, "slice_bn")
    for name in ("weight", "bias"):
        p = getattr(bn, name)
        if p is not None:
            setattr(bn, name, _param(p[keep.to(p.device)], p.requires_grad))
    for name in ("running_mean", "running_var"):
        b = getattr(bn, name)
        if b is not None:
            setattr(bn, name, b[keep.to(b.device)].clone())
    bn.num_features = int(keep.numel())
    return bn


@torch.no_grad()
def slice_linear_in(linear: nn.Linear, keep: torch.Tensor, spatial: int = 1) -> nn.Linear:
    """Keep the input features of ``linear`` that come from channels ``keep`` of a
    channel-major flattened ``(C, spatial)`` map: ``in_features = C * spatial`` ->
    ``len(keep) * spatial`` (``spatial=1`` after global pooling)."""
    if spatial < 1 or linear.in_features % spatial:
        raise ValueError(f"slice_linear_in: in_features {linear.in_features} is not a "
                         f"multiple of spatial={spatial}")
    c = linear.in_features // spatial
    keep = _check_keep(keep, c, "slice_linear_in").to(linear.weight.device)
    cols = (keep[:, None] * spatial + torch.arange(spatial, device=keep.device)).reshape(-1)
    linear.weight = _param(linear.weight[:, cols], linear.weight.requires_grad)
    linear.in_features = int(cols.numel())
    return linear


@torch.no_grad()
def slice_selection(sel: nn.Module, keep: torch.Tensor) -> nn.Module:
    """Keep outputs ``keep`` of a channel-selection layer
    (:class:`prunecal.models.ChannelSelection`): ``keep`` indexes its *currently selected*
    channels (its output), so selecting again only narrows the selection; the layer's input
    (the BatchNorm before it) keeps every channel."""
    cur = sel.selected()
    keep = _check_keep(keep, int(cur.numel()), "slice_selection").to(cur.device)
    sel.indexes.zero_()
    sel.indexes[cur[keep]] = 1.0
    return sel
