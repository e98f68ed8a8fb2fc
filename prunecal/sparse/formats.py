"""Sparse storage formats for pruned conv / linear weights.

A conv weight ``(C_out, C_in/groups, kh, kw)`` is viewed as the matrix
``[C_out, K = C_in/groups * kh * kw]`` (column ``k = (ci * kh + ky) * kw + kx``, the order of
``w.reshape(C_out, -1)``); a linear weight ``[out, in]`` is used as it is.

- :class:`CSRWeight`: compressed sparse rows, one row per output channel.
- :class:`BSRWeight`: blocks of ``r`` (4 or 8) consecutive output channels x 1 column,
  zero-padded inside a block (``C_out`` padded up to a multiple of ``r``), so that the kernel
  shares every input load between ``r`` output channels (SIMD over output channels).

Both validate their arrays on construction (a hand-built bad CSR is a ``ValueError``, never a
crash in the native kernels), round-trip exactly through :meth:`to_dense`, and save to /
load from ``.npz`` files. The kernel-ready packed form is built once on first use and cached
inside the object (:meth:`packed`); the arrays are read-only so the cache cannot go stale.
"""
from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any, Union

import numpy as np

try:  # torch is a dependency of the package, but the formats work on numpy alone
    import torch
except ImportError:  # pragma: no cover
    torch = None  # type: ignore[assignment]

PathLike = Union[str, os.PathLike]
ArrayLike = Any  # torch.Tensor | np.ndarray

_FORMAT_VERSION = 1
BLOCK_ROWS = (4, 8)


def _to_numpy_f32(w: ArrayLike, name: str = "w") -> np.ndarray:
    if torch is not None and isinstance(w, torch.Tensor):
        if w.is_sparse or w.layout != torch.strided:
            w = w.to_dense()
        if not (w.is_floating_point()):
            raise TypeError(f"{name}: expected a floating-point tensor, got {w.dtype}")
        w = w.detach().to("cpu", torch.float32).numpy()
    elif isinstance(w, np.ndarray):
        if not np.issubdtype(w.dtype, np.floating):
            raise TypeError(f"{name}: expected a floating-point array, got {w.dtype}")
    else:
        raise TypeError(f"{name}: expected a torch.Tensor or numpy.ndarray, got {type(w).__name__}")
    if w.ndim not in (2, 4):
        raise ValueError(
            f"{name}: expected a conv weight (C_out, C_in/groups, kh, kw) or a linear weight "
            f"(out, in), got shape {tuple(w.shape)}"
        )
    if any(s == 0 for s in w.shape):
        raise ValueError(f"{name}: empty weight of shape {tuple(w.shape)}")
    return np.ascontiguousarray(w, dtype=np.float32)


def _check_shape(shape: Any) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        raise ValueError(f"shape: expected a tuple of ints, got {shape!r}") from None
    if len(shape) not in (2, 4) or any(s <= 0 for s in shape):
        raise ValueError(f"shape: expected 2 or 4 positive dims, got {shape}")
    return shape


def _as_array(a: Any, dtype: type, name: str, ndim: int) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype != dtype:
        raise ValueError(f"{name}: expected dtype {np.dtype(dtype).name}, got {a.dtype}")
    if a.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim}-D array, got shape {a.shape}")
    a = np.ascontiguousarray(a).copy()
    a.setflags(write=False)
    return a


