"""Digital corruptions: brightness, contrast, saturate, pixelate, JPEG, elastic transform.

All but the elastic transform are deterministic (no randomness).
"""
from __future__ import annotations

import io
from typing import Sequence

import cv2
import numpy as np
import scipy.ndimage as ndi
from PIL import Image

from ._common import to_uint8, to_unit
from .params import param


def rgb2hsv(rgb: np.ndarray) -> np.ndarray:
    """``skimage.color.rgb2hsv`` for ``(..., 3)`` float64, bit-identical (same arithmetic and
    the same precedence on ties: blue over green over red), without boolean scatter passes."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    v = rgb.max(-1)
    delta = v - rgb.min(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        s = delta / v
        h = np.where(b == v, 4.0 + (r - g) / delta,
                     np.where(g == v, 2.0 + (b - r) / delta, (g - b) / delta))
        h = (h / 6.0) % 1.0
    flat = delta == 0.0
    s[flat] = 0.0
    h[flat] = 0.0
    out = np.stack([h, s, v], axis=-1)
    out[np.isnan(out)] = 0
    return out


# For each hue sector 0..5, which of (v, t, p, q) goes to R, G, B (skimage's choice table).
_SECTOR_TABLE = np.array([[0, 1, 2], [3, 0, 2], [2, 0, 1], [2, 3, 0], [1, 2, 0], [0, 2, 3]], np.intp)


def hsv2rgb(hsv: np.ndarray) -> np.ndarray:
    """``skimage.color.hsv2rgb`` for ``(..., 3)`` float64, bit-identical (same arithmetic),
    several times faster: one gather from ``(v, t, p, q)`` replaces ``np.choose`` over six
    stacked candidates."""
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    hi = np.floor(h * 6)
    f = h * 6 - hi
    p = v * (1 - s)
    q = v * (1 - f * s)
    t = v * (1 - (1 - f) * s)
    sector = hi.astype(np.uint8) % 6
    return np.take_along_axis(np.stack([v, t, p, q], axis=-1), _SECTOR_TABLE[sector], axis=-1)


def brightness(x: np.ndarray, severity: int, rngs: Sequence[np.random.Generator] = ()) -> np.ndarray:
    """Add c = 0.05..0.3 to the HSV value channel (scikit-image HSV), clip to [0, 1]."""
    c = param("brightness", severity)
    hsv = rgb2hsv(to_unit(x))
    hsv[..., 2] = np.clip(hsv[..., 2] + c, 0.0, 1.0)
    return to_uint8(hsv2rgb(hsv))


def saturate(x: np.ndarray, severity: int, rngs: Sequence[np.random.Generator] = ()) -> np.ndarray:
    """HSV saturation ``S * a + b`` clipped to [0, 1]; (a, b) = (0.3, 0) .. (2.5, 0.2).

    Severities 1-2 desaturate and 3-5 oversaturate, so the pixel change is not monotone in
    severity (a property of the published parameters).
    """
    a, b = param("saturate", severity)
    hsv = rgb2hsv(to_unit(x))
    hsv[..., 1] = np.clip(hsv[..., 1] * a + b, 0.0, 1.0)
    return to_uint8(hsv2rgb(hsv))


def contrast(x: np.ndarray, severity: int, rngs: Sequence[np.random.Generator] = ()) -> np.ndarray:
    """``(x - m) * c + m`` with m the per-image, per-channel mean; c = 0.75..0.15."""
    c = param("contrast", severity)
    xf = to_unit(x)
    m = xf.mean(axis=(1, 2), keepdims=True)
    return to_uint8((xf - m) * c + m)


def pixelate(x: np.ndarray, severity: int, rngs: Sequence[np.random.Generator] = ()) -> np.ndarray:
    """Pillow BOX resize to ``int(side * c)`` then BOX back; c = 0.95..0.65."""
    c = param("pixelate", severity)
    h, w = x.shape[1:3]
    small = (max(1, int(w * c)), max(1, int(h * c)))
    out = np.empty_like(x)
    for i, img in enumerate(x):
        p = Image.fromarray(img).resize(small, Image.Resampling.BOX)
        out[i] = np.asarray(p.resize((w, h), Image.Resampling.BOX))
    return out


def jpeg_compression(x: np.ndarray, severity: int, rngs: Sequence[np.random.Generator] = ()) -> np.ndarray:
    """Pillow JPEG encode/decode at quality 80, 65, 58, 50, 40 (Pillow's default 4:2:0)."""
    q = param("jpeg_compression", severity)
    out = np.empty_like(x)
    for i, img in enumerate(x):
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=q)
        buf.seek(0)
        with Image.open(buf) as im:
            out[i] = np.asarray(im.convert("RGB"))
    return out


def elastic_transform(x: np.ndarray, severity: int, rngs: Sequence[np.random.Generator]) -> np.ndarray:
    """Random affine jitter then a smooth random displacement field (Simard et al. 2003).

    Per image: the three points ``centre + (s, s), (s, -s), -s`` (s = side // 3) move by
    U(-a, a) (a = affine jitter) and ``cv2.warpAffine`` (bilinear, reflect-101) applies the
    affine map; then ``dx, dy = alpha * gaussian(U(-1, 1), sigma, mode='reflect', truncate=3)``
    displace every pixel with bilinear ``scipy.ndimage.map_coordinates(mode='reflect')``.
    Parameters (alpha, sigma, a) are the published CIFAR ones in pixels. Displacement fields
    are smoothed in bulk; warps run per image.
    """
    alpha, sigma, jitter = param("elastic_transform", severity)
    n, h, w, _ = x.shape
    xf = to_unit(x).astype(np.float32)
    centre = np.float32([h, w]) // 2
    s = min(h, w) // 3
    pts1 = np.float32([centre + s, [centre[0] + s, centre[1] - s], centre - s])
    jit = np.empty((n, 3, 2), np.float32)
    fields = np.empty((n, 2, h, w))
    for i, g in enumerate(rngs):
        jit[i] = g.uniform(-jitter, jitter, size=(3, 2))
        fields[i] = g.uniform(-1.0, 1.0, size=(2, h, w))
    if sigma > 0:
        fields = ndi.gaussian_filter(fields, (0, 0, sigma, sigma), mode="reflect", truncate=3.0)
    disp = (fields * alpha).astype(np.float32)
    yy, xx = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32), indexing="ij")
    out = np.empty_like(xf)
    for i in range(n):
        m = cv2.getAffineTransform(pts1, pts1 + jit[i])
        warped = cv2.warpAffine(xf[i], m, (w, h), borderMode=cv2.BORDER_REFLECT_101)
        coords = np.stack([yy + disp[i, 1], xx + disp[i, 0]])
        for ch in range(3):
            out[i, ..., ch] = ndi.map_coordinates(warped[..., ch], coords, order=1, mode="reflect")
    return to_uint8(out)
