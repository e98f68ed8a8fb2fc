"""Weather corruptions: snow, frost, fog, spatter."""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from ._common import clipped_zoom, spatial_gaussian, to_uint8, to_unit
from .blur import magick_motion_blur
from .params import param
from .textures import FROST_CHOICES, frost_textures


def plasma_fractal(uniforms: np.ndarray, mapsize: int, wibbledecay: float) -> np.ndarray:
    """Diamond-square height maps for a batch, normalised to [0, 1].

    Args:
        uniforms: ``(N, plasma_draws(mapsize))`` U(-1, 1) values, consumed in the
            reference's order (squares then diamonds, coarse to fine).
        mapsize: power of two, the map side.
        wibbledecay: amplitude decay per octave (published per severity).

    Returns:
        ``(N, mapsize, mapsize)`` float64.
    """
    n = uniforms.shape[0]
    m = np.zeros((n, mapsize, mapsize))
    step, wibble, used = mapsize, 100.0, 0

    def take(shape: tuple[int, ...]) -> np.ndarray:
        nonlocal used
        k = int(np.prod(shape))
        u = uniforms[:, used:used + k].reshape(n, *shape)
        used += k
        return u

    while step >= 2:
        half = step // 2
        corner = m[:, 0:mapsize:step, 0:mapsize:step]
        sq = corner + np.roll(corner, -1, axis=1)
        sq = sq + np.roll(sq, -1, axis=2)
        m[:, half:mapsize:step, half:mapsize:step] = sq / 4 + wibble * wibble * take(sq.shape[1:])
        dr = m[:, half:mapsize:step, half:mapsize:step]
        ul = m[:, 0:mapsize:step, 0:mapsize:step]
        lt = dr + np.roll(dr, 1, axis=1) + ul + np.roll(ul, -1, axis=2)
        m[:, 0:mapsize:step, half:mapsize:step] = lt / 4 + wibble * wibble * take(lt.shape[1:])
        tt = dr + np.roll(dr, 1, axis=2) + ul + np.roll(ul, -1, axis=1)
        m[:, half:mapsize:step, 0:mapsize:step] = tt / 4 + wibble * wibble * take(tt.shape[1:])
        step //= 2
        wibble /= wibbledecay
    m -= m.min(axis=(1, 2), keepdims=True)
    return m / m.max(axis=(1, 2), keepdims=True)


