"""Blur corruptions: Gaussian, glass, defocus, motion, zoom.

Also the motion-blur kernel used by ``snow``.
"""
from __future__ import annotations

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


def motion_kernel(radius: float, sigma: float, angle_deg: float) -> np.ndarray:
    """A one-sided line kernel modelled on ImageMagick's ``MotionBlurImage``.

    ``width = 2 * ceil(radius) + 1`` taps with weights ``exp(-i^2 / (2 sigma^2))``
    (i = 0..width-1, normalised) at offsets ``ceil(i * (cos a, sin a) - 0.5)`` (x right,
    y down), i.e. output pixel (x, y) is the weighted mean of the input at
    ``(x, y) + offset_i``: a one-sided streak, as ImageMagick 6/7 compute it. Returned as a
    square ``(2 width + 1)^2`` float32 correlation kernel centred on tap 0, for
    ``cv2.filter2D``. Not reproduced: ImageMagick's Q16 quantum arithmetic and 8-bit
    PNG rounding of its result (we truncate once at the end).
    """
    width = int(2 * np.ceil(radius) + 1)
    i = np.arange(width, dtype=np.float64)
    wts = np.exp(-(i ** 2) / (2.0 * sigma ** 2))
    wts /= wts.sum()
    t = np.deg2rad(angle_deg)
    ox = np.ceil(i * np.cos(t) - 0.5).astype(int)
    oy = np.ceil(i * np.sin(t) - 0.5).astype(int)
    k = np.zeros((2 * width + 1, 2 * width + 1), np.float32)
    np.add.at(k, (width + oy, width + ox), wts)
    return k


def apply_motion(img: np.ndarray, radius: float, sigma: float, angle_deg: float) -> np.ndarray:
    """Motion-blur one ``(H, W[, C])`` float image; edge pixels replicated (ImageMagick's
    default 'edge' virtual pixels)."""
    return cv2.filter2D(img, -1, motion_kernel(radius, sigma, angle_deg), borderType=cv2.BORDER_REPLICATE)


def motion_blur(x: np.ndarray, severity: int, rngs: Sequence[np.random.Generator]) -> np.ndarray:
    """Motion blur along a random angle U(-45, 45) degrees, (radius, sigma) = (6, 1)..(9, 2.5).

    Differs from the reference, which calls ImageMagick (Wand) ``motion_blur`` on a PNG: we
    build the same kind of one-sided Gaussian line kernel (see :func:`motion_kernel`) and
    apply it with ``cv2.filter2D``; tap rounding and edge handling may differ by a pixel, so
    values are close to but not bit-identical with CIFAR-10-C.
    """
    radius, sigma = param("motion_blur", severity)
    xf = to_unit(x)
    out = np.empty_like(xf)
    for i, g in enumerate(rngs):
        out[i] = apply_motion(xf[i], radius, sigma, g.uniform(-45.0, 45.0))
    return to_uint8(out)


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
