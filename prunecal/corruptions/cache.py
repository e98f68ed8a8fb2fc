"""On-disk cache of corrupted image sets, safe against killed runs and concurrent writers.

Layout: ``root/<corruption>/s<severity>/<key>.npy`` where ``key`` hashes the data
fingerprint (sha256 of the array bytes and shape), corruption, severity, seed,
:data:`CODE_VERSION` and, when ``indices`` other than ``0 .. N-1`` are given, the sha256 of the
indices (so the same images under different index sets never share an entry of a stochastic
corruption, while ``indices=arange(N)`` and deterministic corruptions, whose output is that of
no indices, share the plain entry). A sidecar ``<key>.sha256`` holds the sha256 of the array bytes; a
file that fails to load, has the wrong shape/dtype or a wrong checksum is regenerated.
Writes go to a temporary file in the same folder, are fsynced, then ``os.replace``-d into
place (atomic on POSIX and Windows), so readers never see a half-written file and two
processes filling the same entry both end with a valid one.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from prunecal._atomic import atomic_write

from . import CORRUPTIONS, corrupt
from ._common import check_images, check_indices, check_int

CODE_VERSION = "2"
"""Bump whenever any corruption's output changes: it is part of every cache key.
("2": published frost textures; motion blur and snow as ImageMagick computes them.)"""


def fingerprint(images: np.ndarray) -> str:
    """sha256 hex of ``images``' shape, dtype and bytes."""
    h = hashlib.sha256()
    h.update(f"{images.dtype.str}{images.shape}".encode())
    h.update(np.ascontiguousarray(images).data)
    return h.hexdigest()


def _indices_tag(name: str, idx: np.ndarray | None) -> str:
    """The key suffix of validated int64 ``indices``: empty for None, ``0 .. N-1`` or a
    deterministic corruption (all three give the output of no indices), else
    ``|idx=<sha256 of the int64 little-endian bytes>``."""
    if idx is None or not CORRUPTIONS.get(name).stochastic or np.array_equal(idx, np.arange(idx.shape[0])):
        return ""
    return "|idx=" + hashlib.sha256(np.ascontiguousarray(idx, dtype="<i8").data).hexdigest()


class CorruptionCache:
    """Cache of :func:`~prunecal.corruptions.corrupt` outputs under ``root``.

    Args:
        root: folder (created on first write).
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.hits = 0
        self.misses = 0

    def path(self, images: np.ndarray, name: str, severity: int, seed: int = 0, *,
             indices: np.ndarray | None = None) -> Path:
        """Where the entry for these arguments lives (it may not exist)."""
        x, _ = check_images(images)
        idx = None if indices is None else check_indices(indices, x.shape[0])
        return self._path(fingerprint(x), name, severity, seed, _indices_tag(name, idx))

    def _path(self, fp: str, name: str, severity: int, seed: int, idx_tag: str = "") -> Path:
        key = hashlib.sha256(f"{fp}|{name}|{severity}|{seed}|v{CODE_VERSION}{idx_tag}".encode()).hexdigest()[:32]
        return self.root / name / f"s{severity}" / f"{key}.npy"

    def _load(self, path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
        sum_path = path.with_suffix(".sha256")
        try:
            arr = np.load(path, allow_pickle=False)
            expected = sum_path.read_text().strip()
        except Exception:  # missing, truncated or garbled file: regenerate
            return None
        if arr.dtype != np.uint8 or arr.shape != shape:
            return None
        if hashlib.sha256(np.ascontiguousarray(arr).data).hexdigest() != expected:
            return None
        return arr

    def get(self, images: np.ndarray, name: str, severity: int, seed: int = 0, *,
            indices: np.ndarray | None = None) -> np.ndarray:
        """``corrupt(images, name, severity, seed, indices=indices)``, from disk when a valid
        entry exists.

        Args:
            indices: optional per-image indices (see :func:`~prunecal.corruptions.corrupt`);
                part of the key unless they are ``0 .. N-1``.

        Returns:
            uint8 array of ``images``' shape (a fresh array, safe to modify).
        """
        CORRUPTIONS.get(name)
        check_int(severity, "severity", 1, 5)
        check_int(seed, "seed", 0)
        x, _ = check_images(images)
        idx = None if indices is None else check_indices(indices, x.shape[0])
        images = np.asarray(images)
        path = self._path(fingerprint(x), name, int(severity), int(seed), _indices_tag(name, idx))
        got = self._load(path, images.shape)
        if got is not None:
            self.hits += 1
            return got
        self.misses += 1
        out = corrupt(images, name, severity, seed, indices=idx)
        digest = hashlib.sha256(np.ascontiguousarray(out).data).hexdigest()
        # Checksum first: a reader that sees the new .npy with the old sidecar just regenerates.
        atomic_write(path.with_suffix(".sha256"), lambda f: f.write(digest.encode()))
        atomic_write(path, lambda f: np.save(f, out, allow_pickle=False))
        return out

    def clear(self) -> int:
        """Delete every cache entry under ``root``; returns how many arrays were removed."""
        n = 0
        if self.root.is_dir():
            for p in self.root.rglob("*.npy"):
                p.unlink(missing_ok=True)
                p.with_suffix(".sha256").unlink(missing_ok=True)
                n += 1
        return n
