"""Sparse conv2d / linear on the native core (``prunecal._C``).

Tensors go to the kernels zero-copy: a contiguous float32 CPU tensor is viewed as a numpy
array (``tensor.numpy()``); the output is a numpy-allocated buffer written in place by the
kernel and returned as a tensor sharing it (``torch.from_numpy``).
A non-contiguous input is first made contiguous (one copy). Results match
``torch.nn.functional.conv2d`` / ``linear`` up to float32 summation order, including NaN/Inf:
an image (conv) or sample (linear, batch < 8; the whole batch for larger batches) holding NaN
or Inf is computed with every weight, zeros included, so ``NaN * 0 = NaN`` exactly as in
torch's dense kernels; finite inputs skip the zeros.
"""
from __future__ import annotations

from typing import Optional, Union

import numpy as np
import torch

from prunecal._native import default_threads
from prunecal.sparse.formats import BSRWeight, CSRWeight

Weight = Union[CSRWeight, BSRWeight]
IntPair = Union[int, tuple[int, int]]


def _pair(v: IntPair, name: str) -> int:
    """The single int a (square) conv parameter may hold; a non-square pair -> ValueError."""
    if type(v) is int:
        return v
    if isinstance(v, (tuple, list)):
        if len(v) != 2 or v[0] != v[1]:
            raise ValueError(f"{name}: only square values are supported, got {v!r}")
        v = v[0]
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"{name}: expected an int, got {type(v).__name__}")
    return v


_INT_MAX = 2**31 - 1  # the native core takes these parameters as C ints


def _in_int_range(v: int, name: str) -> int:
    """``v`` if the native core's C ``int`` holds it, else a one-line ValueError naming it
    (instead of pybind11's multi-line "incompatible function arguments")."""
    if not -_INT_MAX - 1 <= v <= _INT_MAX:
        raise ValueError(f"{name}: {v} is out of range (the native kernels take values up to {_INT_MAX})")
    return v


def _threads(threads: Optional[int]) -> int:
    if type(threads) is int and threads > _INT_MAX:
        _in_int_range(threads, "threads")
    return default_threads(threads)


def _check_weight(weight: object) -> Weight:
    if not isinstance(weight, (CSRWeight, BSRWeight)):
        raise TypeError(f"weight: expected CSRWeight or BSRWeight, got {type(weight).__name__}")
    return weight


def _check_tensor(x: object, name: str) -> torch.Tensor:
    # fast path (the common case, ~4x cheaper than the checks below): a contiguous float32 CPU
    # tensor that needs no grad and whose memory holds its values (no lazy negation: torch's
    # "negative bit", e.g. complex.conj().imag) is used as it is
    if (type(x) is torch.Tensor and x.dtype is torch.float32 and x.is_cpu and x.layout is torch.strided
            and not x.requires_grad and x.is_contiguous() and not x.is_neg()):
        return x
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dtype != torch.float32:
        raise TypeError(f"{name}: expected dtype torch.float32, got {x.dtype}")
    if x.device.type != "cpu":
        raise ValueError(f"{name}: expected a CPU tensor, got device {x.device}")
    if x.layout != torch.strided:
        raise ValueError(f"{name}: expected a dense (strided) tensor, got {x.layout}")
    return x.detach().resolve_neg().contiguous()  # (kernels read memory as it is)


def _bias_tensor(bias: torch.Tensor, rows: int) -> torch.Tensor:
    """``bias`` checked: a contiguous float32 CPU tensor of shape ``(rows,)`` (a copy if needed)."""
    b = _check_tensor(bias, "bias")
    if b.shape != (rows,):
        raise ValueError(f"bias: expected shape ({rows},), got {tuple(b.shape)}")
    return b


def _bias(bias: Optional[torch.Tensor], rows: int):
    return None if bias is None else _bias_tensor(bias, rows).numpy()


def sparse_conv2d(x: torch.Tensor, weight: Weight, bias: Optional[torch.Tensor] = None,
                  stride: IntPair = 1, padding: IntPair = 0, dilation: IntPair = 1,
                  groups: int = 1, relu: bool = False, threads: Optional[int] = None,
                  *, isa: str = "auto") -> torch.Tensor:
    """``relu?(conv2d(x, weight) + bias)`` with a sparse weight.

    Args:
        x: float32 ``(N, C_in, H, W)`` (or unbatched ``(C_in, H, W)``), CPU.
        weight: :class:`CSRWeight` / :class:`BSRWeight` of a conv weight
            ``(C_out, C_in/groups, kh, kw)``.
        bias: float32 ``(C_out,)`` or ``None``.
        stride, padding, dilation: ints (or square pairs); padding is zeros.
        groups: ``C_in`` and ``C_out`` must be divisible by it (depthwise: ``groups = C_in``).
        relu: fuse a ReLU after the bias.
        threads: worker threads; ``None`` -> ``torch.get_num_threads()``.
        isa: ``'auto'`` (default), ``'avx2'``, ``'neon'`` (AArch64) or ``'generic'`` kernels (for tests/benchmarks).

    Returns a new float32 ``(N, C_out, Ho, Wo)`` tensor. ``N = 0`` gives an empty output.
    """
    x = _check_tensor(x, "x")
    unbatched = x.dim() == 3
    if unbatched:
        x = x.unsqueeze(0)
    shape = x.shape
    # a call with the same weight, input shape and plain-int parameters as an earlier one skips
    # the checks that passed then (weights are immutable; `type(v) is int` keeps True / 1.0 out)
    call = None
    if type(stride) is int and type(padding) is int and type(dilation) is int and type(groups) is int:
        calls = getattr(weight, "_conv_calls", None)
        if calls is not None:
            call = calls.get((shape, stride, padding, dilation, groups))
    if call is None:
        call = _conv_call(weight, shape, stride, padding, dilation, groups)
    packed, s, p, d, out_shape = call
    # numpy-allocated output (cheaper than torch.empty), handed to torch without a copy; x and
    # bias go by address (checked above / in _bias_tensor; cheaper than Tensor.numpy())
    out = np.empty(out_shape, dtype=np.float32)
    b = None if bias is None else _bias_tensor(bias, out_shape[1])  # (a reference: kept alive during the call)
    if out_shape[0]:
        packed._conv2d_ptr(x.data_ptr(), *shape, out, 0 if b is None else b.data_ptr(), s, p, d, groups, bool(relu),
                           _threads(threads), isa)
    y = torch.from_numpy(out)
    return y[0] if unbatched else y


