"""Sparse fine-tuning on the CPU: pruned convs / linears trained through the native kernels.

``trainable(model)`` returns a copy of a pruned model whose pruned ``nn.Conv2d`` / ``nn.Linear``
layers are :class:`SparseConv2d` / :class:`SparseLinear`: their only trainable weight is
``values``, the stored nonzeros of the CSR pattern (fixed at conversion), so any torch optimizer
updates the nonzeros only and the pruned weights stay exactly zero. Forward, input gradient
(transposed sparse conv with the same pattern) and weight gradient (sampled dense-dense product
at the stored nonzeros) each cost O(nnz x output pixels) in ``prunecal._C.TrainConv``
(csrc/train_conv.h). Unpruned layers (a dense stem or classifier), BN, ReLU, pooling and
residual adds stay torch modules and ops. ``.to_torch()`` gives back a plain torch model.
"""
from __future__ import annotations

import copy
from typing import Any, Optional

import numpy as np
import torch
import torch.nn as nn

from prunecal._native import default_threads, load_native

TRAIN_BACKENDS = ("csr",)


def _csr_pattern(w2d: torch.Tensor) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    """``(indptr int32, indices int32, values float32)`` of the exact nonzeros of a 2-D weight."""
    mask = w2d != 0
    indptr = np.zeros(w2d.shape[0] + 1, dtype=np.int32)
    np.cumsum(mask.sum(dim=1).numpy(), out=indptr[1:])
    indices = np.nonzero(mask.numpy())[1].astype(np.int32)
    return indptr, indices, w2d[mask].clone().contiguous()