def _check_compressed(indptr: np.ndarray, indices: np.ndarray, n_rows: int, n_cols: int,
                      nnz: int) -> None:
    """Monotone indptr from 0 to nnz, indices in range and strictly increasing per row."""
    if indptr.shape != (n_rows + 1,):
        raise ValueError(f"indptr: expected shape ({n_rows + 1},), got {indptr.shape}")
    if indptr[0] != 0 or indptr[-1] != nnz:
        raise ValueError(f"indptr: must start at 0 and end at nnz={nnz}, got {indptr[0]}..{indptr[-1]}")
    d = np.diff(indptr.astype(np.int64))
    if (d < 0).any():
        raise ValueError("indptr: must be non-decreasing")
    if indices.shape != (nnz,):
        raise ValueError(f"indices: expected shape ({nnz},), got {indices.shape}")
    if nnz:
        if indices.min() < 0 or indices.max() >= n_cols:
            raise ValueError(f"indices: column index out of range [0, {n_cols})")
        inc = np.diff(indices.astype(np.int64))
        # a step inside a row must be > 0; steps across a row start are unconstrained
        row_start = np.zeros(nnz, dtype=bool)
        starts = indptr[:-1][d > 0]
        row_start[starts] = True
        if ((inc <= 0) & ~row_start[1:]).any():
            raise ValueError("indices: column indices must be strictly increasing within each row")


class _SparseWeight:
    """Shared behaviour of :class:`CSRWeight` and :class:`BSRWeight`."""

    kind: str = ""
    shape: tuple[int, ...]
    values: np.ndarray
    indptr: np.ndarray
    indices: np.ndarray

    # ---- geometry -------------------------------------------------------------------
    @property
    def rows(self) -> int:
        """Output channels / features (``shape[0]``)."""
        return self.shape[0]

    @property
    def cols(self) -> int:
        """``K = prod(shape[1:])``."""
        return int(np.prod(self.shape[1:]))

    @property
    def numel(self) -> int:
        return self.rows * self.cols

    @property
    def density(self) -> float:
        """Fraction of nonzero weights, ``nnz / numel`` (0..1)."""
        return self.nnz / self.numel

    @property
    def nbytes(self) -> int:
        """Bytes of the stored arrays (values + indptr + indices)."""
        return int(self.values.nbytes + self.indptr.nbytes + self.indices.nbytes)

    @property
    def dense_nbytes(self) -> int:
        """Bytes of the same weight stored dense in float32."""
        return 4 * self.numel

    # ---- native packed form ---------------------------------------------------------
    def packed(self) -> Any:
        """The kernel-ready ``prunecal._C.PackedWeight``, built once and cached."""
        p = self.__dict__.get("_packed")
        if p is None:
            from prunecal._native import load_native

            p = load_native().PackedWeight(
                self.kind, self.values, self.indptr, self.indices, list(self._shape4()),
                getattr(self, "block_rows", 1),
            )
            self.__dict__["_packed"] = p
        return p

    def _shape4(self) -> tuple[int, int, int, int]:
        s = self.shape
        return (s[0], s[1], 1, 1) if len(s) == 2 else (s[0], s[1], s[2], s[3])

    # ---- files ----------------------------------------------------------------------
    def save(self, path: PathLike) -> Path:
        """Write an ``.npz`` file (uncompressed). Returns the path written."""
        path = Path(path)
        extra = {"block_rows": np.int64(getattr(self, "block_rows", 1))}
        with open(path, "wb") as f:
            np.savez(
                f, kind=np.array(self.kind), version=np.int64(_FORMAT_VERSION),
                shape=np.asarray(self.shape, dtype=np.int64), values=self.values,
                indptr=self.indptr, indices=self.indices, **extra,
            )
        return path

    @classmethod
    def load(cls, path: PathLike):
        """Load a file written by :meth:`save`; the wrong kind or a corrupt file -> ``ValueError``."""
        w = load_weight(path)
        if not isinstance(w, cls):
            raise ValueError(f"{path}: holds a {w.kind} weight, not {cls.kind}")
        return w

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return (self.shape == other.shape and getattr(self, "block_rows", 1) == getattr(other, "block_rows", 1)
                and np.array_equal(self.indptr, other.indptr)
                and np.array_equal(self.indices, other.indices)
                and np.array_equal(self.values, other.values, equal_nan=True))

    __hash__ = None  # type: ignore[assignment]

    def __getstate__(self) -> dict:
        d = dict(self.__dict__)
        d.pop("_packed", None)
        d.pop("_conv_calls", None)  # (sparse_conv2d's checked calls: hold the native weight)
        return d

    def __repr__(self) -> str:
        extra = f", block_rows={self.block_rows}" if hasattr(self, "block_rows") else ""
        return (f"{type(self).__name__}(shape={self.shape}, nnz={self.nnz}, "
                f"density={self.density:.3f}{extra})")