def plasma_draws(mapsize: int) -> int:
    """Number of U(-1, 1) values one ``mapsize`` plasma map consumes."""
    total, step = 0, mapsize
    while step >= 2:
        total += 3 * (mapsize // step) ** 2
        step //= 2
    return total


def fog(x: np.ndarray, severity: int, rngs: Sequence[np.random.Generator]) -> np.ndarray:
    """Add ``c * plasma`` (diamond-square fractal, seeded per image) then rescale by
    ``max / (max + c)``; (c, wibble decay) = (0.2, 3)..(1.5, 1.75).

    The map side is the next power of two >= max(H, W) (32 for CIFAR), cropped to H x W.
    """
    c, decay = param("fog", severity)
    n, h, w, _ = x.shape
    size = 1 << int(np.ceil(np.log2(max(h, w))))
    k = plasma_draws(size)
    u = np.stack([g.uniform(-1.0, 1.0, size=k) for g in rngs]) if n else np.zeros((0, k))
    plasma = plasma_fractal(u, size, decay)[:, :h, :w, None]
    xf = to_unit(x)
    mx = xf.max(axis=(1, 2, 3), keepdims=True)
    return to_uint8((xf + c * plasma) * mx / (mx + c))


def frost(x: np.ndarray, severity: int, rngs: Sequence[np.random.Generator]) -> np.ndarray:
    """``a * x + b * frost`` (0..255 scale, clipped, truncated to uint8), (a, b) published.

    As the published CIFAR generator: texture ``k ~ randint(5)`` of the six published frost
    pictures (``frost1.png`` .. ``frost5.jpg``: its draw never picks ``frost6.jpg``), scaled by
    0.2 (shipped so, see :mod:`prunecal.corruptions.textures`), then a crop at row
    ``randint(0, rows - H)`` and column ``randint(0, cols - W)`` (upper bounds exclusive, so
    the last row / column of the texture is never used). Images larger than a texture (not
    CIFAR) get the texture upscaled to fit (bicubic, as the ``imagecorruptions`` package does).
    Without the shipped pictures, procedural textures stand in (a documented fallback).
    """
    a, b = param("frost", severity)
    n, h, w, _ = x.shape
    tex = frost_textures(min_rows=h + 1, min_cols=w + 1)
    crops = np.empty((n, h, w, 3), np.float64)
    for i, g in enumerate(rngs):
        t = tex[int(g.integers(FROST_CHOICES))]
        y0 = int(g.integers(0, t.shape[0] - h))
        x0 = int(g.integers(0, t.shape[1] - w))
        crops[i] = t[y0:y0 + h, x0:x0 + w]
    return np.clip(a * x.astype(np.float64) + b * crops, 0, 255).astype(np.uint8)


def snow(x: np.ndarray, severity: int, rngs: Sequence[np.random.Generator]) -> np.ndarray:
    """Snowflakes over a whitened image, as the published generator.

    Per image: a layer ``N(loc, scale)`` of H x W, zoomed about the centre by ``zoom``
    (bilinear, cropped), values below ``threshold`` set to 0, cast to 8 bits, motion-blurred
    with ImageMagick's kernel (:func:`~prunecal.corruptions.blur.magick_motion_blur`, radius /
    sigma published, angle U(-135, -45) degrees); the image (float32) becomes
    ``blend * x + (1 - blend) * max(x, 1.5 * grey(x) + 0.5)`` (OpenCV's RGB->grey weights),
    and the result is ``x + layer + layer rotated 180 degrees`` clipped to [0, 1].
    """
    loc, scale, zf, thr, radius, sigma, blend = param("snow", severity)
    n, h, w, _ = x.shape
    layer = np.stack([g.normal(loc, scale, size=(h, w)) for g in rngs]) if n else np.zeros((0, h, w))
    angles = [g.uniform(-135.0, -45.0) for g in rngs]
    layer = clipped_zoom(layer, zf)
    layer[layer < thr] = 0
    layer8 = (np.clip(layer, 0, 1) * 255).astype(np.uint8)
    snow_layer = np.empty((n, h, w, 1), np.float64)
    for i in range(n):
        snow_layer[i, ..., 0] = magick_motion_blur(layer8[i], radius, sigma, angles[i]) / 255.0
    xf = x.astype(np.float32) / np.float32(255.0)
    gray = cv2.cvtColor(xf.reshape(n * h, w, 3), cv2.COLOR_RGB2GRAY).reshape(n, h, w, 1) if n else xf[..., :1]
    xf = np.float32(blend) * xf + np.float32(1 - blend) * np.maximum(xf, gray * np.float32(1.5) + np.float32(0.5))
    return to_uint8(xf + snow_layer + snow_layer[:, ::-1, ::-1])


_WATER_RGB = np.array([175, 238, 238]) / 255.0  # pale turquoise
_MUD_RGB = np.array([63, 42, 20]) / 255.0  # mud brown
_EMBOSS = np.float32([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]])


def spatter(x: np.ndarray, severity: int, rngs: Sequence[np.random.Generator]) -> np.ndarray:
    """Water drops (severities 1-3) or mud (4-5) from thresholded, blurred Gaussian noise.

    Water: an embossed, distance-transformed edge map of the liquid layer tints the image
    towards pale turquoise. Mud: smooth blobs replace the image with mud brown. Follows the
    reference step for step (OpenCV Canny, distance transform, histogram equalisation), with
    two guards: the liquid layer is clipped before the 8-bit cast (the reference wraps
    around on overflow) and an image without drops is left unchanged (the reference divides
    by zero).
    """
    loc, scale, sigma, thr, inten, mode = param("spatter", severity)
    n, h, w, _ = x.shape
    liquid = np.stack([g.normal(loc, scale, size=(h, w)) for g in rngs]) if n else np.zeros((0, h, w))
    liquid = spatial_gaussian(liquid, sigma)
    liquid[liquid < thr] = 0
    xf = x.astype(np.float32) / 255.0
    if mode == 0:
        l8 = np.clip(liquid * 255, 0, 255).astype(np.uint8)
        out = np.empty_like(xf)
        for i in range(n):
            dist = 255 - cv2.Canny(l8[i], 50, 150)
            dist = cv2.distanceTransform(dist, cv2.DIST_L2, 5)
            _, dist = cv2.threshold(dist, 20, 20, cv2.THRESH_TRUNC)
            dist = cv2.blur(dist, (3, 3)).astype(np.uint8)
            dist = cv2.equalizeHist(dist)
            dist = cv2.filter2D(dist, cv2.CV_8U, _EMBOSS)
            dist = cv2.blur(dist, (3, 3)).astype(np.float32)
            m = l8[i].astype(np.float32) * dist
            mx = m.max()
            m = m / mx * inten if mx > 0 else np.zeros_like(m)
            out[i] = xf[i] + m[..., None] * _WATER_RGB
        return to_uint8(out)
    m = spatial_gaussian((liquid > thr).astype(np.float32), inten)
    m[m < 0.8] = 0
    m = m[..., None]
    return to_uint8(xf * (1 - m) + _MUD_RGB * m)
