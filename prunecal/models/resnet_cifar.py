"""CIFAR ResNets (He et al. 2016, Sec. 4.2) with option-A (parameter-free) shortcuts.

State-dict keys match the widely used pretrained checkpoints (``conv1``, ``bn1``,
``layer{1,2,3}.{i}.{conv1,bn1,conv2,bn2}``, ``linear``), so
``/work/shared/data/weights/resnet20-12fca82f.th`` loads as is.

What a structured pruner may change (the forward pass reads every channel count
from the tensors or from the attributes below, never from constants):

- ``block.conv1`` output channels with matching ``block.bn1`` and ``block.conv2``
  input channels: always safe (the block's internal width).
- ``block.conv2`` / ``block.bn2`` output channels: then the residual sum needs the
  shortcut to produce the same channels. For an :class:`OptionAShortcut` set
  ``shortcut.out_planes`` to the new count (the zero padding is then derived at run
  time from ``out_planes - x.shape[1]``, split evenly, or from ``shortcut.pad`` when a
  pruner sets an explicit ``(left, right)``); for an identity shortcut the block
  input must have the same channels, i.e. prune the whole stage consistently.
- ``model.linear`` input features must equal the channels of ``layer3``'s output.

``resnet110`` (n = 18, 1.73 M parameters) is the seed paper's ResNet-110 for L1-filter
pruning. The code that paper used (Liu et al.'s L1-norm-pruning models) builds its option-A
shortcut as a 2x2 average pool with the zero channels appended after the input's; this one
subsamples and pads both sides (as the published ResNet-20..56 checkpoints need). Same
parameters and cost; checkpoints of the two do not swap. Runs as one native plan
(:func:`prunecal.sparse.plan.compile_plan`); per-batch cost: ``docs/architecture.md``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["OptionAShortcut", "BasicBlock", "ResNetCifar", "resnet_cifar", "DEPTHS"]

DEPTHS: dict[int, int] = {20: 3, 32: 5, 44: 7, 56: 9}
"""Depth -> blocks per stage (depth = 6n + 2)."""


class OptionAShortcut(nn.Module):
    """Parameter-free shortcut: identity, or subsample + zero-pad channels (option A).

    Args:
        in_planes: channels of the block input.
        out_planes: channels the residual branch produces.
        stride: spatial subsampling (``x[:, :, ::stride, ::stride]``).
        pad: explicit ``(left, right)`` zero channels; ``None`` (default) derives
            them at run time from ``out_planes - x.shape[1]``, split evenly
            (``planes // 4`` each side for the original 16->32 and 32->64 blocks).

    Input ``(N, C, H, W)`` -> ``(N, out_planes, ceil(H/stride), ceil(W/stride))``.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int = 1,
                 pad: tuple[int, int] | None = None) -> None:
        super().__init__()
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        self.in_planes = int(in_planes)
        self.out_planes = int(out_planes)
        self.stride = int(stride)
        self.pad = None if pad is None else (int(pad[0]), int(pad[1]))

    @property
    def is_identity(self) -> bool:
        """True when the shortcut passes its input through unchanged."""
        return self.stride == 1 and self.in_planes == self.out_planes and self.pad is None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.is_identity:
            return x
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.pad is not None:
            left, right = self.pad
        else:
            total = self.out_planes - x.shape[1]
            left = total // 2
            right = total - left
        return F.pad(x, [0, 0, 0, 0, left, right])

    def extra_repr(self) -> str:
        s = f"{self.in_planes}, {self.out_planes}, stride={self.stride}"
        return s + (f", pad={self.pad}" if self.pad is not None else "")


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN (+ option-A shortcut), then ReLU.

    Attributes ``conv1, bn1, conv2, bn2, shortcut`` are part of the contract with
    ``prunecal.prune``. Input ``(N, in_planes, H, W)`` -> ``(N, planes, H/stride, W/stride)``.
    """

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = OptionAShortcut(in_planes, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNetCifar(nn.Module):
    """CIFAR ResNet-(6n+2): stages of ``n`` blocks with 16/32/64 channels.

    Input ``(N, 3, H, W)`` normalised float32 (32x32 for CIFAR) -> logits ``(N, num_classes)``.
    """

    def __init__(self, blocks_per_stage: int, num_classes: int = 10, in_channels: int = 3,
                 widths: tuple[int, int, int] = (16, 32, 64)) -> None:
        super().__init__()
        if blocks_per_stage < 1:
            raise ValueError(f"blocks_per_stage must be >= 1, got {blocks_per_stage}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        w1, w2, w3 = (int(w) for w in widths)
        self.conv1 = nn.Conv2d(in_channels, w1, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(w1)
        self.layer1 = self._stage(w1, w1, blocks_per_stage, 1)
        self.layer2 = self._stage(w1, w2, blocks_per_stage, 2)
        self.layer3 = self._stage(w2, w3, blocks_per_stage, 2)
        self.linear = nn.Linear(w3, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    @staticmethod
    def _stage(in_planes: int, planes: int, n: int, stride: int) -> nn.Sequential:
        layers = []
        for i in range(n):
            layers.append(BasicBlock(in_planes if i == 0 else planes, planes, stride if i == 0 else 1))
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def resnet_cifar(depth: int, num_classes: int = 10, **kw) -> ResNetCifar:
    """Build ResNet-``depth`` (20, 32, 44, 56, or any 6n+2) for CIFAR."""
    if depth in DEPTHS:
        n = DEPTHS[depth]
    elif isinstance(depth, int) and depth >= 8 and (depth - 2) % 6 == 0:
        n = (depth - 2) // 6
    else:
        raise ValueError(f"depth must be 6n+2 (e.g. 20, 32, 44, 56), got {depth!r}")
    return ResNetCifar(n, num_classes=num_classes, **kw)