class CSRWeight(_SparseWeight):
    """A pruned weight in compressed sparse rows.

    Args:
        values: float32 ``(nnz,)`` nonzero weights.
        indptr: int32 ``(rows + 1,)`` row pointers (monotone, 0..nnz).
        indices: int32 ``(nnz,)`` column indices in ``[0, K)``, strictly increasing per row.
        shape: the original dense shape, ``(C_out, C_in/groups, kh, kw)`` or ``(out, in)``.

    Raises ``ValueError`` for any inconsistency (wrong dtype, length, range, order).
    """

    kind = "csr"

    def __init__(self, values: np.ndarray, indptr: np.ndarray, indices: np.ndarray,
                 shape: tuple[int, ...]) -> None:
        self.shape = _check_shape(shape)
        if self.cols >= 2**31:
            raise ValueError(f"shape: K={self.cols} too large for int32 indices")
        self.values = _as_array(values, np.float32, "values", 1)
        self.indptr = _as_array(indptr, np.int32, "indptr", 1)
        self.indices = _as_array(indices, np.int32, "indices", 1)
        _check_compressed(self.indptr, self.indices, self.rows, self.cols, self.values.shape[0])

    @property
    def nnz(self) -> int:
        """Stored (nonzero) weights."""
        return int(self.values.shape[0])

    @classmethod
    def from_dense(cls, w: ArrayLike) -> "CSRWeight":
        """From a dense conv (4-D) or linear (2-D) weight; exact zeros are dropped
        (``-0.0`` too; NaN weights are kept)."""
        a = _to_numpy_f32(w)
        m = a.reshape(a.shape[0], -1)
        mask = m != 0
        rows, cols = np.nonzero(mask)
        indptr = np.zeros(m.shape[0] + 1, dtype=np.int32)
        np.cumsum(mask.sum(axis=1), out=indptr[1:])
        return cls(m[rows, cols], indptr, cols.astype(np.int32), a.shape)

    def to_dense(self) -> np.ndarray:
        """The dense float32 weight in the original shape."""
        m = np.zeros((self.rows, self.cols), dtype=np.float32)
        rows = np.repeat(np.arange(self.rows), np.diff(self.indptr))
        m[rows, self.indices] = self.values
        return m.reshape(self.shape)


