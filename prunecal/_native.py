"""Loading the native core ``prunecal._C`` and its thread default.

``load_native()`` imports the extension once and raises an ``ImportError`` that says how to
build it when it is missing. ``default_threads(threads)`` maps ``None`` to
``torch.get_num_threads()`` (so the sparse kernels use as many threads as torch would).
"""
from __future__ import annotations

import functools
from types import ModuleType
from typing import Optional


@functools.lru_cache(maxsize=None)
def load_native() -> ModuleType:
    """The ``prunecal._C`` extension module."""
    try:
        from prunecal import _C
    except ImportError as e:  # pragma: no cover - depends on the build
        raise ImportError(
            "prunecal._C (the native sparse core) is not built: run `pip install .` or, in a "
            f"source checkout, `scripts/dev_build.sh` ({e})"
        ) from e
    return _C


def default_threads(threads: Optional[int]) -> int:
    """``threads`` validated, or ``torch.get_num_threads()`` when ``None``."""
    if type(threads) is int and threads > 0:  # the common case first (called on every layer call)
        return threads
    if threads is None:
        import torch

        return max(1, int(torch.get_num_threads()))
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads: expected a positive int or None, got {threads!r}")
    return threads


def cpu_features() -> dict:
    """What the native core sees: ``{'avx2_fma': bool, 'avx2_compiled': bool, 'neon_compiled':
    bool, 'isa': str}`` (``isa``: the default kernel set, ``generic`` when ``PRUNECAL_ISA=generic``;
    the whole path decision: ``prunecal._C.isa_config()``)."""
    return dict(load_native().cpu_features())


__all__ = ["load_native", "default_threads", "cpu_features"]