def _conv_call(weight: object, shape: torch.Size, stride: IntPair, padding: IntPair, dilation: IntPair,
               groups: int) -> tuple:
    """Checks of a sparse_conv2d call: ``(packed weight, stride, padding, dilation, output shape)``,
    remembered on the weight (at most 64 entries) under the input shape and parameters when these
    are plain ints."""
    weight = _check_weight(weight)
    if len(weight.shape) != 4:
        raise ValueError(f"weight: expected a conv weight (4-D shape), got shape {weight.shape}")
    if len(shape) != 4:
        raise ValueError(f"x: expected a 4-D (N, C, H, W) or 3-D (C, H, W) tensor, got shape {tuple(shape)}")
    s, p, d = _pair(stride, "stride"), _pair(padding, "padding"), _pair(dilation, "dilation")
    if type(groups) is not int:
        raise TypeError(f"groups: expected an int, got {type(groups).__name__}")
    for v, name in ((s, "stride"), (p, "padding"), (d, "dilation"), (groups, "groups"),
                    (shape[2], "x: height"), (shape[3], "x: width")):
        _in_int_range(v, name)
    packed = weight.packed()
    c_out, c_in_per_group = weight.shape[0], weight.shape[1]
    if groups < 1 or c_out % groups:
        raise ValueError(f"groups: {groups} must be >= 1 and divide C_out={c_out}")
    if shape[1] != c_in_per_group * groups:
        raise ValueError(
            f"x: expected {c_in_per_group * groups} input channels (C_in/groups={c_in_per_group}"
            f" x groups={groups}), got {shape[1]}")
    if s < 1 or p < 0 or d < 1:
        raise ValueError(f"stride/padding/dilation: need stride >= 1, padding >= 0, dilation >= 1; "
                         f"got {s}, {p}, {d}")
    ho, wo = packed.output_hw(shape[2], shape[3], s, p, d)  # (also validates the geometry)
    call = (packed, s, p, d, (shape[0], c_out, ho, wo))
    if all(type(v) is int for v in (stride, padding, dilation, groups)):
        calls = weight.__dict__.setdefault("_conv_calls", {})
        if len(calls) >= 64:
            calls.clear()
        calls[(shape, stride, padding, dilation, groups)] = call
    return call


def sparse_linear(x: torch.Tensor, weight: Weight, bias: Optional[torch.Tensor] = None,
                  relu: bool = False, threads: Optional[int] = None, *,
                  isa: str = "auto") -> torch.Tensor:
    """``relu?(x @ W.T + bias)`` with a sparse linear weight ``(out, in)``.

    Args:
        x: float32 ``(..., in)``, CPU (leading dims are flattened and restored).
        weight: :class:`CSRWeight` / :class:`BSRWeight` of shape ``(out, in)``.
        bias: float32 ``(out,)`` or ``None``.
        relu, threads, isa: as in :func:`sparse_conv2d`.

    Returns a new float32 ``(..., out)`` tensor.
    """
    weight = _check_weight(weight)
    if len(weight.shape) != 2:
        raise ValueError(f"weight: expected a linear weight (out, in), got shape {weight.shape}")
    x = _check_tensor(x, "x")
    if x.dim() < 1:
        raise ValueError("x: expected at least 1 dim (..., in), got a scalar")
    n_out, n_in = weight.shape
    if x.shape[-1] != n_in:
        raise ValueError(f"x: expected {n_in} input features in the last dim, got shape {tuple(x.shape)}")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, n_in)
    out = np.empty((x2.shape[0], n_out), dtype=np.float32)
    b = _bias(bias, n_out)
    if x2.shape[0]:
        weight.packed().linear(x2.numpy(), out, b, bool(relu), _threads(threads), isa)
    return torch.from_numpy(out).reshape(*lead, n_out)


__all__ = ["sparse_conv2d", "sparse_linear"]
