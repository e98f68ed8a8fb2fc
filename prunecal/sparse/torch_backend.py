"""The ``"torch"`` backend: torch.sparse CSR weight times an ``F.unfold`` column matrix.

This is the reference a user could write with stock PyTorch; the native ``csr``/``bsr``
kernels are measured against it. Grouped convolutions (including depthwise) are handled as
one block-diagonal CSR matrix over all input channels, so no dense zeros are stored.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

__all__ = ["csr_parts", "csr_tensor", "conv2d", "linear"]


def csr_parts(weight: torch.Tensor, groups: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[int, int]]:
    """CSR arrays of a conv weight ``(C_out, C_in/groups, kh, kw)`` or linear weight ``(out, in)``.

    The matrix is ``[C_out, C_in*kh*kw]`` (block diagonal when ``groups > 1``), matching the
    row order of ``F.unfold``. Only nonzeros are stored.

    Returns:
        ``(crow_indices int64 (C_out+1,), col_indices int64 (nnz,), values (nnz,), shape)``.
    """
    if weight.dim() not in (2, 4):
        raise ValueError(f"weight: expected a 2-D or 4-D tensor, got shape {tuple(weight.shape)}")
    c_out = weight.shape[0]
    if groups < 1 or c_out % groups:
        raise ValueError(f"groups: {groups} does not divide C_out={c_out}")
    w2 = weight.detach().reshape(c_out, -1)
    k_group = w2.shape[1]
    rows, cols = w2.nonzero(as_tuple=True)
    values = w2[rows, cols].contiguous()
    if groups > 1:
        cols = cols + (rows // (c_out // groups)) * k_group
    counts = torch.bincount(rows, minlength=c_out)
    crow = torch.zeros(c_out + 1, dtype=torch.int64)
    crow[1:] = torch.cumsum(counts, 0)
    return crow, cols.to(torch.int64).contiguous(), values, (c_out, k_group * groups)


def csr_tensor(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """A ``torch.sparse_csr`` tensor over the given arrays (no copy, no validation)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
        return torch.sparse_csr_tensor(crow, col, values, size=shape, check_invariants=False)


def conv2d(
    x: torch.Tensor,
    w_csr: torch.Tensor,
    bias: torch.Tensor | None,
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    relu: bool = False,
) -> torch.Tensor:
    """``conv2d`` of ``x (N, C_in, H, W)`` with a CSR weight ``[C_out, C_in*kh*kw]``.

    Returns ``(N, C_out, H_out, W_out)``; bias added and ReLU applied when asked.
    """
    n, _, h, w = x.shape
    kh, kw = kernel_size
    h_out = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    w_out = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    cols = F.unfold(x, kernel_size, dilation=dilation, padding=padding, stride=stride)  # (N, K, L)
    k, l = cols.shape[1], cols.shape[2]
    if n == 1:
        out = torch.sparse.mm(w_csr, cols[0])  # (C_out, L)
        out = out.unsqueeze(0)
    else:
        cols2 = cols.permute(1, 0, 2).reshape(k, n * l)
        out = torch.sparse.mm(w_csr, cols2).reshape(-1, n, l).permute(1, 0, 2)
    out = out.reshape(n, -1, h_out, w_out)
    if bias is not None:
        out = out + bias.reshape(1, -1, 1, 1)
    if relu:
        out = torch.relu_(out)  # out is a fresh tensor here
    return out.contiguous()


def linear(x: torch.Tensor, w_csr: torch.Tensor, bias: torch.Tensor | None, relu: bool = False) -> torch.Tensor:
    """``x (..., in) @ W.T + b`` with a CSR weight ``[out, in]``; returns ``(..., out)``."""
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    out = torch.sparse.mm(w_csr, x2.t()).t()
    if bias is not None:
        out = out + bias
    if relu:
        out = torch.relu(out)
    return out.reshape(*lead, out.shape[-1]).contiguous()
