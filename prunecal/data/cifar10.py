"""CIFAR-10 (Krizhevsky 2009) from the official folders or prunecal's npz layouts. Never downloads.

Accepted ``path`` (folder or file, detected automatically):

- the official python folder ``cifar-10-batches-py`` (pickled ``data_batch_1..5``,
  ``test_batch``; ``data`` uint8 (N, 3072) row-major CHW, ``labels``) or one batch file;
- the official binary folder ``cifar-10-batches-bin`` (``data_batch_1..5.bin``,
  ``test_batch.bin``; records of 1 label byte + 3072 pixel bytes) or one ``.bin`` file;
- ``.npz`` files: ``x_test``/``y_test`` and ``x_train``/``y_train`` (e.g.
  ``exact_subset.npz``), ``x``/``y`` (e.g. ``test.npz``), or JPEG bytes
  ``jpeg``/``offsets``/``y`` (e.g. ``train_jpeg.npz``, decoded with Pillow in threads);
- a folder holding any of the above (the official folders are preferred, then
  ``test.npz`` / ``train_jpeg.npz``, then ``exact_subset.npz``).

Note for prunecal's shared data: ``test.npz`` and ``train_jpeg.npz`` are JPEG copies
(about 5.8/255 mean absolute error), so a folder path gives the full but mildly
JPEG-degraded test set; pass ``exact_subset.npz`` itself for original pixels.

Python pickles are read with a restricted unpickler that only rebuilds numpy arrays,
so a hostile file cannot run code.
"""
from __future__ import annotations

import io
import os
import pickle
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["CLASS_NAMES", "FORMATS", "load_cifar10", "load_class_names", "resolve_cifar10"]

CLASS_NAMES: tuple[str, ...] = ("airplane", "automobile", "bird", "cat", "deer",
                                "dog", "frog", "horse", "ship", "truck")
"""CIFAR-10 class names in label order."""

FORMATS = ("official python folder 'cifar-10-batches-py' (data_batch_1..5, test_batch) or one batch file; "
           "official binary folder 'cifar-10-batches-bin' (data_batch_1..5.bin, test_batch.bin) or one .bin file; "
           ".npz with x_test/y_test + x_train/y_train, x/y, or jpeg/offsets/y")
_SPLITS = ("train", "test")
_RECORD = 1 + 3072
_PY_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
_NPZ_FILES = {"test": ["test.npz", "exact_subset.npz"],
              "train": ["train.npz", "train_jpeg.npz", "exact_subset.npz"]}


def _missing(path: Path, what: str) -> FileNotFoundError:
    return FileNotFoundError(f"no CIFAR-10 data at {path} ({what}); accepted formats: {FORMATS}")


class _SafeUnpickler(pickle.Unpickler):
    """Only what numpy arrays in a CIFAR batch need; anything else is refused."""

    _ALLOWED = {
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"), ("copy_reg", "_reconstructor"), ("copyreg", "_reconstructor"),
        ("__builtin__", "object"), ("builtins", "object"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} (not part of a CIFAR batch)")
        if module.startswith("numpy.core"):
            module = module.replace("numpy.core", "numpy._core", 1) if hasattr(np, "_core") else module
        if module == "__builtin__":
            module = "builtins"
        if module == "copy_reg":
            module = "copyreg"
        return super().find_class(module, name)


_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_NPY_MAGIC = b"\x93NUMPY"


def _check_magic(path: Path, kind: str) -> None:
    """A clear one-line error for a file that is not what its name says (numpy would otherwise
    take any non-zip, non-npy bytes for a pickle and talk about ``allow_pickle``)."""
    try:
        with open(path, "rb") as f:
            head = f.read(6)
    except OSError as e:
        raise ValueError(f"could not read {path}: {e.strerror or e}") from None
    if kind == "npz":
        if head.startswith(_ZIP_MAGIC):
            return
        what = ("an .npy array, not an npz archive" if head.startswith(_NPY_MAGIC)
                else "empty" if not head else "not a zip archive of .npy arrays")
        raise ValueError(f"{path} is not an npz file ({what})")
    if not head.startswith(_NPY_MAGIC):
        what = ("an npz archive" if head.startswith(_ZIP_MAGIC) else "empty" if not head
                else "no .npy header")
        raise ValueError(f"{path} is not an .npy file ({what})")


def _labels(path: Path, y, what: str = "labels") -> np.ndarray:
    """Labels as int64, refusing values that are not whole numbers (3.7 is not truncated to 3)."""
    y = np.asarray(y)
    if y.dtype == np.bool_ or not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)):
        raise ValueError(f"{path}: {what} must be integers 0..9, got dtype {y.dtype}")
    if np.issubdtype(y.dtype, np.floating):
        bad = ~np.isfinite(y) | (y != np.round(y))
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"{path}: {what} must be whole numbers 0..9, got {y.flat[i].item()!r} at "
                             f"position {i} (not truncated)")
    if y.size and (y.min() < 0 or y.max() > 9):
        raise ValueError(f"{path}: {what} outside 0..9 (min {y.min()}, max {y.max()}); corrupt "
                         "file or not CIFAR-10")
    return y.astype(np.int64)


