"""Per-image random generators: image i of a sweep depends only on
``(seed, corruption, severity, index_i)`` with ``index_i = start_index + i`` or, given explicit
``indices``, ``index_i = indices[i]`` (e.g. each image's index in the whole test set), so any
slice or subset regenerates identically."""
from __future__ import annotations

from typing import Sequence

import numpy as np

CORRUPTION_IDS: dict[str, int] = {
    # Stable ids (never Python's hash, never re-numbered): the order of the reference generator.
    "gaussian_noise": 0, "shot_noise": 1, "impulse_noise": 2, "defocus_blur": 3,
    "glass_blur": 4, "motion_blur": 5, "zoom_blur": 6, "snow": 7, "frost": 8, "fog": 9,
    "brightness": 10, "contrast": 11, "elastic_transform": 12, "pixelate": 13,
    "jpeg_compression": 14, "speckle_noise": 15, "gaussian_blur": 16, "spatter": 17,
    "saturate": 18,
}


def image_rng(seed: int, name: str, severity: int, index: int) -> np.random.Generator:
    """The generator of one image: PCG64 seeded by ``SeedSequence([seed, id, severity, index])``."""
    ss = np.random.SeedSequence([int(seed), CORRUPTION_IDS[name], int(severity), int(index)])
    return np.random.Generator(np.random.PCG64(ss))


def image_rngs(seed: int, name: str, severity: int, start_index: int | None = None, n: int | None = None,
               *, indices: Sequence[int] | np.ndarray | None = None) -> list[np.random.Generator]:
    """Generators of images ``start_index .. start_index + n - 1``, or (``indices``, instead of
    ``start_index`` and ``n``) of the images at those indices, in their order.

    ``image_rngs(s, c, v, a, n)`` equals ``image_rngs(s, c, v, indices=range(a, a + n))``.
    ``indices`` is not validated here (:func:`~prunecal.corruptions.corrupt` does it).
    """
    if indices is not None:
        if start_index is not None:
            raise ValueError("give start_index (with n) or indices, not both")
        if n is not None and n != len(indices):
            raise ValueError(f"n ({n}) does not match len(indices) ({len(indices)})")
        return [image_rng(seed, name, severity, int(i)) for i in indices]
    if n is None:
        raise TypeError("image_rngs needs n (the number of images) or indices")
    start = 0 if start_index is None else start_index
    return [image_rng(seed, name, severity, start + i) for i in range(n)]
