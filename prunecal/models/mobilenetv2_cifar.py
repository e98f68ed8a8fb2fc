"""MobileNetV2 (Sandler et al. 2018) for 32x32 inputs.

CIFAR stride configuration: the stem conv has stride 1 and the second bottleneck
stage stride 1 (ImageNet: 2 and 2), so a 32x32 image reaches the head at 4x4.
Blocks expose ``conv1 bn1`` (1x1 expand, absent when expansion is 1), ``conv2 bn2``
(3x3 depthwise), ``conv3 bn3`` (1x1 linear projection) and ``use_residual``.
A structured pruner may change a block's hidden (expanded) channels: ``conv1``
outputs, ``bn1``, ``conv2``/``bn2`` (depthwise: ``groups`` = channels) and ``conv3`` inputs.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["InvertedResidual", "MobileNetV2Cifar", "CIFAR_CONFIG"]

# (expansion t, output channels c, blocks n, first stride s)
CIFAR_CONFIG: list[tuple[int, int, int, int]] = [
    (1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2),
    (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1),
]


def make_divisible(v: float, divisor: int = 8) -> int:
    """Round ``v`` to a multiple of ``divisor``, not below 90 % of ``v`` (as in the paper's code)."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new < 0.9 * v:
        new += divisor
    return new


class InvertedResidual(nn.Module):
    """1x1 expand - 3x3 depthwise - 1x1 project (ReLU6 after the first two), residual when shapes match."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_planes * expansion
        self.stride = stride
        self.use_residual = stride == 1 and in_planes == out_planes
        if expansion != 1:
            self.conv1 = nn.Conv2d(in_planes, hidden, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(hidden)
        else:
            self.conv1 = None
            self.bn1 = None
        self.conv2 = nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, bias=False)
        self.bn2 = nn.BatchNorm2d(hidden)
        self.conv3 = nn.Conv2d(hidden, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        if self.conv1 is not None:
            out = F.relu6(self.bn1(self.conv1(out)))
        out = F.relu6(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return out + x if self.use_residual else out


class MobileNetV2Cifar(nn.Module):
    """MobileNetV2 for CIFAR. Input ``(N, 3, 32, 32)`` -> logits ``(N, num_classes)``.

    Args:
        num_classes: output classes (default 10).
        width_mult: channel multiplier (default 1.0, 2.24M parameters; 0.25 gives a
            small network for tests), channels rounded to multiples of 8.
        dropout: dropout before the classifier (default 0.0).
    """

    def __init__(self, num_classes: int = 10, width_mult: float = 1.0, dropout: float = 0.0,
                 in_channels: int = 3) -> None:
        super().__init__()
        if not width_mult > 0:
            raise ValueError(f"width_mult must be > 0, got {width_mult}")
        stem = make_divisible(32 * width_mult)
        self.last_channels = make_divisible(1280 * max(1.0, width_mult))
        self.conv1 = nn.Conv2d(in_channels, stem, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        blocks: list[nn.Module] = []
        c = stem
        for t, ch, n, s in CIFAR_CONFIG:
            out = make_divisible(ch * width_mult)
            for i in range(n):
                blocks.append(InvertedResidual(c, out, s if i == 0 else 1, t))
                c = out
        self.layers = nn.Sequential(*blocks)
        self.conv2 = nn.Conv2d(c, self.last_channels, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(self.last_channels)
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(self.last_channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu6(self.bn1(self.conv1(x)))
        out = self.layers(out)
        out = F.relu6(self.bn2(self.conv2(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(self.dropout(out))
