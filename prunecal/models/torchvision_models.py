"""torchvision architectures as ``tv_<name>`` (optional: ``pip install prunecal[vision]``).

Only architectures are built (``weights=None`` in torchvision: nothing downloads);
pass a checkpoint path to :func:`prunecal.models.create` to load weights.
"""
from __future__ import annotations

import importlib
import importlib.util

from torch import nn

__all__ = ["TV_NAMES", "has_torchvision", "MissingDependencyError", "build_torchvision"]

TV_NAMES: tuple[str, ...] = (
    "resnet18", "resnet34", "resnet50", "resnet101", "wide_resnet50_2",
    "vgg11_bn", "vgg16_bn", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large",
    "efficientnet_b0", "shufflenet_v2_x1_0", "squeezenet1_1", "densenet121", "regnet_y_400mf",
    "convnext_tiny",
)
"""torchvision model names registered as ``tv_<name>`` when torchvision is installed."""


class MissingDependencyError(ImportError):
    """An optional dependency is needed; the message names the pip extra."""


def has_torchvision() -> bool:
    """True when torchvision can be imported (checked without importing it)."""
    return importlib.util.find_spec("torchvision") is not None


def build_torchvision(name: str, num_classes: int = 10, **kw) -> nn.Module:
    """torchvision's ``name`` architecture (random init) with ``num_classes`` outputs."""
    try:
        tvm = importlib.import_module("torchvision.models")
    except ImportError as e:
        raise MissingDependencyError(
            f"model 'tv_{name}' needs torchvision: pip install 'prunecal[vision]' ({e})"
        ) from None
    return tvm.get_model(name, weights=None, num_classes=num_classes, **kw)
