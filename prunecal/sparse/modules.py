"""Inference-only replacement layers that :func:`prunecal.sparse.sparsify` puts into a model.

- :class:`FoldedConv2d`, :class:`FoldedLinear`: backend ``"dense"``, torch's own conv/linear
  with BN-folded weights and an optional fused ReLU.
- :class:`SparseConv2d`, :class:`SparseLinear`: backends ``"torch"`` (torch.sparse CSR),
  ``"csr"`` and ``"bsr"`` (prunecal's native kernels in :mod:`prunecal.sparse.ops`).

All hold their weights as buffers (no ``nn.Parameter``), so ``state_dict`` round-trips and
``repr`` shows backend, shape and density. They are for inference only: they always compute
under ``torch.no_grad()`` and raise ``RuntimeError`` if the input requires grad while grad
mode is on (i.e. someone is trying to train or differentiate through a sparsified model).
"""
from __future__ import annotations

from typing import Any

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import torch_backend

__all__ = ["InferenceOnlyError", "FoldedConv2d", "FoldedLinear", "SparseConv2d", "SparseLinear", "SPARSE_BACKENDS"]

SPARSE_BACKENDS = ("torch", "csr", "bsr")
_Pair = tuple[int, int]


class InferenceOnlyError(RuntimeError):
    """Gradients were requested through a sparsified (inference-only) layer."""


def _pair(v: int | tuple[int, ...]) -> _Pair:
    if isinstance(v, int):
        return (v, v)
    t = tuple(int(i) for i in v)
    if len(t) != 2:
        raise ValueError(f"expected an int or a pair, got {v!r}")
    return t  # type: ignore[return-value]


class _InferenceLayer(nn.Module):
    """Shared checks, bookkeeping and repr of the replacement layers."""

    backend: str = "dense"

    def __init__(self, weight_shape: tuple[int, ...], density: float, relu: bool, folded_bn: bool) -> None:
        super().__init__()
        self.weight_shape = tuple(int(s) for s in weight_shape)
        self.density = float(density)
        self.relu = bool(relu)
        self.folded_bn = bool(folded_bn)

    def _check_input(self, x: torch.Tensor, ndim: tuple[int, ...]) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
        if torch.is_grad_enabled() and x.requires_grad:
            raise InferenceOnlyError(
                f"{type(self).__name__} is inference-only (sparsified models hold packed, "
                "folded weights and have no gradients); run it under torch.no_grad() / "
                "torch.inference_mode(), or train the original model instead"
            )
        if x.dim() not in ndim:
            raise ValueError(f"x: expected {' or '.join(map(str, ndim))}-D input, got shape {tuple(x.shape)}")

    def _common_repr(self) -> str:
        return (
            f"backend={self.backend}, weight={list(self.weight_shape)}, density={self.density:.3f}"
            + (", folded_bn=True" if self.folded_bn else "")
            + (", relu=True" if self.relu else "")
        )

    @property
    def weight_nbytes(self) -> int:
        """Bytes of the stored weight (packed for sparse backends) plus bias."""
        raise NotImplementedError


def _density(weight: torch.Tensor) -> float:
    return float((weight != 0).sum().item()) / max(weight.numel(), 1)


def _opt_bias(bias: torch.Tensor | None) -> torch.Tensor | None:
    return None if bias is None else bias.detach().clone().contiguous()


