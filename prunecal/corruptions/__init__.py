"""The CIFAR-10-C corruption suite (Hendrycks & Dietterich, ICLR 2019), CIFAR-10 parameters.

Usage::

    from prunecal.corruptions import corrupt, BENCHMARK
    xc = corrupt(images_uint8_nhwc, "fog", severity=3, seed=0)

``corrupt(images, name, severity, seed=0, *, start_index=None, indices=None)`` returns uint8
of the input's shape. Image i depends only on ``(seed, name, severity, index_i)``, where
``index_i = start_index + i`` (default ``start_index`` 0) or, given ``indices``,
``index_i = indices[i]``: its random numbers come from
``np.random.SeedSequence([seed, CORRUPTION_IDS[name], severity, index_i])``, so any slice of a
sweep regenerates identically and batch size / chunking never matter. Pass each image's index
in the whole test set as ``indices`` when corrupting a subset (``corrupt(x[idx], ...,
indices=idx)`` equals ``corrupt(x, ...)[idx]``): the evaluation sweep does this.

Also: :func:`iter_suite` (every corruption x severity, optionally in worker processes),
:class:`CorruptionCache` (atomic on-disk cache), :func:`prunecal.corruptions.export.write_cifar10c`
and ``python -m prunecal.corruptions OUT --data test.npz`` (a folder in the official
CIFAR-10-C layout).

Every corruption follows the published generator (``hendrycks/robustness``,
``make_cifar_c.py``): motion blur and snow's streaks compute ImageMagick's motion blur bit for
bit (without ImageMagick), frost crops the published frost pictures (shipped in
``prunecal/corruptions/frost/``). The random streams are ours, so stochastic corruptions match
the published ones in distribution, not pixel for pixel; ``docs/corruptions.md`` gives the
measured agreement per corruption.
"""
from __future__ import annotations

import multiprocessing as mp
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from ..registry import Registry, UnknownNameError
from . import blur, digital, noise, textures, weather
from ._common import check_images, check_indices, check_int
from ._rng import CORRUPTION_IDS, image_rngs
from .params import PARAMS

CorruptFn = Callable[[np.ndarray, int, Sequence[np.random.Generator]], np.ndarray]


@dataclass(frozen=True)
class Corruption:
    """One registered corruption.

    Attributes:
        name: registry name (also the CIFAR-10-C file stem).
        fn: ``fn(images uint8 (N, H, W, 3), severity, rngs) -> uint8 (N, H, W, 3)``, one
            generator per image.
        family: ``noise``, ``blur``, ``weather`` or ``digital``.
        stochastic: whether the output depends on the seed.
        faithful: whether it follows the published algorithm exactly (up to the random
            stream); True for all, except ``frost`` when the published textures are missing
            (procedural fallback, see :mod:`prunecal.corruptions.textures`).
    """

    name: str
    fn: CorruptFn
    family: str
    stochastic: bool
    faithful: bool = True


CORRUPTIONS: Registry[Corruption] = Registry("corruption")

BENCHMARK: tuple[str, ...] = (
    "gaussian_noise", "shot_noise", "impulse_noise",
    "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog",
    "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)
"""The 15 corruptions of the CIFAR-10-C benchmark, in the published order."""

EXTRA: tuple[str, ...] = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
"""The 4 held-out corruptions (for validation, not part of mCE)."""

SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)

_TABLE: list[tuple[str, CorruptFn, str, bool, bool]] = [
    ("gaussian_noise", noise.gaussian_noise, "noise", True, True),
    ("shot_noise", noise.shot_noise, "noise", True, True),
    ("impulse_noise", noise.impulse_noise, "noise", True, True),
    ("defocus_blur", blur.defocus_blur, "blur", False, True),
    ("glass_blur", blur.glass_blur, "blur", True, True),
    ("motion_blur", blur.motion_blur, "blur", True, True),
    ("zoom_blur", blur.zoom_blur, "blur", False, True),
    ("snow", weather.snow, "weather", True, True),
    ("frost", weather.frost, "weather", True, textures.published_available()),
    ("fog", weather.fog, "weather", True, True),
    ("brightness", digital.brightness, "digital", False, True),
    ("contrast", digital.contrast, "digital", False, True),
    ("elastic_transform", digital.elastic_transform, "digital", True, True),
    ("pixelate", digital.pixelate, "digital", False, True),
    ("jpeg_compression", digital.jpeg_compression, "digital", False, True),
    ("speckle_noise", noise.speckle_noise, "noise", True, True),
    ("gaussian_blur", blur.gaussian_blur, "blur", False, True),
    ("spatter", weather.spatter, "weather", True, True),
    ("saturate", digital.saturate, "digital", False, True),
]
for _name, _fn, _family, _stoch, _faithful in _TABLE:
    CORRUPTIONS.register(_name, Corruption(_name, _fn, _family, _stoch, _faithful))
del _name, _fn, _family, _stoch, _faithful

CHUNK = 512
"""Images processed per step (bounds the float64 working memory to ~40 MB at 32x32)."""


def available() -> list[str]:
    """All corruption names: :data:`BENCHMARK` then :data:`EXTRA`."""
    return CORRUPTIONS.names()


