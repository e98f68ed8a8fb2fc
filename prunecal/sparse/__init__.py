"""Sparse weight formats, native sparse kernels and ``sparsify``.

- ``CSRWeight``, ``BSRWeight`` (``prunecal.sparse.formats``): pruned conv/linear weights.
- ``sparse_conv2d``, ``sparse_linear`` (``prunecal.sparse.ops``): the native kernels.
- ``sparsify`` (``prunecal.sparse.sparsify``): swap a torch model's layers for sparse ones.
- ``trainable`` (``prunecal.sparse.train``): fine-tune a pruned model through the sparse kernels.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CSRWeight": "formats",
    "BSRWeight": "formats",
    "load_weight": "formats",
    "sparse_conv2d": "ops",
    "sparse_linear": "ops",
    "compile_plan": "plan",
    "PlanModule": "plan",
    "PlanUnsupported": "plan",
    "trainable": "train",
    "SparseTrainable": "train",
}

# Imported eagerly (torch only, no native code): the submodule ``sparsify`` has the same name
# as the function, and a lazy export would be shadowed by the submodule once it is imported.
from .sparsify import BACKENDS, SparsifyReport, sparsify  # noqa: E402


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'prunecal.sparse' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
