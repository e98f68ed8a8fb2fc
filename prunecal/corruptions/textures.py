"""Procedural frost textures for the ``frost`` corruption.

The reference crops photographs of frost on glass (``frost1.png`` .. ``frost6.jpg``, shipped
with ``hendrycks/robustness`` and the ``imagecorruptions`` package, downscaled by 0.2). We
ship no photographs; instead five textures are synthesised deterministically (fixed seeds,
no dependence on the user's seed) the first time frost is used:

1. *haze*: multi-octave value noise (random grids of 4..64 cells, bicubic upsampling,
   amplitude ~ 1 / sqrt(cells)), normalised to [0, 1];
2. *crystals*: dendritic ice needles - a few hundred anti-aliased line segments of random
   direction and length (3..28 px), each with 2-4 side branches at +-60 degrees, denser
   where the haze is dense, plus a soft glow (Gaussian blur sigma 2);
3. *grain*: sparse bright specks (0.8 % of pixels) blurred with sigma 0.6;

mixed as ``0.45 haze + 0.65 crystals + 0.25 grain``, compressed with gamma 0.8 and tinted
icy blue-white (RGB gain 0.84, 0.92, 1.0 of 255); mean intensities are 115-130 of 255.
They look like frost (bright needles and haze over dark gaps) but are not the published
pictures, so frost results are comparable in kind, not in value, with published CIFAR-10-C
frost figures; the manifest written by :mod:`prunecal.corruptions.export` marks frost as
not faithful.
"""
from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

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


@lru_cache(maxsize=4)
def frost_textures(min_side: int = 33) -> tuple[np.ndarray, ...]:
    """The five frost textures, float64 ``(S, S, 3)`` RGB in [0, 255], S = max(160, min_side).

    Deterministic and read-only; cached per size.
    """
    side = max(BASE_SIDE, int(min_side))
    out = []
    for k in range(N_TEXTURES):
        t = _texture(k, side)
        t.setflags(write=False)
        out.append(t)
    return tuple(out)
