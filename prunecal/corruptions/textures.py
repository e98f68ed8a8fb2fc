"""Frost textures for the ``frost`` corruption.

The published textures: the six frost pictures of Hendrycks & Dietterich's generator
(``frost1.png`` .. ``frost3.png``, ``frost4.jpg`` .. ``frost6.jpg``; Apache-2.0, shipped
in ``hendrycks/robustness`` and in the ``imagecorruptions`` package), stored in
``prunecal/corruptions/frost/`` exactly as the CIFAR generator uses them: read with
OpenCV, scaled by 0.2 with ``cv2.resize(..., fx=0.2, fy=0.2)`` (bilinear), RGB, as lossless
PNG (sizes 120x180, 63x112, 63x112, 70x105, 99x132, 65x97). ``frost/README.md`` gives
their origin and checksums, ``frost/LICENSE`` the licence;
``scripts/make_corruption_reference.py textures`` rebuilds them from the originals.

Fallback (only when those files are missing, e.g. a stripped install; a warning says so):
five procedural textures synthesised deterministically (fixed seeds):

1. *haze*: multi-octave value noise (random grids of 4..64 cells, bicubic upsampling,
   amplitude ~ 1 / sqrt(cells)), normalised to [0, 1];
2. *crystals*: dendritic ice needles - a few hundred anti-aliased line segments of random
   direction and length (3..28 px), each with 2-4 side branches at +-60 degrees, denser
   where the haze is dense, plus a soft glow (Gaussian blur sigma 2);
3. *grain*: sparse bright specks (0.8 % of pixels) blurred with sigma 0.6;

mixed as ``0.45 haze + 0.65 crystals + 0.25 grain``, compressed with gamma 0.8 and tinted
icy blue-white. They look like frost but are not the published pictures: frost accuracy
with them is 5-20 points higher than with the published generator (measured, see
``docs/corruptions.md``).
"""
from __future__ import annotations

import warnings
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

N_TEXTURES = 5
BASE_SIDE = 160
_TEXTURE_SEED = 0xF2057


def _value_noise(rng: np.random.Generator, side: int) -> np.ndarray:
    acc = np.zeros((side, side), np.float32)
    for cells in (4, 8, 16, 32, 64):
        grid = rng.random((cells + 1, cells + 1), dtype=np.float32)
        acc += cv2.resize(grid, (side, side), interpolation=cv2.INTER_CUBIC) / np.sqrt(cells)
    acc -= acc.min()
    return acc / acc.max()


def _crystals(rng: np.random.Generator, side: int, density: np.ndarray) -> np.ndarray:
    canvas = np.zeros((side, side), np.uint8)
    n_needles = int(0.012 * side * side)
    for _ in range(n_needles):
        y, x = rng.integers(0, side, size=2)
        if rng.random() > 0.35 + 0.65 * density[y, x]:
            continue
        ang = rng.uniform(0, np.pi)
        length = rng.uniform(3, 28)
        val = int(rng.uniform(110, 255))
        d = np.array([np.cos(ang), np.sin(ang)])
        p0 = np.array([x, y], np.float64) - d * length / 2
        p1 = p0 + d * length
        cv2.line(canvas, tuple(np.rint(p0).astype(int)), tuple(np.rint(p1).astype(int)), val, 1, cv2.LINE_AA)
        for _ in range(int(rng.integers(2, 5))):
            t = rng.uniform(0.15, 0.85)
            b_ang = ang + rng.choice([-1.0, 1.0]) * np.pi / 3
            b_len = length * rng.uniform(0.15, 0.4)
            s = p0 + d * length * t
            e = s + np.array([np.cos(b_ang), np.sin(b_ang)]) * b_len
            cv2.line(canvas, tuple(np.rint(s).astype(int)), tuple(np.rint(e).astype(int)),
                     int(val * 0.8), 1, cv2.LINE_AA)
    c = canvas.astype(np.float32) / 255.0
    glow = cv2.GaussianBlur(c, (0, 0), 2.0)
    return np.clip(c + 1.5 * glow, 0, 1)


