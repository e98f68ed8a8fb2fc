"""Per-image random generators: image i of a sweep depends only on
``(seed, corruption, severity, start_index + i)``, so any slice regenerates identically."""
from __future__ import annotations

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


def image_rngs(seed: int, name: str, severity: int, start_index: int, n: int) -> list[np.random.Generator]:
    """Generators of images ``start_index .. start_index + n - 1``."""
    return [image_rng(seed, name, severity, start_index + i) for i in range(n)]
