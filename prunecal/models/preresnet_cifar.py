"""Pre-activation CIFAR ResNets (He et al. 2016, "Identity Mappings in Deep Residual Networks")
with network slimming's channel-selection layers (Liu et al. 2017).

These are the PreResNets of the study prunecal grew from (Mitra, Schwalbe & Klein 2024), which
used the CIFAR models of Liu et al.'s "Rethinking the Value of Network Pruning" code:

- ``preresnet164``: bottleneck blocks, 18 per stage (9n+2 = 164), 1.70 M parameters;
  network slimming's model (BN-channel pruning).
- ``preresnet110``: bottleneck blocks, 12 per stage (9n+2 = 110), 1.14 M parameters; the
  weight-level-pruning model of that code (its PreResNet takes bottlenecks for depth >= 44
  with ``n = (depth - 2) // 9``). ``block="basic"`` builds He et al.'s 110-layer variant
  instead: 18 basic blocks per stage (6n+2), 1.73 M parameters.

Layout (names as in network slimming's checkpoints)::

    conv1 (3x3, 3->16)
    layer{1,2,3}.{i}:   x -> bn1 -> select -> ReLU -> conv1 -> bn2 -> ReLU -> conv2
                        [-> bn3 -> ReLU -> conv3]  (bottleneck)        + downsample(x) or x
    bn -> select -> ReLU -> global average pool -> fc

``downsample`` is a 1x1 conv (with the stride) where a block changes width or resolution
(option B); the first block of ``layer1`` of a bottleneck net has one too (16 -> 64).

**Channel selection.** The BN at the head of each block (``bn1``) and the final ``bn``
normalise the residual stream, whose channels every block shares: they cannot be removed from
the BN itself. A :class:`ChannelSelection` after each of them keeps a subset of that BN's
output channels for the next conv (or ``fc``) only; network slimming prunes those channels by
their BN's ``|gamma|`` like any other. ``prunecal.prune`` (``bn_channel``) does exactly that:
it zeroes entries of ``select.indexes`` and removes the matching input channels of the next
conv / ``fc``, so the network gets physically smaller; the selection is the identity until then.

**Speed paths.** The whole-network native plan (:func:`prunecal.sparse.plan.compile_plan`)
cannot run these nets: it folds a BatchNorm only into the conv right before it, and here
``bn1``/``bn`` follow a residual sum whose value is also the shortcut, and the channel
selection is a gather the plan has no op for (``PlanUnsupported``). Use the per-layer path,
:func:`prunecal.sparse.sparsify`: every conv (and the ``bn2``/``bn3`` after it, with the ReLU)
runs on the sparse kernels, the pre-activation BNs and selections in torch.

Cost measured on the 2-core development machine (torch 2.13 CPU, 2 threads, batch 64 of
32x32, forward + backward, median of 5; machine shared, so +-20 %): see
``docs/architecture.md`` (prunecal.models).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ChannelSelection", "PreActBasicBlock", "PreActBottleneck", "PreResNetCifar",
           "preresnet_cifar"]


class ChannelSelection(nn.Module):
    """Keeps the channels of its input whose entry in ``indexes`` is non-zero.

    ``indexes``: a float buffer of length ``num_channels`` (1 = keep, 0 = drop; all ones at
    construction, so the layer is the identity up to a copy). Input ``(N, num_channels, H, W)``
    -> ``(N, k, H, W)`` with ``k`` = non-zero entries, in channel order. A buffer (not a
    parameter as in network slimming's code): it is never trained, but is saved and loaded
    with the state dict under the same key (``...select.indexes``).
    """

    def __init__(self, num_channels: int) -> None:
        super().__init__()
        if isinstance(num_channels, bool) or not isinstance(num_channels, int) or num_channels < 1:
            raise ValueError(f"num_channels must be an int >= 1, got {num_channels!r}")
        self.register_buffer("indexes", torch.ones(num_channels))

    @property
    def num_channels(self) -> int:
        """Channels of the input."""
        return int(self.indexes.numel())

    def selected(self) -> torch.Tensor:
        """Sorted ``int64`` indices of the kept input channels."""
        return torch.nonzero(self.indexes).flatten()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.index_select(1, torch.nonzero(self.indexes).flatten())

    def extra_repr(self) -> str:
        return f"{self.num_channels}, selected={int((self.indexes != 0).sum())}"


def _downsample(in_planes: int, out_planes: int, stride: int) -> nn.Sequential | None:
    if stride == 1 and in_planes == out_planes:
        return None
    return nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False))


class PreActBasicBlock(nn.Module):
    """``bn1 -> select -> ReLU -> conv3x3 -> bn2 -> ReLU -> conv3x3`` + shortcut.

    Input ``(N, in_planes, H, W)`` -> ``(N, planes, H/stride, W/stride)``.
    """

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.select = ChannelSelection(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.downsample = _downsample(in_planes, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.select(self.bn1(x))))
        out = self.conv2(F.relu(self.bn2(out)))
        return out + (x if self.downsample is None else self.downsample(x))


class PreActBottleneck(nn.Module):
    """``bn1 -> select -> ReLU -> conv1x1 -> bn2 -> ReLU -> conv3x3 -> bn3 -> ReLU -> conv1x1``
    + shortcut. Input ``(N, in_planes, H, W)`` -> ``(N, 4 * planes, H/stride, W/stride)``.
    """

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.select = ChannelSelection(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.downsample = _downsample(in_planes, planes * 4, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.select(self.bn1(x))))
        out = self.conv2(F.relu(self.bn2(out)))
        out = self.conv3(F.relu(self.bn3(out)))
        return out + (x if self.downsample is None else self.downsample(x))


_BLOCKS = {"basic": PreActBasicBlock, "bottleneck": PreActBottleneck}


class PreResNetCifar(nn.Module):
    """Pre-activation ResNet for CIFAR: three stages of ``blocks_per_stage`` blocks (16/32/64
    planes; a bottleneck's output is 4x planes).

    Args:
        blocks_per_stage: ``n`` (depth = 6n+2 for ``basic``, 9n+2 for ``bottleneck``).
        block: ``"basic"`` or ``"bottleneck"``.
        num_classes: logits (default 10).
        bn_weight_init: initial ``gamma`` of every BN (network slimming starts at 0.5).
        width_mult: multiplies the stem width and every stage's planes (default 1.0;
            e.g. 0.25 for quick tests).

    Input ``(N, 3, H, W)`` normalised float32 -> logits ``(N, num_classes)``.
    """

    def __init__(self, blocks_per_stage: int, block: str = "bottleneck", num_classes: int = 10,
                 in_channels: int = 3, bn_weight_init: float = 1.0, width_mult: float = 1.0) -> None:
        super().__init__()
        if isinstance(width_mult, bool) or not isinstance(width_mult, (int, float)) or not width_mult > 0:
            raise ValueError(f"width_mult must be > 0, got {width_mult!r}")
        if isinstance(blocks_per_stage, bool) or not isinstance(blocks_per_stage, int) or blocks_per_stage < 1:
            raise ValueError(f"blocks_per_stage must be an int >= 1, got {blocks_per_stage!r}")
        if block not in _BLOCKS:
            raise ValueError(f"block must be one of {', '.join(map(repr, _BLOCKS))}, got {block!r}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
        cls = _BLOCKS[block]
        self.block = block
        w = [max(1, int(round(p * width_mult))) for p in (16, 32, 64)]
        self.conv1 = nn.Conv2d(in_channels, w[0], 3, padding=1, bias=False)
        c = w[0]
        stages = []
        for planes, stride in ((w[0], 1), (w[1], 2), (w[2], 2)):
            layers = []
            for i in range(blocks_per_stage):
                layers.append(cls(c, planes, stride if i == 0 else 1))
                c = planes * cls.expansion
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3 = stages
        self.bn = nn.BatchNorm2d(c)
        self.select = ChannelSelection(c)
        self.fc = nn.Linear(c, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, float(bn_weight_init))
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        out = F.relu(self.select(self.bn(out)))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


def preresnet_cifar(depth: int, num_classes: int = 10, *, block: str = "bottleneck",
                    bn_weight_init: float = 1.0, width_mult: float = 1.0) -> PreResNetCifar:
    """Build PreResNet-``depth``: ``block="bottleneck"`` needs depth = 9n+2 (110: n=12,
    164: n=18), ``"basic"`` depth = 6n+2 (110: n=18)."""
    per = {"basic": 6, "bottleneck": 9}.get(block)
    if per is None:
        raise ValueError(f"block must be one of {', '.join(map(repr, _BLOCKS))}, got {block!r}")
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < per + 2 or (depth - 2) % per:
        raise ValueError(f"depth must be {per}n+2 for {block} blocks (e.g. "
                         f"{'110, 164' if block == 'bottleneck' else '56, 110'}), got {depth!r}")
    return PreResNetCifar((depth - 2) // per, block, num_classes=num_classes,
                          bn_weight_init=bn_weight_init, width_mult=width_mult)
