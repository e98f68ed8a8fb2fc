"""CIFAR-10-C (Hendrycks & Dietterich 2019) from its official layout, memory-mapped.

Layout: a folder with ``<corruption>.npy`` uint8 ``(5n, 32, 32, 3)`` (severities 1..5
stacked, ``n`` = 10,000 in the release) and ``labels.npy`` ``(5n,)``. Severity ``k`` is
rows ``(k-1)*n .. k*n``; only those rows are read from disk.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from .cifar10 import _check_magic, _labels, _select

__all__ = ["BENCHMARK_CORRUPTIONS", "EXTRA_CORRUPTIONS", "available_corruptions", "load_cifar10c"]

BENCHMARK_CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
    "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
    "jpeg_compression",
)
"""The 15 benchmark corruptions of CIFAR-10-C."""
EXTRA_CORRUPTIONS: tuple[str, ...] = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
"""The 4 held-out corruptions shipped with CIFAR-10-C."""


def available_corruptions(path: str | os.PathLike) -> list[str]:
    """Corruption names with a ``.npy`` file in the CIFAR-10-C folder ``path``."""
    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(f"no CIFAR-10-C folder at {p} (expected <corruption>.npy and labels.npy)")
    return sorted(f.stem for f in p.glob("*.npy") if f.stem != "labels")


def _mmap(path: Path) -> np.ndarray:
    _check_magic(path, "npy")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - bad header, truncated data, pickled object arrays
        raise ValueError(f"could not read CIFAR-10-C file {path}: {type(e).__name__}: {e}") from None


def load_cifar10c(path: str | os.PathLike, corruption: str, severity: int, *,
                  limit: int | None = None,
                  indices: Sequence[int] | np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of one corruption at one severity.

    Args:
        path: the CIFAR-10-C folder.
        corruption: e.g. ``"gaussian_noise"`` (a ``<corruption>.npy`` in ``path``).
        severity: 1..5.
        limit, indices: take a slice of the ``n`` images of that severity (as in
            :func:`prunecal.data.load_cifar10`).

    Returns:
        ``images`` uint8 ``(n, 32, 32, 3)`` and ``labels`` int64 ``(n,)`` (copies, not memory maps).

    Raises:
        FileNotFoundError: folder, ``<corruption>.npy`` or ``labels.npy`` missing
            (lists the corruptions present).
        ValueError: bad ``severity``, shapes/dtypes that are not the official layout,
            a truncated or corrupt file.
    """
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or not 1 <= severity <= 5:
        raise ValueError(f"severity must be an int in 1..5, got {severity!r}")
    if not isinstance(corruption, str) or not corruption or "/" in corruption or "\\" in corruption:
        raise ValueError(f"corruption must be a plain name such as 'gaussian_noise', got {corruption!r}")
    p = Path(path)
    present = available_corruptions(p)
    f = p / f"{corruption}.npy"
    if not f.is_file():
        raise FileNotFoundError(f"no CIFAR-10-C file {f}; corruptions present in {p}: "
                                f"{', '.join(present) or 'none'}")
    lf = p / "labels.npy"
    if not lf.is_file():
        raise FileNotFoundError(f"no CIFAR-10-C labels file {lf}")
    x, y = _mmap(f), _mmap(lf)
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (32, 32, 3):
        raise ValueError(f"CIFAR-10-C file {f}: expected uint8 (5n, 32, 32, 3), got {x.dtype} {x.shape}")
    if x.shape[0] == 0 or x.shape[0] % 5:
        raise ValueError(f"CIFAR-10-C file {f}: {x.shape[0]} images is not 5 severities x n")
    if y.ndim != 1 or y.shape[0] != x.shape[0] or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"CIFAR-10-C labels {lf}: expected integers ({x.shape[0]},) to match {f.name}, "
                         f"got {y.dtype} {y.shape}")
    n = x.shape[0] // 5
    lo = (int(severity) - 1) * n
    sel = _select(n, indices, limit)
    rows = np.arange(lo, lo + n)[sel]
    if isinstance(sel, slice):
        images = np.array(x[rows[0]:rows[-1] + 1] if len(rows) else x[:0])
    else:
        images = np.array(x[rows])
    labels = _labels(lf, np.array(y[rows]), "CIFAR-10-C labels")
    return images, labels