def _get(d: dict, key: str):
    return d[key] if key in d else d.get(key.encode())


def _read_py_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            d = _SafeUnpickler(f, encoding="bytes").load()
    except Exception as e:  # noqa: BLE001 - any unpickling failure = unreadable
        raise ValueError(f"could not read CIFAR-10 batch {path}: {type(e).__name__}: {e}") from None
    if not isinstance(d, dict):
        raise ValueError(f"could not read CIFAR-10 batch {path}: expected a dict, got {type(d).__name__}")
    data, labels = _get(d, "data"), _get(d, "labels")
    if data is None or labels is None:
        keys = sorted(k.decode() if isinstance(k, bytes) else str(k) for k in d)
        raise ValueError(f"CIFAR-10 batch {path} lacks 'data'/'labels' (keys: {keys})")
    data = np.asarray(data)
    labels = _labels(path, labels)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or labels.shape != (data.shape[0],):
        raise ValueError(f"CIFAR-10 batch {path}: expected data uint8 (N, 3072) and N labels, "
                         f"got {data.dtype} {data.shape} and {labels.shape}")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def _bin_records(path: Path) -> np.ndarray:
    size = path.stat().st_size
    if size == 0 or size % _RECORD:
        raise ValueError(f"CIFAR-10 binary file {path} is truncated or corrupt: {size} bytes is not a "
                         f"multiple of the {_RECORD}-byte record")
    return np.memmap(path, dtype=np.uint8, mode="r").reshape(-1, _RECORD)