def _texture(index: int, side: int) -> np.ndarray:
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([_TEXTURE_SEED, index, side])))
    haze = _value_noise(rng, side)
    crystals = _crystals(rng, side, haze)
    grain = (rng.random((side, side), dtype=np.float32) < 0.008).astype(np.float32)
    grain = np.clip(cv2.GaussianBlur(grain, (0, 0), 0.6) * 3, 0, 1)
    f = np.clip(0.45 * haze + 0.65 * crystals + 0.25 * grain, 0, 1) ** 0.8
    tint = np.array([0.84, 0.92, 1.0]) * 255.0
    return (f[..., None] * tint).astype(np.float64)


FROST_DIR = Path(__file__).resolve().parent / "frost"
"""Folder of the shipped published textures."""

FROST_FILES: tuple[str, ...] = tuple(f"frost{k}.png" for k in range(1, 7))
"""The six published textures (scaled by 0.2, RGB PNG), in the published order."""

FROST_CHOICES = 5
"""The published CIFAR generator draws ``randint(5)``: only the first five textures are used."""


def published_available() -> bool:
    """Whether the six published textures are installed."""
    return all((FROST_DIR / f).is_file() for f in FROST_FILES)


@lru_cache(maxsize=1)
def published_textures() -> tuple[np.ndarray, ...]:
    """The six published frost textures, uint8 ``(rows, cols, 3)`` RGB, read-only.

    Raises:
        FileNotFoundError: a file is missing (naming it).
    """
    out = []
    for f in FROST_FILES:
        with Image.open(FROST_DIR / f) as im:
            a = np.asarray(im.convert("RGB")).copy()
        a.setflags(write=False)
        out.append(a)
    return tuple(out)


@lru_cache(maxsize=4)
def procedural_textures(min_side: int = 33) -> tuple[np.ndarray, ...]:
    """The five procedural fallback textures, float64 ``(S, S, 3)`` RGB in [0, 255],
    S = max(160, min_side); deterministic, read-only, cached per size."""
    side = max(BASE_SIDE, int(min_side))
    out = []
    for k in range(N_TEXTURES):
        t = _texture(k, side)
        t.setflags(write=False)
        out.append(t)
    return tuple(out)


def _fit(t: np.ndarray, min_rows: int, min_cols: int) -> np.ndarray:
    """``t`` as float64, upscaled (bicubic, aspect kept, x 1.1 margin, as the
    ``imagecorruptions`` package) when smaller than ``min_rows`` x ``min_cols``."""
    r, c = t.shape[:2]
    if r >= min_rows and c >= min_cols:
        return t.astype(np.float64)
    f = 1.1 * max(min_rows / r, min_cols / c)
    size = (int(np.ceil(c * f)), int(np.ceil(r * f)))
    return np.clip(cv2.resize(np.asarray(t, np.float32), size, interpolation=cv2.INTER_CUBIC), 0, 255).astype(np.float64)


@lru_cache(maxsize=8)
def frost_textures(min_rows: int = 33, min_cols: int = 33) -> tuple[np.ndarray, ...]:
    """The frost textures ``frost`` crops from, float64 ``(rows, cols, 3)`` RGB in [0, 255].

    The six published textures (:func:`published_textures`) when installed, else the five
    procedural ones (with a :class:`RuntimeWarning`); any texture with fewer than
    ``min_rows`` rows or ``min_cols`` columns is upscaled to fit. Read-only, cached.
    """
    if published_available():
        base: tuple[np.ndarray, ...] = published_textures()
    else:
        warnings.warn(f"published frost textures not found in {FROST_DIR}; using procedural "
                      "stand-ins (frost results then differ from CIFAR-10-C)", RuntimeWarning, stacklevel=3)
        base = procedural_textures(max(min_rows, min_cols))
    out = []
    for t in base:
        f = _fit(t, min_rows, min_cols)
        f.setflags(write=False)
        out.append(f)
    return tuple(out)
