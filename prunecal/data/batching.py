"""Mini-batches of uint8 images converted to normalised tensors one batch at a time."""
from __future__ import annotations

from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from .transforms import check_images, to_tensor

__all__ = ["iterate_batches"]


def iterate_batches(images: np.ndarray, labels: np.ndarray, batch_size: int,
                    mean: Sequence[float], std: Sequence[float], *,
                    shuffle: bool = False, rng: np.random.Generator | int | None = None,
                    drop_last: bool = False,
                    augment: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None,
                    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(x float32 (B, C, H, W), y int64 (B,))`` batches in order (or shuffled).

    Only the current batch is converted to float (``images`` stays uint8).

    Args:
        images: uint8 ``(N, H, W, C)``; labels: ints ``(N,)``.
        batch_size: images per batch (> 0); the last batch may be smaller unless ``drop_last``.
        mean, std: normalisation (see :func:`to_tensor`).
        shuffle: visit images in a random order drawn from ``rng``.
        augment: ``f(uint8 batch, rng) -> uint8 batch`` applied before conversion
            (e.g. :func:`random_crop_flip`).
    """
    images = check_images(images)
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise ValueError(f"labels must have shape ({images.shape[0]},) to match images, got {labels.shape}")
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"labels must be integers, got {labels.dtype}")
    if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    n = images.shape[0]
    order = gen.permutation(n) if shuffle else None
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        sel = slice(start, min(start + batch_size, n)) if order is None else order[start:start + batch_size]
        xb = images[sel]
        if augment is not None:
            xb = augment(xb, gen)
        yield to_tensor(xb, mean, std), torch.from_numpy(np.ascontiguousarray(labels[sel], dtype=np.int64))