def _decode_records(rec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = rec[:, 0].astype(np.int64)
    images = np.ascontiguousarray(rec[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return images, labels


def _select(n: int, indices: Sequence[int] | np.ndarray | None, limit: int | None) -> np.ndarray | slice:
    """Row selection over ``n`` images: ``indices`` (validated) then the first ``limit``."""
    if limit is not None and (not isinstance(limit, (int, np.integer)) or isinstance(limit, bool) or limit < 0):
        raise ValueError(f"limit must be an int >= 0, got {limit!r}")
    if indices is None:
        return slice(0, n if limit is None else min(limit, n))
    idx = np.asarray(indices)
    if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
        raise ValueError(f"indices must be a 1-D sequence of ints, got shape {idx.shape} dtype {idx.dtype}")
    idx = idx.astype(np.int64)
    if idx.size and (idx.min() < -n or idx.max() >= n):
        raise ValueError(f"indices out of range for {n} images: min {idx.min()}, max {idx.max()}")
    idx = np.where(idx < 0, idx + n, idx)
    return idx if limit is None else idx[:limit]


def _decode_one(buf: np.ndarray, decoder: str) -> np.ndarray:
    if decoder == "opencv":
        import cv2

        a = cv2.imdecode(buf, cv2.IMREAD_COLOR)
        if a is None:
            raise ValueError("OpenCV could not decode the bytes")
        return a[:, :, ::-1]
    from PIL import Image

    with Image.open(io.BytesIO(buf.tobytes())) as im:
        return np.asarray(im.convert("RGB"))


def _decode_jpegs(path: Path, buf: np.ndarray, offsets: np.ndarray, rows: np.ndarray,
                  workers: int | None, decoder: str) -> np.ndarray:
    if decoder not in ("pillow", "opencv"):
        raise ValueError(f"decoder must be 'pillow' or 'opencv', got {decoder!r}")
    out = np.empty((len(rows), 32, 32, 3), dtype=np.uint8)

    def work(chunk: np.ndarray) -> None:
        for j in chunk:
            i = int(rows[j])
            try:
                a = _decode_one(buf[offsets[i]:offsets[i + 1]], decoder)
            except Exception as e:  # noqa: BLE001
                raise ValueError(f"could not decode JPEG image {i} in {path}: {e}") from None
            if a.shape != (32, 32, 3):
                raise ValueError(f"JPEG image {i} in {path} has shape {a.shape}, expected (32, 32, 3)")
            out[j] = a

    n_workers = max(1, min(workers or 1, len(rows) // 256 + 1))
    chunks = np.array_split(np.arange(len(rows)), n_workers * 4) if len(rows) else []
    if n_workers == 1:
        for c in chunks:
            work(c)
    else:
        with ThreadPoolExecutor(n_workers) as ex:
            for fut in [ex.submit(work, c) for c in chunks]:
                fut.result()
    return out


def _load_npz(path: Path, split: str, indices, limit, workers, decoder) -> tuple[np.ndarray, np.ndarray]:
    _check_magic(path, "npz")
    try:
        z = np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"could not read CIFAR-10 npz {path}: {type(e).__name__}: {e}") from None
    try:
        with z:
            keys = set(z.files)
            if {"jpeg", "offsets", "y"} <= keys:
                _check_single_split(path, split)
                buf, offsets = z["jpeg"], z["offsets"].astype(np.int64)
                y = _labels(path, z["y"], "y")
                n = len(y)
                if offsets.shape != (n + 1,) or offsets[0] < 0 or offsets[-1] > buf.size or np.any(np.diff(offsets) < 0):
                    raise ValueError(f"CIFAR-10 npz {path}: offsets inconsistent with {n} labels and "
                                     f"{buf.size} JPEG bytes")
                sel = _select(n, indices, limit)
                rows = np.arange(n)[sel]
                return _decode_jpegs(path, buf, offsets, rows, workers, decoder), y[rows]
            if f"x_{split}" in keys and f"y_{split}" in keys:
                xk, yk = f"x_{split}", f"y_{split}"
            elif {"x", "y"} <= keys:
                _check_single_split(path, split)
                xk, yk = "x", "y"
            else:
                raise ValueError(f"CIFAR-10 npz {path} has no {split!r} data: keys {sorted(keys)}; expected "
                                 f"x_{split}/y_{split}, x/y, or jpeg/offsets/y")
            x, y = z[xk], _labels(path, z[yk], yk)
            if x.ndim < 1 or y.ndim != 1 or x.shape[0] != y.shape[0]:
                raise ValueError(f"CIFAR-10 npz {path}: {x.shape[0] if x.ndim else 0} images ({xk}) but "
                                 f"{y.shape[0] if y.ndim else 0} labels ({yk}); they must match")
            sel = _select(len(x), indices, limit)
            return x[sel], y[sel]
    except ValueError:
        raise
    except Exception as e:  # noqa: BLE001 - zip/CRC/truncation errors surface on access
        raise ValueError(f"could not read CIFAR-10 npz {path}: {type(e).__name__}: {e}") from None


def _check_single_split(path: Path, split: str) -> None:
    stem = path.stem.lower()
    other = "train" if split == "test" else "test"
    if other in stem and split not in stem:
        raise ValueError(f"{path} holds the {other!r} split only (from its name); asked for split={split!r}")


def resolve_cifar10(path: str | os.PathLike, split: str = "test") -> tuple[str, list[Path]]:
    """Detect the format at ``path``: ``('python'|'binary'|'npz', files)`` for ``split``."""
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
    p = Path(path)
    if not p.exists():
        raise _missing(p, "path does not exist")
    if p.is_file():
        if p.suffix == ".npz":
            return "npz", [p]
        if p.suffix == ".bin":
            return "binary", [p]
        with open(p, "rb") as f:
            head = f.read(1)
        if head == b"\x80":
            return "python", [p]
        if p.stat().st_size % _RECORD == 0 and p.stat().st_size:
            return "binary", [p]
        raise ValueError(f"could not read {p}: not a CIFAR-10 file; accepted formats: {FORMATS}")
    for d, fmt, names in ((p / "cifar-10-batches-py", "python", _PY_FILES[split]),
                          (p, "python", _PY_FILES[split]),
                          (p / "cifar-10-batches-bin", "binary", [n + ".bin" for n in _PY_FILES[split]]),
                          (p, "binary", [n + ".bin" for n in _PY_FILES[split]])):
        files = [d / n for n in names]
        present = [f.is_file() for f in files]
        if any(present):
            if not all(present):
                absent = [str(f) for f, ok in zip(files, present) if not ok]
                raise FileNotFoundError(f"incomplete CIFAR-10 {fmt} folder {d}: missing {', '.join(absent)}")
            return fmt, files
    for name in _NPZ_FILES[split]:
        for d in (p, p / "cifar10"):
            if (d / name).is_file():
                return "npz", [d / name]
    looked = ", ".join(["cifar-10-batches-py/", "cifar-10-batches-bin/", *_PY_FILES[split][:1],
                        *_NPZ_FILES[split]])
    raise _missing(p, f"found none of {looked} for split {split!r}")


def load_cifar10(path: str | os.PathLike, split: str = "test", *, limit: int | None = None,
                 indices: Sequence[int] | np.ndarray | None = None,
                 workers: int | None = None, decoder: str = "pillow") -> tuple[np.ndarray, np.ndarray]:
    """Load CIFAR-10 images and labels.

    Args:
        path: folder or file in one of the accepted formats (see the module docstring).
        split: ``"test"`` (default) or ``"train"``; a single batch/file loads what it holds.
        limit: keep the first ``limit`` images (after ``indices``).
        indices: positions to take, in the given order (negative ones count from the end).
        workers: JPEG decoding threads (default 1: with Pillow, threads do not pay off
            on 32x32 images).
        decoder: ``"pillow"`` (default, the reference decoder of the JPEG npz) or
            ``"opencv"`` (about 3x faster: 1.3 s vs 3.7 s for the 50,000 images of
            ``train_jpeg.npz`` on the 2-core x86 dev machine, one thread, measured with
            ``load_cifar10("../shared/data/cifar10/train_jpeg.npz", "train", decoder=d)``;
            bit-identical to Pillow there, as both link libjpeg-turbo, but not
            guaranteed with other builds).

    Returns:
        ``images`` uint8 ``(N, 32, 32, 3)`` NHWC RGB and ``labels`` int64 ``(N,)`` in 0..9.

    Raises:
        FileNotFoundError: nothing loadable at ``path`` (names the path and the formats).
        ValueError: a truncated or corrupt file (names the path), bad ``split``/``limit``/``indices``.
    """
    _select(0, None, limit)  # validates limit before any reading
    fmt, files = resolve_cifar10(path, split)
    if fmt == "npz":
        x, y = _load_npz(files[0], split, indices, limit, workers, decoder)
    elif fmt == "binary":
        recs = [_bin_records(f) for f in files]
        sizes = [len(r) for r in recs]
        sel = _select(sum(sizes), indices, limit)
        rows = np.arange(sum(sizes))[sel]
        starts = np.cumsum([0] + sizes)
        parts = []
        order = np.empty(0, dtype=np.int64)
        for k, r in enumerate(recs):
            mask = (rows >= starts[k]) & (rows < starts[k + 1])
            if mask.any():
                parts.append(np.asarray(r[rows[mask] - starts[k]]))
                order = np.concatenate([order, np.nonzero(mask)[0]])
        rec = np.concatenate(parts) if parts else np.empty((0, _RECORD), np.uint8)
        inv = np.empty_like(order)
        inv[order] = np.arange(len(order))
        x, y = _decode_records(rec[inv])
    else:
        needed = None
        if indices is None and limit is not None:
            needed = limit
        xs, ys, total = [], [], 0
        for f in files:
            if needed is not None and xs and total >= needed:
                break
            xb, yb = _read_py_batch(f)
            xs.append(xb)
            ys.append(yb)
            total += len(yb)
        x, y = np.concatenate(xs), np.concatenate(ys)
        sel = _select(len(y), indices, limit)
        x, y = x[sel], y[sel]
    x = np.ascontiguousarray(x)
    y = np.asarray(y, dtype=np.int64)
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (32, 32, 3) or y.shape != (x.shape[0],):
        raise ValueError(f"CIFAR-10 data at {path}: expected uint8 (N, 32, 32, 3) images and N labels, "
                         f"got {x.dtype} {x.shape} and {y.shape}")
    if y.size and (y.min() < 0 or y.max() > 9):
        raise ValueError(f"CIFAR-10 data at {path}: labels outside 0..9 (min {y.min()}, max {y.max()}); "
                         "corrupt file or not CIFAR-10")
    return x, y


def load_class_names(path: str | os.PathLike | None = None) -> tuple[str, ...]:
    """Class names stored at ``path`` (python ``batches.meta``, binary ``batches.meta.txt`` or an
    npz's ``class_names``; a folder or the file), else :data:`CLASS_NAMES`."""
    if path is None:
        return CLASS_NAMES
    p = Path(path)
    meta = ["batches.meta", "batches.meta.txt"]
    cands = [p] if p.is_file() else [
        *(d / m for d in (p, p / "cifar-10-batches-py", p / "cifar-10-batches-bin") for m in meta),
        *(d / n for d in (p, p / "cifar10") for n in _NPZ_FILES["test"] + _NPZ_FILES["train"])]
    for c in cands:
        if not c.is_file():
            continue
        try:
            if c.suffix == ".txt":
                names = tuple(s.strip() for s in c.read_text().splitlines() if s.strip())
            elif c.suffix == ".npz":
                _check_magic(c, "npz")
                with np.load(c, allow_pickle=False) as z:
                    if "class_names" not in z.files:
                        continue
                    names = tuple(str(s) for s in z["class_names"])
            elif c.name == "batches.meta":
                with open(c, "rb") as f:
                    d = _SafeUnpickler(f, encoding="bytes").load()
                raw = _get(d, "label_names") if isinstance(d, dict) else None
                if raw is None:
                    continue
                names = tuple(v.decode() if isinstance(v, bytes) else str(v) for v in raw)
            else:
                continue
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"could not read CIFAR-10 class names from {c}: {type(e).__name__}: {e}") from None
        if len(names) == 10:
            return names
    return CLASS_NAMES