def corrupt(images: np.ndarray, name: str, severity: int, seed: int = 0, *, start_index: int | None = None,
            indices: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
    """Apply corruption ``name`` at ``severity`` to uint8 RGB images.

    Args:
        images: uint8 ``(N, H, W, 3)`` or a single ``(H, W, 3)`` image, RGB. Parameters are
            the published CIFAR-10 ones (chosen for 32x32); other sizes work but keep them.
        name: one of :func:`available`.
        severity: 1..5.
        seed: non-negative int.
        start_index: index of ``images[0]`` in the whole sweep (for regenerating slices);
            default 0. Image i gets index ``start_index + i``.
        indices: instead of ``start_index``, the index of every image (1-D non-negative ints,
            one per image, duplicates allowed; length 1 for a single ``(H, W, 3)`` image), e.g.
            the test-set index of each image of a subset: ``corrupt(x[idx], ..., indices=idx)``
            equals ``corrupt(x, ...)[idx]``.

    Returns:
        uint8 array of the input's shape; image i depends only on
        ``(seed, name, severity, index_i)`` (``start_index + i`` or ``indices[i]``).

    Raises:
        TypeError: non-uint8 images, non-int severity/seed/start_index, non-int indices.
        ValueError: bad shape, severity outside 1..5, negative seed/start_index, indices not
            1-D / of the wrong length / negative, both start_index and indices given;
            :class:`~prunecal.registry.UnknownNameError` for an unknown name.
    """
    spec = CORRUPTIONS.get(name)
    sev = check_int(severity, "severity", 1, 5)
    sd = check_int(seed, "seed", 0)
    if indices is not None and start_index is not None:
        raise ValueError("give start_index or indices, not both")
    start = 0 if start_index is None else check_int(start_index, "start_index", 0)
    x, single = check_images(images)
    idx = None if indices is None else check_indices(indices, x.shape[0])
    x = np.ascontiguousarray(x)
    out = np.empty_like(x)
    for lo in range(0, x.shape[0], CHUNK):
        hi = min(lo + CHUNK, x.shape[0])
        if not spec.stochastic:
            rngs = []
        elif idx is not None:
            rngs = image_rngs(sd, name, sev, indices=idx[lo:hi])
        else:
            rngs = image_rngs(sd, name, sev, start + lo, hi - lo)
        res = spec.fn(x[lo:hi], sev, rngs)
        if res.shape != x[lo:hi].shape or res.dtype != np.uint8:  # pragma: no cover - internal bug guard
            raise RuntimeError(f"corruption {name!r} returned {res.dtype} {res.shape}")
        out[lo:hi] = res
    return out[0] if single else out


_WORKER_IMAGES: np.ndarray | None = None


def _init_worker(images: np.ndarray) -> None:
    global _WORKER_IMAGES
    _WORKER_IMAGES = images


def _work(name: str, severity: int, seed: int) -> np.ndarray:
    assert _WORKER_IMAGES is not None
    return corrupt(_WORKER_IMAGES, name, severity, seed)


def iter_suite(
    images: np.ndarray,
    names: Iterable[str] | None = None,
    severities: Iterable[int] = SEVERITIES,
    seed: int = 0,
    *,
    workers: int = 1,
) -> Iterator[tuple[str, int, np.ndarray]]:
    """Yield ``(name, severity, corrupt(images, name, severity, seed))`` for every pair, in
    order (names outer, severities inner).

    Args:
        images: uint8 ``(N, H, W, 3)`` (or one ``(H, W, 3)`` image: results have its shape).
        names: corruptions (default: all 19, :data:`BENCHMARK` then :data:`EXTRA`).
        severities: default 1..5.
        seed: non-negative int.
        workers: processes (``spawn``); 1 runs in this process. With more, the images are
            sent once to each worker and at most ``2 * workers`` results are held at a time.
            Results are identical whatever ``workers`` is. As with any ``spawn`` pool, a
            script calling this with ``workers > 1`` needs an ``if __name__ == "__main__":``
            guard.
    """
    x, single = check_images(images)
    sd = check_int(seed, "seed", 0)
    nw = check_int(workers, "workers", 1)
    sevs = [check_int(s, "severity", 1, 5) for s in severities]
    jobs = [(CORRUPTIONS.get(n).name, s) for n in (available() if names is None else list(names)) for s in sevs]
    if nw == 1:
        for n, s in jobs:
            out = corrupt(x, n, s, sd)
            yield n, s, (out[0] if single else out)
        return
    ex = ProcessPoolExecutor(nw, mp_context=mp.get_context("spawn"), initializer=_init_worker, initargs=(x,))
    try:
        pending: deque[tuple[str, int, Future[np.ndarray]]] = deque()
        it = iter(jobs)
        for n, s in it:
            pending.append((n, s, ex.submit(_work, n, s, sd)))
            if len(pending) >= 2 * nw:
                break
        while pending:
            n, s, fut = pending.popleft()
            res = fut.result()
            nxt = next(it, None)
            if nxt is not None:
                pending.append((nxt[0], nxt[1], ex.submit(_work, nxt[0], nxt[1], sd)))
            yield n, s, (res[0] if single else res)
    finally:  # also when the caller stops early: drop queued jobs, reap the workers
        ex.shutdown(wait=True, cancel_futures=True)


from .cache import CorruptionCache  # noqa: E402  (needs corrupt above)

__all__ = [
    "BENCHMARK", "CORRUPTIONS", "CORRUPTION_IDS", "Corruption", "CorruptionCache", "EXTRA", "PARAMS", "SEVERITIES",
    "UnknownNameError", "available", "corrupt", "iter_suite",
]
