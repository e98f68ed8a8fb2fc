"""Write a corrupted test set in the official CIFAR-10-C layout (readable by
:func:`prunecal.data.load_cifar10c`).

``out/<corruption>.npy``: uint8 ``(5 N, H, W, 3)``, severities 1..5 stacked in order;
``out/labels.npy``: uint8 ``(5 N,)`` (the labels tiled five times, as published);
``out/manifest.json``: seed, code version, data fingerprint and per-corruption notes.

The arrays are what the published CIFAR-10-C release holds and its loaders read (the
authors' evaluation code, RobustBench's ``load_cifar10c`` and their many copies: ``np.load`` of
``<corruption>.npy`` and ``labels.npy``, severity s = rows ``(s - 1) * n .. s * n``): plain
``.npy`` (format 1.0, ``|u1``, C order, no pickle), file names as published. Those loaders
hard-code n = 10000, so export the whole official test set in its order (image i of the
test set at row ``(s - 1) * 10000 + i``, as published) to use them unchanged; for a subset
pass them n = N (the manifest's ``n_per_severity``).
Every file is written atomically (temp file, fsync, ``os.replace``), so an interrupted run
leaves only complete files, and a rerun skips the corruptions already written for the same
data, seed and code version.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

import numpy as np

from . import CORRUPTIONS, SEVERITIES, available, iter_suite
from ._common import check_images, check_int
from prunecal._atomic import atomic_write

from .cache import CODE_VERSION, fingerprint

MANIFEST = "manifest.json"


def _valid(path: Path, shape: tuple[int, ...]) -> bool:
    try:
        a = np.load(path, mmap_mode="r", allow_pickle=False)
        return a.dtype == np.uint8 and a.shape == shape
    except Exception:
        return False


def write_cifar10c(
    images: np.ndarray,
    labels: np.ndarray,
    out_dir: str | os.PathLike[str],
    names: Iterable[str] | None = None,
    seed: int = 0,
    *,
    workers: int = 1,
    overwrite: bool = False,
) -> list[Path]:
    """Corrupt ``images`` with every corruption and severity and save the official layout.

    Args:
        images: uint8 ``(N, H, W, 3)`` clean test images.
        labels: integer ``(N,)`` class labels in 0..255.
        out_dir: folder (created).
        names: corruptions (default all 19).
        seed: non-negative int; image i of severity s is ``corrupt(images[i:i+1], name, s,
            seed, start_index=i)``.
        workers: processes for :func:`~prunecal.corruptions.iter_suite`.
        overwrite: regenerate files that already exist for the same data, seed and version.

    Returns:
        Paths of the corruption files (written or kept).
    """
    x, single = check_images(images)
    if single:
        raise ValueError(f"images must be a batch (N, H, W, 3), got shape {np.shape(images)}")
    sd = check_int(seed, "seed", 0)
    y = np.asarray(labels)
    if y.shape != (x.shape[0],) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be integers of shape ({x.shape[0]},), got {y.dtype} {y.shape}")
    if y.size and (y.min() < 0 or y.max() > 255):
        raise ValueError("labels must lie in 0..255 (stored as uint8 like the published labels.npy)")
    todo_names = available() if names is None else [CORRUPTIONS.get(n).name for n in names]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fp = fingerprint(x)
    mpath = out / MANIFEST
    manifest: dict = {}
    if mpath.is_file():
        try:
            manifest = json.loads(mpath.read_text())
        except (OSError, ValueError):
            manifest = {}
    same = (manifest.get("data_sha256") == fp and manifest.get("seed") == sd
            and manifest.get("code_version") == CODE_VERSION)
    if not same:
        manifest = {"data_sha256": fp, "seed": sd, "code_version": CODE_VERSION,
                    "n_images": int(x.shape[0]), "n_per_severity": int(x.shape[0]),
                    "severities": list(SEVERITIES), "layout": "official CIFAR-10-C: rows (severity - 1) * "
                    "n_per_severity + i hold image i at that severity; labels.npy tiled 5 times",
                    "corruptions": {}}
    shape = (len(SEVERITIES) * x.shape[0], *x.shape[1:])
    done = set(manifest["corruptions"]) if same and not overwrite else set()
    todo = [n for n in todo_names if not (n in done and _valid(out / f"{n}.npy", shape))]

    tiled = np.tile(y.astype(np.uint8), len(SEVERITIES))
    lpath = out / "labels.npy"
    if not (lpath.is_file() and _valid_labels(lpath, tiled)):
        atomic_write(lpath, lambda f: np.save(f, tiled, allow_pickle=False))

    buf: dict[str, np.ndarray] = {}
    for name, sev, arr in iter_suite(x, todo, SEVERITIES, sd, workers=workers):
        if name not in buf:
            buf[name] = np.empty(shape, np.uint8)
        n = x.shape[0]
        buf[name][(sev - 1) * n:sev * n] = arr
        if sev == SEVERITIES[-1]:
            data = buf.pop(name)
            atomic_write(out / f"{name}.npy", lambda f, d=data: np.save(f, d, allow_pickle=False))
            spec = CORRUPTIONS.get(name)
            manifest["corruptions"][name] = {"family": spec.family, "stochastic": spec.stochastic,
                                             "faithful_to_published": spec.faithful}
            text = json.dumps(manifest, indent=1, sort_keys=True)
            atomic_write(mpath, lambda f, t=text: f.write(t.encode()))
    return [out / f"{n}.npy" for n in todo_names]


def _valid_labels(path: Path, expected: np.ndarray) -> bool:
    try:
        return bool(np.array_equal(np.load(path, allow_pickle=False), expected))
    except Exception:
        return False
