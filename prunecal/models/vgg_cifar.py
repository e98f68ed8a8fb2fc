"""VGG with batch norm for 32x32 inputs (Simonyan & Zisserman 2015, CIFAR variant).

``features`` is one flat ``nn.Sequential`` of ``Conv2d(3x3, bias=False)-BatchNorm2d-ReLU``
triples and ``MaxPool2d(2)``; ``classifier`` is a single ``Linear(C_last, num_classes)``
after global average pooling (or, ``classifier="mlp"``, ``Linear(C_last, 512)-BatchNorm1d-
ReLU-Linear(512, num_classes)``). A structured pruner may change any conv's output
channels together with its BN and the next conv's (or the classifier's) inputs.

The registered names and the study prunecal grew from (Mitra, Schwalbe & Klein 2024, which
used the CIFAR models of Liu et al.'s network-slimming / "Rethinking the Value of Network
Pruning" code):

- ``vgg19_bn``: network slimming's VGG-19 (:data:`PAPER_CONFIGS`: four max-pools, no pool
  after the last conv, so the 2x2 map of a 32x32 image is average-pooled, then
  ``Linear(512, classes)``); 20.04 M parameters, as published. Used by the paper for
  BN-channel and global magnitude pruning.
- ``vgg16_bn_l1``: the VGG-16 of L1-filter pruning (Li et al. 2017) in that code: the same
  layout with 13 convs and the ``mlp`` classifier; 15.0 M parameters (Li et al.: 1.5e7).
- ``vgg11_bn``, ``vgg13_bn``, ``vgg16_bn``: :data:`CONFIGS` (five max-pools, the last one
  after the last conv; ``vgg16_bn`` 14.7 M parameters). ``vgg16_bn`` is *not* the paper's
  VGG-16 (that is ``vgg16_bn_l1``).

The final pooling is global (``AdaptiveAvgPool2d(1)``): on 32x32 inputs the same as the
reference code's ``AvgPool2d(2)`` on the 2x2 map, and it keeps other input sizes working.
All of them run as one native plan (:func:`prunecal.sparse.plan.compile_plan`, the door
:func:`prunecal.sparse.sparsify` takes; ``vgg16_bn_l1``'s ``BatchNorm1d`` is folded into the
linear layer before it). Measured costs: ``docs/architecture.md`` (prunecal.models).
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["CONFIGS", "PAPER_CONFIGS", "VGGCifar", "vgg_cifar"]

CONFIGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
              512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}

PAPER_CONFIGS: dict[str, list[int | str]] = {
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
              512, 512, 512, 512, "M", 512, 512, 512, 512],
}
"""Network slimming's / L1-filter pruning's CIFAR layouts: no max-pool after the last conv."""


def _scale(c: int, width_mult: float) -> int:
    return max(1, int(round(c * width_mult)))


class VGGCifar(nn.Module):
    """VGG-BN for CIFAR. Input ``(N, 3, 32, 32)`` -> logits ``(N, num_classes)``.

    Args:
        config: a key of :data:`CONFIGS` or a list of channel counts and ``"M"`` (max-pool).
        num_classes: output classes (default 10).
        width_mult: multiplies every channel count (default 1.0; e.g. 0.125 for tests).
        classifier: ``"linear"`` (default) or ``"mlp"`` (``Linear-BatchNorm1d-ReLU-Linear``
            with a hidden width of 512 times ``width_mult``).
    """

    def __init__(self, config: str | list[int | str], num_classes: int = 10,
                 width_mult: float = 1.0, in_channels: int = 3, classifier: str = "linear") -> None:
        super().__init__()
        if not width_mult > 0:
            raise ValueError(f"width_mult must be > 0, got {width_mult}")
        if classifier not in ("linear", "mlp"):
            raise ValueError(f"classifier must be 'linear' or 'mlp', got {classifier!r}")
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
        if classifier == "mlp":
            h = _scale(512, width_mult)
            self.classifier = nn.Sequential(nn.Linear(c, h), nn.BatchNorm1d(h), nn.ReLU(inplace=True),
                                            nn.Linear(h, num_classes))
        else:
            self.classifier = nn.Linear(c, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


def vgg_cifar(name: str, num_classes: int = 10, *, width_mult: float = 1.0, paper: bool = False,
              classifier: str = "linear") -> VGGCifar:
    """Build ``vgg11``/``vgg13``/``vgg16``/``vgg19`` (with BN) for CIFAR; ``paper=True``: the
    :data:`PAPER_CONFIGS` layout (``vgg16``/``vgg19``)."""
    table = PAPER_CONFIGS if paper else CONFIGS
    if name not in table:
        raise ValueError(f"unknown VGG config {name!r}; available: {', '.join(table)}")
    return VGGCifar(list(table[name]), num_classes=num_classes, width_mult=width_mult,
                    classifier=classifier)
