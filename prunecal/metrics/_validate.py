"""Input checking shared by the metric functions.

Every public metric converts its inputs with :func:`check_probs_labels` (or
:func:`check_logits_labels`): numpy arrays, torch tensors (any device, detached) and nested
lists are accepted; the result is ``float64`` probabilities ``(N, C)`` and ``int64`` labels
``(N,)``. Bad input raises ``ValueError`` (``TypeError`` for non-numeric objects) naming the
argument.
"""
from __future__ import annotations

from typing import Any

import numpy as np

ROW_SUM_ATOL = 1e-3
"""Probability rows must sum to 1 within this absolute tolerance."""
RANGE_ATOL = 1e-6
"""Probabilities may leave [0, 1] by this much (float32 rounding); they are clipped to [0, 1]."""


def to_numpy(x: Any, name: str) -> np.ndarray:
    """``x`` (numpy, torch tensor, list) as a numpy array; ``TypeError`` if impossible."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor without importing torch
        x = x.detach().cpu()
        if str(getattr(x, "dtype", "")) == "torch.bfloat16":
            x = x.float()
        x = x.numpy()
    try:
        arr = np.asarray(x)
    except Exception as exc:  # pragma: no cover - exotic objects
        raise TypeError(f"{name} must be array-like, got {type(x).__name__}") from exc
    if arr.dtype == object:
        raise TypeError(f"{name} must be a numeric array, got dtype=object")
    return arr


def check_labels(labels: Any, n: int | None = None, num_classes: int | None = None,
                 name: str = "labels") -> np.ndarray:
    """Labels as ``int64 (N,)``; floats are accepted only when integral."""
    y = to_numpy(labels, name)
    if y.ndim != 1:
        raise ValueError(f"{name} must have shape (N,), got shape {y.shape}")
    if y.dtype == np.bool_:
        y = y.astype(np.int64)
    if not (np.issubdtype(y.dtype, np.integer)):
        if not np.issubdtype(y.dtype, np.floating):
            raise TypeError(f"{name} must be integers, got dtype={y.dtype}")
        if not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
            raise ValueError(f"{name} must be integer class indices, got non-integer values")
    y = y.astype(np.int64)
    if n is not None and y.shape[0] != n:
        raise ValueError(f"length mismatch: {n} predictions but {y.shape[0]} {name}")
    if num_classes is not None and y.size and (y.min() < 0 or y.max() >= num_classes):
        bad = y[(y < 0) | (y >= num_classes)][:5].tolist()
        raise ValueError(f"{name} out of range [0, {num_classes}): e.g. {bad}")
    return y


def check_matrix(x: Any, name: str) -> np.ndarray:
    """A finite ``float64 (N, C)`` matrix with ``N >= 1`` and ``C >= 2``."""
    a = to_numpy(x, name)
    if a.ndim != 2:
        raise ValueError(f"{name} must have shape (N, C), got shape {a.shape}")
    if a.shape[0] == 0:
        raise ValueError(f"{name} is empty (N = 0)")
    if a.shape[1] < 2:
        raise ValueError(f"{name} must have at least 2 classes, got C = {a.shape[1]}")
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise TypeError(f"{name} must be a float array, got dtype={a.dtype}")
    a = a.astype(np.float64, copy=False)
    if not np.all(np.isfinite(a)):
        n_bad = int(np.sum(~np.isfinite(a).all(axis=1)))
        raise ValueError(f"{name} contains NaN or Inf ({n_bad} rows)")
    return a


def check_probs(probs: Any, name: str = "probs") -> np.ndarray:
    """Probabilities as ``float64 (N, C)``: finite, in [0, 1] (within :data:`RANGE_ATOL`, then
    clipped), rows summing to 1 within :data:`ROW_SUM_ATOL` (``1e-3``)."""
    p = check_matrix(probs, name)
    if p.min() < 0.0 or p.max() > 1.0:
        if p.min() >= -RANGE_ATOL and p.max() <= 1.0 + RANGE_ATOL:
            p = np.clip(p, 0.0, 1.0)
    if p.min() < 0.0 or p.max() > 1.0:
        raise ValueError(f"{name} must lie in [0, 1] (got min {p.min():.4g}, max {p.max():.4g}); "
                         "pass logits through softmax() or use the *_from_logits variant")
    dev = np.abs(p.sum(axis=1) - 1.0)
    if dev.max() > ROW_SUM_ATOL:
        raise ValueError(f"rows of {name} must sum to 1 (tolerance {ROW_SUM_ATOL}); "
                         f"row {int(dev.argmax())} sums to {p[int(dev.argmax())].sum():.6g}")
    return p


def check_logits(logits: Any, name: str = "logits") -> np.ndarray:
    """Logits as finite ``float64 (N, C)``."""
    return check_matrix(logits, name)


def check_probs_labels(probs: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(probs float64 (N, C), labels int64 (N,))`` after all checks."""
    p = check_probs(probs)
    return p, check_labels(labels, p.shape[0], p.shape[1])


def check_logits_labels(logits: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(logits float64 (N, C), labels int64 (N,))`` after all checks."""
    z = check_logits(logits)
    return z, check_labels(labels, z.shape[0], z.shape[1])


def check_n_bins(n_bins: Any) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    return int(n_bins)


def check_choice(value: Any, name: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value
