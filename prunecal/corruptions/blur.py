"""Blur corruptions: Gaussian, glass, defocus, motion, zoom.

Also the motion-blur kernel used by ``snow``.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Sequence

import cv2
import numpy as np

from ._common import clipped_zoom, spatial_gaussian, to_uint8, to_unit
from .params import param


def gaussian_blur(x: np.ndarray, severity: int, rngs: Sequence[np.random.Generator] = ()) -> np.ndarray:
    """Gaussian blur, sigma = 0.4..1.0 px (``skimage.filters.gaussian``: nearest edges, truncate 4)."""
    return to_uint8(spatial_gaussian(to_unit(x), param("gaussian_blur", severity)))


def glass_blur(x: np.ndarray, severity: int, rngs: Sequence[np.random.Generator]) -> np.ndarray:
    """Blur, locally shuffle pixels, blur again (``(sigma, max_delta, iterations)`` published).

    Faithful to the reference loop *as it behaves*: pixels ``(h, w)`` are visited with h and
    w running from ``side - max_delta`` down to ``max_delta + 1`` (row-major), each with
    ``dx, dy ~ randint(-max_delta, max_delta)`` (upper bound exclusive, as the reference's
    ``np.random.randint``: for CIFAR's max_delta = 1 the offsets are -1 or 0). The
    reference's "swap" ``x[h, w], x[h2, w2] = x[h2, w2], x[h, w]`` acts on NumPy views, so it
    is in fact a copy ``x[h, w] = x[h2, w2]`` (the second assignment writes back the value
    just copied). With offsets <= 0 every source pixel is visited later in the same pass, so
    each pass is exactly one simultaneous gather, done here for the whole batch at once; for
    max_delta > 1 (not used by CIFAR) the passes run position by position, vectorised over
    the batch. The intermediate image is truncated to uint8 as in the reference.
    """
    sigma, delta, iters = param("glass_blur", severity)
    n, h, w, _ = x.shape
    img = to_uint8(spatial_gaussian(to_unit(x), sigma))
    rows = np.arange(h - delta, delta, -1)
    cols = np.arange(w - delta, delta, -1)
    n_pos = rows.size * cols.size
    if n_pos and n:
        draws = np.stack([g.integers(-delta, delta, size=(iters, n_pos, 2)) for g in rngs])
        pos = (rows[:, None] * w + cols[None, :]).ravel()  # visiting order
        flat = img.reshape(n, h * w, 3)
        ar = np.arange(n)[:, None]
        for it in range(iters):
            src = pos[None, :] + draws[:, it, :, 1] * w + draws[:, it, :, 0]  # (dx, dy) drawn
            if delta <= 1:
                flat[:, pos] = flat[ar, src]  # all sources unvisited: one gather is exact
            else:
                for p in range(n_pos):
                    flat[:, pos[p]] = flat[ar[:, 0], src[:, p]]
        img = flat.reshape(n, h, w, 3)
    return to_uint8(spatial_gaussian(img / 255.0, sigma))


@lru_cache(maxsize=16)
def disk_kernel(radius: float, alias_blur: float) -> np.ndarray:
    """The reference's anti-aliased disk: ``x^2 + y^2 <= r^2`` on a 17x17 grid (r <= 8,
    else (2r+1)^2), normalised, then ``cv2.GaussianBlur`` 3x3 (5x5 for r > 8), float32."""
    if radius <= 8:
        grid, ksize = np.arange(-8, 9), (3, 3)
    else:
        grid, ksize = np.arange(-radius, radius + 1), (5, 5)
    xx, yy = np.meshgrid(grid, grid)
    d = np.array((xx ** 2 + yy ** 2) <= radius ** 2, dtype=np.float32)
    d /= d.sum()
    k = cv2.GaussianBlur(d, ksize=ksize, sigmaX=alias_blur)
    k.setflags(write=False)
    return k


def defocus_blur(x: np.ndarray, severity: int, rngs: Sequence[np.random.Generator] = ()) -> np.ndarray:
    """Convolve with the anti-aliased disk (radius 0.3..1.5 px), reflect-101 edges."""
    r, a = param("defocus_blur", severity)
    k = disk_kernel(r, a)
    xf = to_unit(x)
    out = np.empty_like(xf)
    for i in range(x.shape[0]):
        out[i] = cv2.filter2D(xf[i], -1, k)
    return to_uint8(out)


_MAGICK_EPSILON = 1.0e-12  # ImageMagick's MagickEpsilon
_MAGICK_SQ2PI = 2.50662827463100024161235523934010416269302368164062  # MagickSQ2PI
QUANTUM_SCALE = 257.0
"""8-bit value -> ImageMagick Q16 quantum (65535 / 255)."""


def motion_taps(radius: float, sigma: float, angle_deg: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The taps of ImageMagick's ``MotionBlurImage(radius, sigma, angle)``.

    As ImageMagick 6/7 compute them (``effect.c``): ``width = 2 * ceil(radius) + 1`` taps
    (``GetOptimalKernelWidth1D`` for radius > 0); weights ``exp(-i^2 / (2 sigma^2)) /
    (sqrt(2 pi) sigma)``, i = 0..width-1, divided by their sum; offsets
    ``ceil(i * (width cos a) / hypot(width sin a, width cos a) - 0.5)`` in x (right) and the
    same with ``sin`` in y (down): a one-sided streak, tap 0 on the pixel itself. Computed
    in the same double-precision operations and order as ImageMagick (libm ``sin``, ``cos``,
    ``hypot``, ``exp``), so offsets that land exactly on a rounding tie (e.g. angle -30
    degrees) round as in ImageMagick.

    Args:
        radius: pixels, > 0 (the published CIFAR values are 6..14).
        sigma: pixels (values below 1e-12 are taken as 1e-12, as ImageMagick does).
        angle_deg: degrees, 0 = to the right, positive = clockwise on screen (y down).

    Returns:
        ``(weights float64 (width,), dx int64 (width,), dy int64 (width,))``.
    """
    if not radius > _MAGICK_EPSILON:
        raise ValueError(f"radius must be > 0, got {radius!r}")
    width = int(2.0 * math.ceil(radius) + 1.0)
    s = sigma if abs(sigma) >= _MAGICK_EPSILON else _MAGICK_EPSILON
    k = [math.exp(-float(i * i) / (2.0 * s * s)) / (_MAGICK_SQ2PI * s) for i in range(width)]
    norm = 0.0
    for v in k:
        norm += v
    wts = np.array([v / norm for v in k])
    t = math.pi * angle_deg / 180.0  # DegreesToRadians
    px, py = width * math.sin(t), width * math.cos(t)
    hyp = math.hypot(px, py)
    dx = np.array([math.ceil((i * py) / hyp - 0.5) for i in range(width)], np.int64)
    dy = np.array([math.ceil((i * px) / hyp - 0.5) for i in range(width)], np.int64)
    return wts, dx, dy