def _check_input(x: Any, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dtype != torch.float32:
        raise TypeError(f"{name}: expected dtype torch.float32, got {x.dtype}")
    if x.device.type != "cpu":
        raise ValueError(f"{name}: expected a CPU tensor, got device {x.device}")
    if x.layout != torch.strided:
        raise ValueError(f"{name}: expected a dense (strided) tensor, got {x.layout}")
    return x


def _plain(t: torch.Tensor) -> torch.Tensor:
    """A C-contiguous tensor whose memory holds its values (the kernels read memory)."""
    return t.resolve_neg().resolve_conj().contiguous()


def _is_nhwc(x: torch.Tensor) -> bool:
    """Whether x (4-D) is stored channels_last (and not also plain contiguous)."""
    return not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


class _SparseConvFn(torch.autograd.Function):
    """``conv2d(x, W(values))`` on the native kernels; gradients for x and values. A channels_last
    x runs as it is stored (output and input gradient channels_last too); any other layout is
    made contiguous first."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, values: torch.Tensor, layer: "SparseConv2d") -> torch.Tensor:
        x = x.detach().resolve_neg().resolve_conj()
        nhwc = _is_nhwc(x)
        fmt = torch.channels_last if nhwc else torch.contiguous_format
        x, values = x.contiguous(memory_format=fmt), _plain(values.detach())
        n, c, h, w = x.shape
        native, s, p = layer._native(), layer.stride[0], layer.padding[0]
        ho, wo = native.output_hw(h, w, s, p)
        y = torch.empty((n, layer.out_channels, ho, wo), dtype=torch.float32, memory_format=fmt)
        threads = default_threads(layer.threads)
        if n:
            native._forward_ptr(x.data_ptr(), n, c, h, w, values.data_ptr(), y.data_ptr(), s, p, threads, layer.isa,
                                nhwc)
        ctx.save_for_backward(x, values)
        ctx.conf = (native, s, p, threads, layer.isa, nhwc)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_y: torch.Tensor) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor], None]:
        x, values = ctx.saved_tensors
        native, s, p, threads, isa, nhwc = ctx.conf
        fmt = torch.channels_last if nhwc else torch.contiguous_format
        need_x, need_v = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        gx = torch.empty(x.shape, dtype=torch.float32, memory_format=fmt) if need_x else None
        gv = torch.empty_like(values) if need_v else None
        if gx is None and gv is None:
            return None, None, None
        gy = grad_y.to(torch.float32).resolve_neg().resolve_conj().contiguous(memory_format=fmt)
        n, c, h, w = x.shape
        if n:
            native._backward_ptr(x.data_ptr(), gy.data_ptr(), n, c, h, w, values.data_ptr(),
                                 0 if gx is None else gx.data_ptr(), 0 if gv is None else gv.data_ptr(),
                                 s, p, threads, isa, nhwc)
        elif gv is not None:
            gv.zero_()
        return gx, gv, None


class _SparseTrainLayer(nn.Module):
    """Shared part of :class:`SparseConv2d` / :class:`SparseLinear`: the CSR pattern (buffers
    ``indptr``, ``indices``; int32), the trainable ``values`` (float32 ``(nnz,)``) and an
    optional dense ``bias``."""

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor], kernel: tuple[int, int],
                 groups: int, threads: Optional[int], isa: str) -> None:
        super().__init__()
        w = weight.detach().to("cpu", torch.float32)
        if not torch.isfinite(w).all():
            raise ValueError("weight: holds NaN or Inf")
        indptr, indices, values = _csr_pattern(w.reshape(w.shape[0], -1))
        self.weight_shape = tuple(int(d) for d in w.shape)
        self.kernel = kernel
        self.groups = int(groups)
        self.threads = threads
        self.isa = isa
        self.register_buffer("indptr", torch.from_numpy(indptr))
        self.register_buffer("indices", torch.from_numpy(indices))
        self.values = nn.Parameter(values)
        self.bias = None if bias is None else nn.Parameter(bias.detach().to("cpu", torch.float32).clone())
        self._tc: Any = None

    @property
    def nnz(self) -> int:
        """Stored (trainable) weights."""
        return int(self.values.numel())

    @property
    def density(self) -> float:
        """Stored weights / dense weights."""
        return self.nnz / max(1, int(np.prod(self.weight_shape)))

    def _native(self) -> Any:
        if self._tc is None:
            co, cg = self.weight_shape[0], self.weight_shape[1]
            self._tc = load_native().TrainConv(_plain(self.indptr).numpy(), _plain(self.indices).numpy(),
                                               [co, cg, *self.kernel], self.groups)
        return self._tc

    def _values(self) -> torch.Tensor:
        v = self.values
        if v.dtype != torch.float32 or v.device.type != "cpu" or v.shape != (int(self.indices.numel()),):
            raise TypeError(f"values: expected float32 CPU ({int(self.indices.numel())},), got {v.dtype} "
                            f"{v.device.type} {tuple(v.shape)} (the layer trains in float32 on the CPU)")
        return v

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._tc = None  # the pattern may have changed

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_tc"] = None
        return state

    def dense_weight(self) -> torch.Tensor:
        """The dense float32 weight (zeros where pruned), detached."""
        co = self.weight_shape[0]
        m = torch.zeros(co, int(np.prod(self.weight_shape[1:])), dtype=torch.float32)
        rows = torch.repeat_interleave(torch.arange(co), torch.diff(self.indptr.long()))
        m[rows, self.indices.long()] = self.values.detach().float()
        return m.reshape(self.weight_shape)

    def extra_repr(self) -> str:
        return f"shape={self.weight_shape}, nnz={self.nnz}, density={self.density:.3f}, bias={self.bias is not None}"


class SparseConv2d(_SparseTrainLayer):
    """A pruned ``nn.Conv2d`` (zero padding, dilation 1, square stride / padding) trained through
    the native kernels.

    Args:
        conv: the pruned conv; its exact zeros are the pruned weights (kept zero).
        threads: kernel threads; ``None`` -> ``torch.get_num_threads()`` at each call.
        isa: ``'auto'`` (default), ``'avx512'``, ``'avx2'`` or ``'generic'`` kernels.

    Input float32 ``(N, C_in, H, W)`` CPU (any strides) -> ``(N, C_out, Ho, Wo)``; a channels_last
    input gives a channels_last output (the kernels read and write that layout directly).
    """

    reads_channels_last = True  # (prunecal.train trains a model holding one in channels_last)

    def __init__(self, conv: nn.Conv2d, *, threads: Optional[int] = None, isa: str = "auto") -> None:
        reason = conv_unsupported(conv)
        if reason:
            raise ValueError(f"conv: {reason}")
        super().__init__(conv.weight, conv.bias, tuple(conv.kernel_size), conv.groups, threads, isa)
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.stride, self.padding = tuple(conv.stride), tuple(conv.padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, "x")
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x: expected shape (N, {self.in_channels}, H, W), got {tuple(x.shape)}")
        y = _SparseConvFn.apply(x, self._values(), self)
        return y if self.bias is None else y + self.bias.view(1, -1, 1, 1)

    def to_torch(self) -> nn.Conv2d:
        """A plain ``nn.Conv2d`` with the trained weights (zeros where pruned)."""
        conv = nn.Conv2d(self.in_channels, self.out_channels, self.kernel, stride=self.stride,
                         padding=self.padding, groups=self.groups, bias=self.bias is not None)
        with torch.no_grad():
            conv.weight.copy_(self.dense_weight())
            if self.bias is not None:
                conv.bias.copy_(self.bias.detach())
        return conv

    def extra_repr(self) -> str:
        return f"stride={self.stride[0]}, padding={self.padding[0]}, groups={self.groups}, " + super().extra_repr()


class SparseLinear(_SparseTrainLayer):
    """A pruned ``nn.Linear`` trained through the native kernels (a 1x1 conv over the
    transposed batch). Input float32 ``(..., in)`` CPU -> ``(..., out)``; other arguments as in
    :class:`SparseConv2d`."""

    def __init__(self, linear: nn.Linear, *, threads: Optional[int] = None, isa: str = "auto") -> None:
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear: expected nn.Linear, got {type(linear).__name__}")
        w = linear.weight.detach()
        super().__init__(w.reshape(*w.shape, 1, 1), linear.bias, (1, 1), 1, threads, isa)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.in_channels, self.out_channels = self.in_features, self.out_features
        self.stride, self.padding = (1, 1), (0, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, "x")
        if x.dim() < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"x: expected shape (..., {self.in_features}), got {tuple(x.shape)}")
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        xt = x2.t().contiguous().view(1, self.in_features, 1, x2.shape[0])  # (1, in, 1, N)
        yt = _SparseConvFn.apply(xt, self._values(), self)  # (1, out, 1, N)
        y = yt.view(self.out_features, x2.shape[0]).t()
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features)

    def to_torch(self) -> nn.Linear:
        """A plain ``nn.Linear`` with the trained weights (zeros where pruned)."""
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        with torch.no_grad():
            lin.weight.copy_(self.dense_weight().reshape(self.out_features, self.in_features))
            if self.bias is not None:
                lin.bias.copy_(self.bias.detach())
        return lin


def conv_unsupported(conv: nn.Conv2d) -> str:
    """Why ``conv`` cannot become a :class:`SparseConv2d` (``''`` when it can)."""
    if not isinstance(conv, nn.Conv2d):
        return f"expected nn.Conv2d, got {type(conv).__name__}"
    if conv.padding_mode != "zeros":
        return f"padding_mode {conv.padding_mode!r} (only 'zeros')"
    if isinstance(conv.padding, str):
        return f"padding {conv.padding!r} (only int padding)"
    if tuple(conv.dilation) != (1, 1):
        return f"dilation {tuple(conv.dilation)} (only 1)"
    if conv.stride[0] != conv.stride[1] or conv.padding[0] != conv.padding[1]:
        return f"non-square stride {tuple(conv.stride)} / padding {tuple(conv.padding)}"
    if conv.weight.dtype != torch.float32:
        return f"weight dtype {conv.weight.dtype} (only float32)"
    return ""


class SparseTrainable(nn.Module):
    """What :func:`trainable` returns: ``self.model`` (the converted copy) with the same forward.

    Attributes:
        converted: names of the layers that run through the kernels.
        skipped: ``{name: reason}`` of convs / linears left as torch layers.
    """

    def __init__(self, model: nn.Module, converted: list[str], skipped: dict[str, str]) -> None:
        super().__init__()
        self.model = model
        self.converted = converted
        self.skipped = skipped

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)

    def to_torch(self) -> nn.Module:
        """A plain torch copy of the model with the trained weights (zeros where pruned)."""
        out = copy.deepcopy(self.model)
        for name, mod in list(out.named_modules()):
            if isinstance(mod, (SparseConv2d, SparseLinear)):
                dense = mod.to_torch()
                dense.train(mod.training)
                _set_submodule(out, name, dense)
        return out

    def extra_repr(self) -> str:
        return f"converted={len(self.converted)}, skipped={len(self.skipped)}"


def _set_submodule(root: nn.Module, name: str, new: nn.Module) -> nn.Module:
    if not name:
        return new
    parent_name, _, leaf = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, leaf, new)
    return root


def trainable(model: nn.Module, backend: str = "csr", *, threads: Optional[int] = None,
              isa: str = "auto") -> SparseTrainable:
    """A copy of ``model`` whose pruned convs / linears train through the native sparse kernels.

    Args:
        model: a torch model (left unchanged); a conv / linear is "pruned" when its weight holds
            at least one exact zero. Those zeros stay zero: the converted layers' parameters are
            only the stored nonzeros (``values``) and their biases.
        backend: ``'csr'`` (the only one).
        threads: kernel threads; ``None`` -> ``torch.get_num_threads()`` at each call.
        isa: ``'auto'`` (default), ``'avx512'``, ``'avx2'`` or ``'generic'`` kernels.

    Returns a :class:`SparseTrainable` (same forward in train and eval mode; ``.to_torch()``).
    Convs the kernels do not run (dilation, non-square stride / padding, non-zero padding modes,
    non-float32) stay torch layers and are listed in ``.skipped``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    if backend not in TRAIN_BACKENDS:
        raise ValueError(f"backend: expected one of {TRAIN_BACKENDS}, got {backend!r}")
    if threads is not None:
        default_threads(threads)  # validates
    if not isinstance(isa, str) or isa not in ("auto", "avx512", "avx2", "generic"):
        raise ValueError(f"isa: expected 'auto', 'avx512', 'avx2' or 'generic', got {isa!r}")
    load_native().train_isa(isa)  # an isa this CPU lacks -> ValueError now, not at the first call
    out = copy.deepcopy(model)
    converted: list[str] = []
    skipped: dict[str, str] = {}
    for name, mod in list(out.named_modules()):
        if isinstance(mod, _SparseTrainLayer) or not isinstance(mod, (nn.Conv2d, nn.Linear)):
            continue
        weight = mod.weight
        if not bool((weight.detach() == 0).any()):
            skipped[name] = "dense (no pruned weights)"
            continue
        if isinstance(mod, nn.Conv2d):
            reason = conv_unsupported(mod)
            if reason:
                skipped[name] = reason
                continue
            new: nn.Module = SparseConv2d(mod, threads=threads, isa=isa)
        else:
            if weight.dtype != torch.float32:
                skipped[name] = f"weight dtype {weight.dtype} (only float32)"
                continue
            new = SparseLinear(mod, threads=threads, isa=isa)
        new.train(mod.training)
        out = _set_submodule(out, name, new)
        converted.append(name)
    return SparseTrainable(out, converted, skipped)


__all__ = ["trainable", "SparseTrainable", "SparseConv2d", "SparseLinear", "TRAIN_BACKENDS", "conv_unsupported"]