class FoldedConv2d(_InferenceLayer):
    """Dense conv2d (backend ``"dense"``) with folded BN and optional fused ReLU.

    Args:
        weight: ``(C_out, C_in/groups, kh, kw)`` float tensor.
        bias: ``(C_out,)`` or ``None``.
        stride, padding, dilation: ints or pairs (zero padding only).
        groups: conv groups.
        relu: apply ReLU to the output.
        folded_bn: informational; a BatchNorm was folded into ``weight``/``bias``.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, stride: Any = 1,
                 padding: Any = 0, dilation: Any = 1, groups: int = 1, *, relu: bool = False,
                 folded_bn: bool = False) -> None:
        if weight.dim() != 4:
            raise ValueError(f"weight: expected (C_out, C_in/groups, kh, kw), got {tuple(weight.shape)}")
        super().__init__(tuple(weight.shape), _density(weight), relu, folded_bn)
        self.register_buffer("weight", weight.detach().clone().contiguous())
        self.register_buffer("bias", _opt_bias(bias))
        self.stride, self.padding, self.dilation = _pair(stride), _pair(padding), _pair(dilation)
        self.groups = int(groups)

    @property
    def weight_nbytes(self) -> int:
        return self.weight.nbytes + (self.bias.nbytes if self.bias is not None else 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x, (4,))
        with torch.no_grad():
            y = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
            return torch.relu_(y) if self.relu else y

    def extra_repr(self) -> str:
        return (f"{self._common_repr()}, stride={self.stride}, padding={self.padding}"
                + (f", dilation={self.dilation}" if self.dilation != (1, 1) else "")
                + (f", groups={self.groups}" if self.groups != 1 else ""))


class FoldedLinear(_InferenceLayer):
    """Dense linear layer (backend ``"dense"``) with an optional fused ReLU.

    Args:
        weight: ``(out, in)``; bias: ``(out,)`` or ``None``; relu: apply ReLU to the output.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, *, relu: bool = False,
                 folded_bn: bool = False) -> None:
        if weight.dim() != 2:
            raise ValueError(f"weight: expected (out, in), got {tuple(weight.shape)}")
        super().__init__(tuple(weight.shape), _density(weight), relu, folded_bn)
        self.register_buffer("weight", weight.detach().clone().contiguous())
        self.register_buffer("bias", _opt_bias(bias))

    @property
    def weight_nbytes(self) -> int:
        return self.weight.nbytes + (self.bias.nbytes if self.bias is not None else 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x, tuple(range(1, 9)))
        with torch.no_grad():
            y = F.linear(x, self.weight, self.bias)
            return torch.relu_(y) if self.relu else y

    def extra_repr(self) -> str:
        return self._common_repr()


def _native_format(backend: str):
    from . import formats  # imported lazily: the native core may be absent in a bare checkout

    return formats.CSRWeight if backend == "csr" else formats.BSRWeight


class _SparseBase(_InferenceLayer):
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_csr_cache", None)  # torch.sparse tensors neither pickle nor deepcopy here
        return state

    def _pack(self, weight: torch.Tensor, backend: str, groups: int) -> None:
        if backend not in SPARSE_BACKENDS:
            raise ValueError(f"backend: {backend!r} is not one of {SPARSE_BACKENDS}")
        self.backend = backend
        if backend == "torch":
            crow, col, val, shape = torch_backend.csr_parts(weight, groups)
            self.register_buffer("crow_indices", crow)
            self.register_buffer("col_indices", col)
            self.register_buffer("values", val)
            self._csr_shape = shape
        else:
            packed = _native_format(backend).from_dense(weight.detach().contiguous())
            # The packed arrays are also kept in buffers, the source of truth for state_dict /
            # load_state_dict / deepcopy; the (read-only) format object is rebuilt from them
            # whenever a buffer changed (see ``packed``).
            for f in ("values", "indptr", "indices"):
                self.register_buffer(f"packed_{f}", torch.from_numpy(getattr(packed, f).copy()))
            self._block_rows = getattr(packed, "block_rows", None)
            self._packed_cache: tuple[tuple[int, ...], Any] = (self._packed_key(), packed)

    def _packed_key(self) -> tuple[int, ...]:
        bufs = (self.packed_values, self.packed_indptr, self.packed_indices)
        return tuple(t.data_ptr() for t in bufs) + tuple(t._version for t in bufs)

    @property
    def packed(self) -> Any:
        """The native ``CSRWeight`` / ``BSRWeight`` over the ``packed_*`` buffers (``None`` for
        the torch backend)."""
        if self.backend == "torch":
            return None
        key = self._packed_key()
        if self._packed_cache[0] != key:
            cls = _native_format(self.backend)
            arrays = [t.detach().cpu().numpy() for t in (self.packed_values, self.packed_indptr, self.packed_indices)]
            extra = (self._block_rows,) if self.backend == "bsr" else ()
            self._packed_cache = (key, cls(*arrays, self.weight_shape, *extra))
        return self._packed_cache[1]

    def _csr(self) -> torch.Tensor:
        """The torch.sparse CSR weight over the buffers, rebuilt only when a buffer changed."""
        bufs = (self.crow_indices, self.col_indices, self.values)
        key = tuple(t.data_ptr() for t in bufs) + tuple(t._version for t in bufs)
        cache = self.__dict__.get("_csr_cache")
        if cache is None or cache[0] != key:
            cache = (key, torch_backend.csr_tensor(*bufs, self._csr_shape))
            self.__dict__["_csr_cache"] = cache
        return cache[1]

    @property
    def weight_nbytes(self) -> int:
        b = self.bias.nbytes if self.bias is not None else 0
        if self.backend == "torch":
            return b + self.crow_indices.nbytes + self.col_indices.nbytes + self.values.nbytes
        return b + int(self.packed.nbytes)

    def to_dense_weight(self) -> torch.Tensor:
        """The (folded) weight as a dense tensor of ``weight_shape``."""
        if self.backend == "torch":
            w = self._csr().to_dense()
            c_out = self.weight_shape[0]
            groups = getattr(self, "groups", 1)
            k = math.prod(self.weight_shape[1:])
            if groups > 1:
                per = c_out // groups
                w = torch.cat([w[g * per:(g + 1) * per, g * k:(g + 1) * k] for g in range(groups)])
            return w.reshape(self.weight_shape)
        return torch.from_numpy(self.packed.to_dense()).reshape(self.weight_shape)


