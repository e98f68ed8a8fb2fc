"""uint8 NHWC images -> normalised float tensors, and vectorised training augmentation."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

__all__ = ["to_tensor", "random_crop_flip", "check_images"]


def check_images(images: np.ndarray, name: str = "images", *, channels: int | None = None) -> np.ndarray:
    """Validate a uint8 ``(N, H, W, C)`` array and return it; TypeError/ValueError otherwise."""
    if isinstance(images, torch.Tensor):
        images = images.numpy()
    if not isinstance(images, np.ndarray):
        raise TypeError(f"{name} must be a numpy uint8 array (N, H, W, C), got {type(images).__name__}")
    if images.dtype != np.uint8:
        raise TypeError(f"{name} must have dtype uint8 (N, H, W, C), got {images.dtype}")
    if images.ndim != 4:
        raise ValueError(f"{name} must have shape (N, H, W, C), got {images.shape}")
    if channels is not None and images.shape[3] != channels:
        raise ValueError(f"{name} must have {channels} channels in the last axis (NHWC), "
                         f"got shape {images.shape}")
    return images


def _stats(v: Sequence[float], name: str, c: int) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(v, dtype=np.float64).reshape(-1), dtype=torch.float64)
    if t.numel() == 1:
        t = t.expand(c)
    if t.numel() != c:
        raise ValueError(f"{name} must have {c} values (one per channel), got {t.numel()}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} must be finite, got {t.tolist()}")
    return t


def to_tensor(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(images / 255 - mean) / std`` as float32 ``(N, C, H, W)`` (contiguous).

    Args:
        images: uint8 ``(N, H, W, C)`` (RGB for the CIFAR models).
        mean, std: per-channel statistics of pixels scaled to [0, 1]; ``std > 0``.
    """
    images = check_images(images)
    c = images.shape[3]
    m = _stats(mean, "mean", c)
    s = _stats(std, "std", c)
    if bool((s <= 0).any()):
        raise ValueError(f"std must be > 0, got {s.tolist()}")
    scale = (1.0 / (255.0 * s)).to(torch.float32).view(1, c, 1, 1)
    shift = (m / s).to(torch.float32).view(1, c, 1, 1)
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).to(torch.float32)
    return (x * scale - shift).contiguous()


def random_crop_flip(images: np.ndarray, rng: np.random.Generator | int | None = None,
                     pad: int = 4, flip: bool = True) -> np.ndarray:
    """Random crop after zero padding by ``pad`` pixels, and random horizontal flip (p = 0.5).

    The standard CIFAR augmentation, vectorised over the batch with one gather.

    Args:
        images: uint8 ``(N, H, W, C)``.
        rng: a ``numpy.random.Generator`` or seed.
        pad: zero padding on each side (default 4); 0 disables the crop.
        flip: enable horizontal flips (default True).

    Returns:
        uint8 ``(N, H, W, C)``, a new array.
    """
    images = check_images(images)
    if not isinstance(pad, (int, np.integer)) or pad < 0:
        raise ValueError(f"pad must be an int >= 0, got {pad!r}")
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    n, h, w, _ = images.shape
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0))) if pad else images
    oy = rng.integers(0, 2 * pad + 1, size=n)
    ox = rng.integers(0, 2 * pad + 1, size=n)
    flips = rng.random(n) < 0.5 if flip else np.zeros(n, dtype=bool)
    rows = oy[:, None] + np.arange(h)[None, :]
    cols_fwd = np.arange(w)[None, :]
    cols = ox[:, None] + np.where(flips[:, None], w - 1 - cols_fwd, cols_fwd)
    return padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
