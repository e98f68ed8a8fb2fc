"""Shared helpers: input checks and float <-> uint8 conversion matching the reference."""
from __future__ import annotations

import numbers

import numpy as np
import scipy.ndimage as ndi

MIN_SIDE = 8


def check_images(images: object) -> tuple[np.ndarray, bool]:
    """Validate ``images`` (uint8 ``(N, H, W, 3)`` or ``(H, W, 3)``).

    Returns the 4-D array and whether the input was a single image.
    """
    if not isinstance(images, np.ndarray):
        if hasattr(images, "numpy") and callable(images.numpy):  # e.g. a CPU torch tensor
            images = images.numpy()
        else:
            images = np.asarray(images)
    if images.dtype != np.uint8:
        hint = ""
        if np.issubdtype(images.dtype, np.floating):
            hint = (" (float images in [0, 1]? convert with "
                    "(np.clip(x, 0, 1) * 255).round().astype(np.uint8))")
        raise TypeError(f"images must be uint8 NHWC RGB, got dtype {images.dtype}{hint}")
    single = images.ndim == 3
    if images.ndim not in (3, 4):
        raise ValueError(f"images must have shape (N, H, W, 3) or (H, W, 3), got {images.shape}")
    x = images[None] if single else images
    if x.shape[-1] != 3:
        raise ValueError(
            f"images must have 3 (RGB) channels in the last axis (NHWC), got shape {images.shape}"
            + (" - channels-first? use images.transpose(0, 2, 3, 1)" if x.shape[1] == 3 else ""))
    if x.shape[1] < MIN_SIDE or x.shape[2] < MIN_SIDE:
        raise ValueError(f"images must be at least {MIN_SIDE}x{MIN_SIDE} pixels, got shape {images.shape}")
    return x, single


def check_int(value: object, name: str, lo: int, hi: int | None = None) -> int:
    """``value`` as an int in ``[lo, hi]``; bools and non-integers raise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    v = int(value)
    if v < lo or (hi is not None and v > hi):
        rng = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise ValueError(f"{name} must be in {rng}, got {v}")
    return v


def check_indices(indices: object, n: int, name: str = "indices") -> np.ndarray:
    """``indices`` as a 1-D int64 array of ``n`` non-negative ints (one per image).

    Accepts any 1-D integer array-like (numpy array, list, tuple, range, CPU torch tensor).
    Duplicates are allowed (the same index gives the same random stream).

    Raises:
        TypeError: bool, float or other non-integer entries (an empty list is accepted).
        ValueError: not 1-D, length other than ``n``, a negative index, or one above 2**63 - 1.
    """
    if isinstance(indices, (str, bytes)) or np.isscalar(indices):
        raise TypeError(f"{name} must be a 1-D array of ints (one per image), got {type(indices).__name__} {indices!r}")
    if not isinstance(indices, np.ndarray) and hasattr(indices, "numpy") and callable(indices.numpy):
        indices = indices.numpy()  # e.g. a CPU torch tensor
    a = np.asarray(indices)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one index per image), got shape {a.shape}")
    if a.size == 0 and a.dtype.kind == "f":  # np.asarray([]) is float64
        a = a.astype(np.int64)
    if a.dtype == np.bool_ or a.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold ints, got dtype {a.dtype}")
    if a.shape[0] != n:
        raise ValueError(f"{name} must have one entry per image: {n}, got {a.shape[0]}")
    if a.size:
        if a.dtype.kind == "i" and a.min() < 0:
            raise ValueError(f"{name} must be >= 0, got {int(a.min())}")
        if a.dtype.kind == "u" and a.max() > np.iinfo(np.int64).max:
            raise ValueError(f"{name} must be <= {np.iinfo(np.int64).max}, got {int(a.max())}")
    return a.astype(np.int64)


def to_unit(x: np.ndarray) -> np.ndarray:
    """uint8 -> float64 in [0, 1] (the reference's ``np.array(x) / 255.``)."""
    return x.astype(np.float64) / 255.0


def to_uint8(x_unit: np.ndarray) -> np.ndarray:
    """float in [0, 1] -> uint8 the reference's way: clip, * 255, truncate (``np.uint8``)."""
    return (np.clip(x_unit, 0.0, 1.0) * 255.0).astype(np.uint8)


def spatial_gaussian(x: np.ndarray, sigma: float, mode: str = "nearest", truncate: float = 4.0) -> np.ndarray:
    """Gaussian blur of ``(N, H, W[, C])`` over H and W only.

    Equals ``skimage.filters.gaussian(img, sigma, channel_axis=-1)`` per image (its defaults
    are ``mode='nearest'``, ``truncate=4``).
    """
    if sigma <= 0:
        return x.astype(np.float64, copy=True)
    sig = (0.0, sigma, sigma) + (0.0,) * (x.ndim - 3)
    return ndi.gaussian_filter(x.astype(np.float64, copy=False), sig, mode=mode, truncate=truncate)


def _linear_zoom_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``(n_out, n_in)`` weights of ``scipy.ndimage.zoom(order=1)`` along one axis
    (``grid_mode=False``: output k samples input ``k * (n_in - 1) / (n_out - 1)``)."""
    pos = np.arange(n_out) * ((n_in - 1) / (n_out - 1)) if n_out > 1 else np.zeros(1)
    lo = np.clip(np.floor(pos).astype(int), 0, n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = pos - lo
    m = np.zeros((n_out, n_in))
    np.add.at(m, (np.arange(n_out), lo), 1.0 - frac)
    np.add.at(m, (np.arange(n_out), hi), frac)
    return m


def clipped_zoom(x: np.ndarray, factor: float) -> np.ndarray:
    """Zoom ``(N, H, W[, C])`` about the centre by ``factor`` >= 1 (bilinear), cropped to H x W.

    The reference's ``clipped_zoom`` (``scipy.ndimage.zoom(order=1)`` of the central
    ``ceil(side / factor)`` crop, output side ``round(crop * factor)``, centre-trimmed),
    generalised to H != W and computed for the whole batch as two small matrix products
    (separable bilinear weights), which equals scipy's result to rounding error. (Where
    ``k * (n_in - 1) / (n_out - 1)`` rounds to just above ``n_in - 1``, scipy's default
    ``mode='constant'`` blends the last sample with 0; we take the edge value. This never
    happens for 32x32 images and the published zoom factors.)
    """
    h, w = x.shape[1], x.shape[2]
    ch, cw = int(np.ceil(h / factor)), int(np.ceil(w / factor))
    top, left = (h - ch) // 2, (w - cw) // 2
    crop = x[:, top:top + ch, left:left + cw]
    zh, zw = int(round(ch * factor)), int(round(cw * factor))
    tt, tl = (zh - h) // 2, (zw - w) // 2
    ah = _linear_zoom_matrix(ch, zh)[tt:tt + h].astype(x.dtype, copy=False)
    aw = _linear_zoom_matrix(cw, zw)[tl:tl + w].astype(x.dtype, copy=False)
    n, c = x.shape[0], int(np.prod(x.shape[3:]))  # c = 1 for (N, H, W); sizes explicit: n may be 0
    rows = np.matmul(ah, crop.reshape(n, ch, cw * c)).reshape(n, h, cw, c)  # (N, H, cw, C)
    out = np.matmul(aw, rows)  # (W, cw) @ (N, H, cw, C) -> (N, H, W, C)
    return out if x.ndim == 4 else out[..., 0]

