"""Noise corruptions: Gaussian, shot (Poisson), impulse (salt-and-pepper), speckle.

Each draws its noise per image from that image's generator (a cheap loop of RNG calls) and
computes the rest in bulk. All work on float64 in [0, 1] like the reference.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ._common import to_uint8, to_unit
from .params import param


def _normal(rngs: Sequence[np.random.Generator], shape: tuple[int, ...]) -> np.ndarray:
    return np.stack([g.standard_normal(shape) for g in rngs]) if rngs else np.zeros((0, *shape))


def gaussian_noise(x: np.ndarray, severity: int, rngs: Sequence[np.random.Generator]) -> np.ndarray:
    """``x + N(0, c)`` on [0, 1], c = 0.04..0.10."""
    c = param("gaussian_noise", severity)
    return to_uint8(to_unit(x) + c * _normal(rngs, x.shape[1:]))


def shot_noise(x: np.ndarray, severity: int, rngs: Sequence[np.random.Generator]) -> np.ndarray:
    """``Poisson(x * c) / c`` on [0, 1], c = 500..50 photons at full scale."""
    c = param("shot_noise", severity)
    lam = to_unit(x) * c
    out = np.empty_like(lam)
    for i, g in enumerate(rngs):
        out[i] = g.poisson(lam[i])
    return to_uint8(out / c)


def impulse_noise(x: np.ndarray, severity: int, rngs: Sequence[np.random.Generator]) -> np.ndarray:
    """Salt-and-pepper: each value (pixel and channel) is replaced with probability ``amount``
    (0.01..0.07), by 0 or 1 with equal odds (``skimage.util.random_noise(mode='s&p')``)."""
    amount = param("impulse_noise", severity)
    u = np.stack([g.random((2, *x.shape[1:])) for g in rngs]) if rngs else np.zeros((0, 2, *x.shape[1:]))
    out = to_unit(x)
    flip = u[:, 0] < amount
    salt = u[:, 1] < 0.5
    out[flip & salt] = 1.0
    out[flip & ~salt] = 0.0
    return to_uint8(out)


def speckle_noise(x: np.ndarray, severity: int, rngs: Sequence[np.random.Generator]) -> np.ndarray:
    """``x + x * N(0, c)`` on [0, 1], c = 0.06..0.20."""
    c = param("speckle_noise", severity)
    xf = to_unit(x)
    return to_uint8(xf + xf * c * _normal(rngs, x.shape[1:]))
