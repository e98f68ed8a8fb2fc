"""Model registry: CIFAR ResNets, pre-activation ResNets, VGG-BN, MobileNetV2 and optional
torchvision models.

The CIFAR architectures of the study prunecal grew from (Mitra, Schwalbe & Klein 2024):
``resnet110`` (L1-filter), ``vgg16_bn_l1`` (L1-filter), ``vgg19_bn`` (BN-channel and global
magnitude), ``preresnet110`` (global magnitude), ``preresnet164`` (BN-channel, with network
slimming's channel selection); see :mod:`.preresnet_cifar` and :mod:`.vgg_cifar`.

>>> from prunecal import models
>>> net = models.create("resnet20", weights="../shared/data/weights/resnet20-12fca82f.th")
>>> s = models.spec("resnet20")   # normalisation and input size belong to the model
>>> x = prunecal.data.to_tensor(images, s.mean, s.std)

Add a model in one place::

    @models.register_model("my_net", family="custom")
    def my_net(num_classes=10, **kw): ...
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Callable

from torch import nn

from prunecal.registry import Registry, UnknownNameError

from .checkpoint import file_sha256, load_checkpoint, read_state_dict, save_checkpoint
from .mobilenetv2_cifar import MobileNetV2Cifar
from .preresnet_cifar import ChannelSelection, PreResNetCifar, preresnet_cifar
from .resnet_cifar import BasicBlock, OptionAShortcut, ResNetCifar, resnet_cifar
from .torchvision_models import TV_NAMES, MissingDependencyError, build_torchvision, has_torchvision
from .vgg_cifar import VGGCifar, vgg_cifar

__all__ = [
    "MODELS", "ModelSpec", "create", "available", "spec", "register_model",
    "load_checkpoint", "save_checkpoint", "read_state_dict", "file_sha256",
    "ResNetCifar", "BasicBlock", "OptionAShortcut", "VGGCifar", "MobileNetV2Cifar",
    "PreResNetCifar", "ChannelSelection",
    "MissingDependencyError", "UnknownNameError", "CIFAR_MEAN", "CIFAR_STD", "IMAGENET_MEAN", "IMAGENET_STD",
]

# The pretrained CIFAR ResNets were trained with ImageNet statistics; the other CIFAR
# models use the same, so one preprocessing serves every CIFAR model here.
CIFAR_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
CIFAR_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelSpec:
    """What a model expects as input.

    Attributes:
        name: registry name.
        num_classes: output logits.
        mean, std: per-channel normalisation of RGB in [0, 1] (``to_tensor``).
        input_size: ``(C, H, W)`` of one input image.
        family: ``"resnet_cifar"``, ``"preresnet_cifar"``, ``"vgg_cifar"``,
            ``"mobilenetv2_cifar"``, ``"torchvision"`` or ``"custom"``.
    """

    name: str
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_size: tuple[int, int, int]
    family: str


MODELS: Registry[Callable[..., nn.Module]] = Registry("model")
_SPECS: dict[str, ModelSpec] = {}


def register_model(name: str, *, family: str = "custom", mean: tuple[float, ...] = CIFAR_MEAN,
                   std: tuple[float, ...] = CIFAR_STD, input_size: tuple[int, int, int] = (3, 32, 32),
                   overwrite: bool = False):
    """Decorator registering a builder ``fn(num_classes=10, **kw) -> nn.Module`` and its spec."""

    def add(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        MODELS.register(name, fn, overwrite=overwrite)
        _SPECS[name] = ModelSpec(name, 10, tuple(mean), tuple(std), tuple(input_size), family)
        return fn

    return add


def _tv_required(name: str) -> None:
    if name.startswith("tv_") and name not in MODELS and not has_torchvision():
        raise MissingDependencyError(
            f"model {name!r} needs torchvision, which is not installed: pip install 'prunecal[vision]'"
        )


def available() -> list[str]:
    """Registered model names (``tv_*`` only when torchvision is installed)."""
    return MODELS.names()


def spec(name: str, *, num_classes: int = 10) -> ModelSpec:
    """The :class:`ModelSpec` of model ``name`` (for a model with ``num_classes`` outputs)."""
    _tv_required(name)
    MODELS.get(name)  # UnknownNameError listing the names
    return replace(_SPECS.get(name) or ModelSpec(name, 10, CIFAR_MEAN, CIFAR_STD, (3, 32, 32), "custom"),
                   num_classes=int(num_classes))


def create(name: str, weights: str | os.PathLike | None = None, *, num_classes: int = 10,
           **kw) -> nn.Module:
    """Build model ``name`` in eval mode, optionally loading the checkpoint ``weights``.

    Args:
        name: a name from :func:`available`.
        weights: path of a checkpoint (raw state dict, ``{'state_dict': ...}`` or
            ``{'model': ...}``; ``module.`` prefixes stripped). ``None``: random init.
        num_classes: output logits (default 10).
        **kw: builder options, e.g. ``width_mult`` for ``vgg*``/``mobilenetv2``.

    Raises:
        UnknownNameError: unknown ``name`` (lists the valid names).
        MissingDependencyError: ``tv_*`` without torchvision.
        FileNotFoundError / ValueError: see :func:`load_checkpoint`.
    """
    _tv_required(name)
    builder = MODELS.get(name)
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    model = builder(num_classes=num_classes, **kw)
    if weights is not None:
        load_checkpoint(model, weights)
    return model.eval()


def _register_builtins() -> None:
    for depth in (20, 32, 44, 56, 110):
        register_model(f"resnet{depth}", family="resnet_cifar")(
            lambda num_classes=10, _d=depth, **kw: resnet_cifar(_d, num_classes, **kw))
    for cfg in ("vgg11", "vgg13", "vgg16"):
        register_model(f"{cfg}_bn", family="vgg_cifar")(
            lambda num_classes=10, _c=cfg, **kw: vgg_cifar(_c, num_classes, **kw))
    # The paper's VGGs: network slimming's VGG-19 and L1-filter pruning's VGG-16.
    register_model("vgg19_bn", family="vgg_cifar")(
        lambda num_classes=10, **kw: vgg_cifar("vgg19", num_classes, paper=True, **kw))
    register_model("vgg16_bn_l1", family="vgg_cifar")(
        lambda num_classes=10, **kw: vgg_cifar("vgg16", num_classes, paper=True, classifier="mlp", **kw))
    # The paper's PreResNets: 110 (bottleneck, n=12; block="basic": n=18) and 164 (bottleneck,
    # network slimming's model and its BN initialisation 0.5).
    register_model("preresnet110", family="preresnet_cifar")(
        lambda num_classes=10, **kw: preresnet_cifar(110, num_classes, **kw))
    register_model("preresnet164", family="preresnet_cifar")(
        lambda num_classes=10, **kw: preresnet_cifar(164, num_classes, **{"bn_weight_init": 0.5, **kw}))
    register_model("mobilenetv2", family="mobilenetv2_cifar")(
        lambda num_classes=10, **kw: MobileNetV2Cifar(num_classes=num_classes, **kw))
    if has_torchvision():
        for tv in TV_NAMES:
            register_model(f"tv_{tv}", family="torchvision", mean=IMAGENET_MEAN, std=IMAGENET_STD,
                           input_size=(3, 224, 224))(
                lambda num_classes=10, _n=tv, **kw: build_torchvision(_n, num_classes, **kw))


_register_builtins()
