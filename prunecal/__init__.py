"""prunecal: what post-hoc pruning does to a CNN's calibration and corruption robustness,
and how fast the pruned network really runs on a CPU.

Sub-packages are imported lazily, so ``import prunecal`` is cheap:

- ``prunecal.models``      model registry (``create``, ``available``)
- ``prunecal.data``        CIFAR-10 / CIFAR-10-C loaders
- ``prunecal.prune``       post-hoc pruning methods (``prune``)
- ``prunecal.metrics``     calibration, selective prediction and robustness metrics
- ``prunecal.calibrate``   temperature scaling
- ``prunecal.corruptions`` the CIFAR-10-C corruption suite (``corrupt``)
- ``prunecal.sparse``      sparse formats, native kernels and ``sparsify``
- ``prunecal.eval``        the ``prunecal-eval`` sweep, its store and report
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_SUBMODULES = {
    "models", "data", "prune", "metrics", "calibrate", "corruptions", "sparse", "eval", "registry",
}


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name == "sparsify":
        return importlib.import_module(f"{__name__}.sparse").sparsify
    raise AttributeError(f"module 'prunecal' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _SUBMODULES | {"sparsify"})
