"""CIFAR-10 / CIFAR-10-C loaders and tensor conversion (images stay uint8 NHWC until the last moment).

>>> from prunecal import data, models
>>> x, y = data.load_cifar10("../shared/data/cifar10/exact_subset.npz")
>>> s = models.spec("resnet20")
>>> for xb, yb in data.iterate_batches(x, y, 256, s.mean, s.std): ...
"""
from __future__ import annotations

from .batching import iterate_batches
from .cifar10 import CLASS_NAMES, FORMATS, load_cifar10, load_class_names, resolve_cifar10
from .cifar10c import BENCHMARK_CORRUPTIONS, EXTRA_CORRUPTIONS, available_corruptions, load_cifar10c
from .transforms import check_images, random_crop_flip, to_tensor

__all__ = [
    "load_cifar10", "load_class_names", "resolve_cifar10", "CLASS_NAMES", "FORMATS",
    "load_cifar10c", "available_corruptions", "BENCHMARK_CORRUPTIONS", "EXTRA_CORRUPTIONS",
    "to_tensor", "iterate_batches", "random_crop_flip", "check_images",
]