class SparseConv2d(_SparseBase):
    """Sparse conv2d running on backend ``"torch"``, ``"csr"`` or ``"bsr"``.

    Args:
        weight: dense ``(C_out, C_in/groups, kh, kw)`` float32 weight (already BN-folded);
            packed at construction, only its nonzeros are kept.
        bias: ``(C_out,)`` or ``None``.
        stride, padding, dilation, groups: as :class:`torch.nn.Conv2d` (zero padding only).
        backend: ``"torch"``, ``"csr"`` or ``"bsr"``.
        relu: fuse a ReLU into the output.
        threads: threads for the native kernels (``None`` = ``torch.get_num_threads()`` at call
            time); the ``"torch"`` backend uses torch's global thread pool.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, stride: Any = 1,
                 padding: Any = 0, dilation: Any = 1, groups: int = 1, *, backend: str = "csr",
                 relu: bool = False, threads: int | None = None, folded_bn: bool = False) -> None:
        if weight.dim() != 4:
            raise ValueError(f"weight: expected (C_out, C_in/groups, kh, kw), got {tuple(weight.shape)}")
        super().__init__(tuple(weight.shape), _density(weight), relu, folded_bn)
        self.stride, self.padding, self.dilation = _pair(stride), _pair(padding), _pair(dilation)
        self.groups = int(groups)
        self.threads = threads
        self.register_buffer("bias", _opt_bias(bias))
        self._pack(weight, backend, self.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x, (4,))
        if x.shape[1] != self.weight_shape[1] * self.groups:
            raise ValueError(f"x: expected {self.weight_shape[1] * self.groups} channels, got shape {tuple(x.shape)}")
        with torch.no_grad():
            if self.backend == "torch":
                return torch_backend.conv2d(x, self._csr(), self.bias, self.weight_shape[2:],  # type: ignore[arg-type]
                                            self.stride, self.padding, self.dilation, self.relu)
            from . import ops

            return ops.sparse_conv2d(x, self.packed, self.bias, stride=self.stride, padding=self.padding,
                                     dilation=self.dilation, groups=self.groups, relu=self.relu,
                                     threads=self.threads)

    def extra_repr(self) -> str:
        return (f"{self._common_repr()}, stride={self.stride}, padding={self.padding}"
                + (f", dilation={self.dilation}" if self.dilation != (1, 1) else "")
                + (f", groups={self.groups}" if self.groups != 1 else "")
                + (f", threads={self.threads}" if self.threads is not None else ""))


class SparseLinear(_SparseBase):
    """Sparse linear layer on backend ``"torch"``, ``"csr"`` or ``"bsr"``.

    Args:
        weight: dense ``(out, in)`` float32 weight; bias: ``(out,)`` or ``None``;
        backend, relu, threads: as :class:`SparseConv2d`.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, *, backend: str = "csr",
                 relu: bool = False, threads: int | None = None, folded_bn: bool = False) -> None:
        if weight.dim() != 2:
            raise ValueError(f"weight: expected (out, in), got {tuple(weight.shape)}")
        super().__init__(tuple(weight.shape), _density(weight), relu, folded_bn)
        self.threads = threads
        self.register_buffer("bias", _opt_bias(bias))
        self._pack(weight, backend, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x, tuple(range(1, 9)))
        if x.shape[-1] != self.weight_shape[1]:
            raise ValueError(f"x: expected last dimension {self.weight_shape[1]}, got shape {tuple(x.shape)}")
        with torch.no_grad():
            if self.backend == "torch":
                return torch_backend.linear(x, self._csr(), self.bias, self.relu)
            from . import ops

            if x.dim() == 2:
                return ops.sparse_linear(x, self.packed, self.bias, relu=self.relu, threads=self.threads)
            y = ops.sparse_linear(x.reshape(-1, x.shape[-1]), self.packed, self.bias, relu=self.relu,
                                  threads=self.threads)
            return y.reshape(*x.shape[:-1], y.shape[-1])

    def extra_repr(self) -> str:
        return self._common_repr() + (f", threads={self.threads}" if self.threads is not None else "")
