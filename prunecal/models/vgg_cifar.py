"""VGG with batch norm for 32x32 inputs (Simonyan & Zisserman 2015, CIFAR variant).

``features`` is one flat ``nn.Sequential`` of ``Conv2d(3x3, bias=False)-BatchNorm2d-ReLU``
triples and ``MaxPool2d(2)``; ``classifier`` is a single ``Linear(C_last, num_classes)``
after global average pooling. A structured pruner may change any conv's output
channels together with its BN and the next conv's (or the classifier's) inputs.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["CONFIGS", "VGGCifar", "vgg_cifar"]

CONFIGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
              512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


def _scale(c: int, width_mult: float) -> int:
    return max(1, int(round(c * width_mult)))


class VGGCifar(nn.Module):
    """VGG-BN for CIFAR. Input ``(N, 3, 32, 32)`` -> logits ``(N, num_classes)``.

    Args:
        config: a key of :data:`CONFIGS` or a list of channel counts and ``"M"`` (max-pool).
        num_classes: output classes (default 10).
        width_mult: multiplies every channel count (default 1.0; e.g. 0.125 for tests).
    """

    def __init__(self, config: str | list[int | str], num_classes: int = 10,
                 width_mult: float = 1.0, in_channels: int = 3) -> None:
        super().__init__()
        if not width_mult > 0:
            raise ValueError(f"width_mult must be > 0, got {width_mult}")
        cfg = CONFIGS[config] if isinstance(config, str) else list(config)
        layers: list[nn.Module] = []
        c = in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                out = _scale(int(v), width_mult)
                layers += [nn.Conv2d(c, out, 3, padding=1, bias=False), nn.BatchNorm2d(out),
                           nn.ReLU(inplace=True)]
                c = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


def vgg_cifar(name: str, num_classes: int = 10, *, width_mult: float = 1.0) -> VGGCifar:
    """Build ``vgg11``/``vgg13``/``vgg16``/``vgg19`` (with BN) for CIFAR."""
    if name not in CONFIGS:
        raise ValueError(f"unknown VGG config {name!r}; available: {', '.join(CONFIGS)}")
    return VGGCifar(name, num_classes=num_classes, width_mult=width_mult)