class BSRWeight(_SparseWeight):
    """A pruned weight in blocks of ``block_rows`` output channels x 1 column.

    Args:
        values: float32 ``(n_blocks, block_rows)``: ``values[b, i]`` is the weight of output
            channel ``block_row * block_rows + i`` at column ``indices[b]`` (zero-padded).
        indptr: int32 ``(ceil(rows / block_rows) + 1,)`` block-row pointers.
        indices: int32 ``(n_blocks,)`` columns, strictly increasing per block row.
        shape: the original dense shape.
        block_rows: 4 or 8.
    """

    kind = "bsr"

    def __init__(self, values: np.ndarray, indptr: np.ndarray, indices: np.ndarray,
                 shape: tuple[int, ...], block_rows: int = 4) -> None:
        if block_rows not in BLOCK_ROWS:
            raise ValueError(f"block_rows: expected one of {BLOCK_ROWS}, got {block_rows!r}")
        self.block_rows = int(block_rows)
        self.shape = _check_shape(shape)
        if self.cols >= 2**31:
            raise ValueError(f"shape: K={self.cols} too large for int32 indices")
        self.values = _as_array(values, np.float32, "values", 2)
        if self.values.shape[1] != self.block_rows:
            raise ValueError(f"values: expected shape (n_blocks, {self.block_rows}), got {self.values.shape}")
        self.indptr = _as_array(indptr, np.int32, "indptr", 1)
        self.indices = _as_array(indices, np.int32, "indices", 1)
        _check_compressed(self.indptr, self.indices, self.block_row_count, self.cols,
                          self.values.shape[0])
        pad = self.block_row_count * self.block_rows - self.rows
        if pad and self.values.shape[0]:
            last = self.values[self.indptr[-2]:, self.block_rows - pad:]
            if last.any():
                raise ValueError("values: padding rows beyond shape[0] must be zero")

    @property
    def block_row_count(self) -> int:
        """``ceil(rows / block_rows)``."""
        return -(-self.rows // self.block_rows)

    @property
    def n_blocks(self) -> int:
        return int(self.values.shape[0])

    @property
    def nnz(self) -> int:
        """Nonzero weights (padding and zeros inside blocks not counted)."""
        return int(np.count_nonzero(self.values))

    @property
    def stored(self) -> int:
        """Stored weight slots, ``n_blocks * block_rows`` (>= nnz)."""
        return int(self.values.size)

    @classmethod
    def from_dense(cls, w: ArrayLike, block_rows: int = 4) -> "BSRWeight":
        """From a dense conv (4-D) or linear (2-D) weight; a block is kept when any of its
        ``block_rows`` weights is nonzero."""
        if block_rows not in BLOCK_ROWS:
            raise ValueError(f"block_rows: expected one of {BLOCK_ROWS}, got {block_rows!r}")
        a = _to_numpy_f32(w)
        m = a.reshape(a.shape[0], -1)
        nb = -(-m.shape[0] // block_rows)
        p = np.zeros((nb * block_rows, m.shape[1]), dtype=np.float32)
        p[: m.shape[0]] = m
        blocks = p.reshape(nb, block_rows, m.shape[1]).transpose(0, 2, 1)  # (nb, K, r)
        keep = (blocks != 0).any(axis=2)
        br, cols = np.nonzero(keep)
        indptr = np.zeros(nb + 1, dtype=np.int32)
        np.cumsum(keep.sum(axis=1), out=indptr[1:])
        return cls(np.ascontiguousarray(blocks[br, cols]), indptr, cols.astype(np.int32),
                   a.shape, block_rows)

    def to_dense(self) -> np.ndarray:
        """The dense float32 weight in the original shape."""
        r = self.block_rows
        p = np.zeros((self.block_row_count, self.cols, r), dtype=np.float32)
        br = np.repeat(np.arange(self.block_row_count), np.diff(self.indptr))
        p[br, self.indices] = self.values
        m = p.transpose(0, 2, 1).reshape(-1, self.cols)[: self.rows]
        return np.ascontiguousarray(m).reshape(self.shape)


def load_weight(path: PathLike) -> CSRWeight | BSRWeight:
    """Load a :class:`CSRWeight` or :class:`BSRWeight` saved with ``.save``.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the path for a
    corrupt, truncated or foreign file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (expected a prunecal sparse weight .npz)")
    try:
        with np.load(path, allow_pickle=False) as z:
            kind = str(z["kind"])
            version = int(z["version"])
            shape = tuple(int(s) for s in z["shape"])
            values, indptr, indices = z["values"], z["indptr"], z["indices"]
            block_rows = int(z["block_rows"]) if "block_rows" in z.files else 1
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, TypeError) as e:
        raise ValueError(f"{path}: not a readable prunecal sparse weight file ({e})") from None
    if version != _FORMAT_VERSION:
        raise ValueError(f"{path}: unsupported format version {version}")
    try:
        if kind == "csr":
            return CSRWeight(values, indptr, indices, shape)
        if kind == "bsr":
            return BSRWeight(values, indptr, indices, shape, block_rows)
    except ValueError as e:
        raise ValueError(f"{path}: invalid {kind} weight: {e}") from None
    raise ValueError(f"{path}: unknown weight kind {kind!r} (expected 'csr' or 'bsr')")


__all__ = ["CSRWeight", "BSRWeight", "load_weight", "BLOCK_ROWS"]