def magick_motion_blur(img: np.ndarray, radius: float, sigma: float, angle_deg: float) -> np.ndarray:
    """ImageMagick's ``MotionBlurImage`` of an 8-bit image, bit for bit, without ImageMagick.

    What the published generator gets from Wand's motion blur of a PNG (ImageMagick 6.9.11
    Q16 measured: identical for every pixel, see ``tests/test_corruption_magick.py``): each
    8-bit value is scaled to a 16-bit quantum (x 257); output pixel (x, y) is
    ``sum_i w_i * q(x + dx_i, y + dy_i)`` accumulated in double in tap order
    (:func:`motion_taps`), outside pixels take the nearest edge pixel (ImageMagick's default
    'edge' virtual pixels); the sum is rounded to a quantum (``ClampToQuantum``) and written
    to the 8-bit PNG as ``floor(q / 257)``.

    Args:
        img: uint8 ``(H, W)`` or ``(H, W, C)``.
        radius, sigma: pixels; angle_deg: degrees (see :func:`motion_taps`).

    Returns:
        uint8 of ``img``'s shape.
    """
    wts, dx, dy = motion_taps(radius, sigma, angle_deg)
    h, w = img.shape[:2]
    py, px = int(np.abs(dy).max()), int(np.abs(dx).max())
    pad = ((py, py), (px, px)) + ((0, 0),) * (img.ndim - 2)
    q = np.pad(img.astype(np.float64) * QUANTUM_SCALE, pad, mode="edge")
    acc = np.zeros(img.shape, np.float64)
    for wt, ox, oy in zip(wts, dx, dy):
        acc += wt * q[py + oy:py + oy + h, px + ox:px + ox + w]
    quantum = np.floor(np.clip(acc, 0.0, 65535.0) + 0.5)
    return np.floor(quantum / QUANTUM_SCALE).astype(np.uint8)


def motion_blur(x: np.ndarray, severity: int, rngs: Sequence[np.random.Generator]) -> np.ndarray:
    """Motion blur along a random angle U(-45, 45) degrees, (radius, sigma) = (6, 1)..(9, 2.5).

    The published generator calls ImageMagick (Wand) ``motion_blur`` on each image's PNG;
    :func:`magick_motion_blur` computes the same pixels without ImageMagick.
    """
    radius, sigma = param("motion_blur", severity)
    out = np.empty_like(x)
    for i, g in enumerate(rngs):
        out[i] = magick_motion_blur(x[i], radius, sigma, g.uniform(-45.0, 45.0))
    return out


def zoom_factors(severity: int) -> np.ndarray:
    """The published zoom factors, ``np.arange(1, 1.06 .. 1.26, 0.01)``."""
    start, stop, step = param("zoom_blur", severity)
    return np.arange(start, stop, step)


def zoom_blur(x: np.ndarray, severity: int, rngs: Sequence[np.random.Generator] = ()) -> np.ndarray:
    """Average of the image and its centre zooms by each factor (bilinear, as the reference's
    ``scipy.ndimage.zoom`` of the centre crop), as two batched matrix products per factor
    (:func:`~prunecal.corruptions._common.clipped_zoom`). Float32 like the reference; the
    interpolation sums in a different order, so a value may rarely differ by one level."""
    xf = to_unit(x).astype(np.float32)
    facs = zoom_factors(severity)
    acc = np.zeros_like(xf)
    for f in facs:
        acc += clipped_zoom(xf, float(f))
    return to_uint8((xf + acc) / (len(facs) + 1))
