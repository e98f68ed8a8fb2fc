"""Compile a (pruned) CNN into ONE native call per batch: ``compile_plan``.

Example::

    from prunecal.sparse.plan import compile_plan, PlanUnsupported
    fast = compile_plan(pruned_resnet, "auto", threads=2)     # = sparsify(model, "csr"), explicit
    logits = fast(x)                 # x float32 (N, 3, 32, 32) -> (N, 10)
    print(fast.describe())           # one line per native op
    dense_bytes, stored_bytes = fast.footprint()   # = sparsify(model, backend)'s report numbers
    # models with unsupported layers: PlanUnsupported names the node; or let it fall back
    fast = compile_plan(model, "csr", fallback=True)           # = sparsify(model, "csr")

At batch 1, Python dispatch per layer costs more than the sparse arithmetic; a plan runs the
whole network (conv + folded BN + ReLU, residual add fused into the conv's epilogue,
shortcut, pooling, linear) in C++ with the GIL released, on per-thread activation buffers
allocated once (see ``csrc/plan.h``).

The model is traced with :mod:`torch.fx` and its graph is interpreted on a small sample batch
(which gives every activation's shape and evaluates shape arithmetic to constants). Supported:
``Conv2d`` (+ ``BatchNorm2d`` folded in eval mode) (+ ReLU fused), residual ``add`` (+ ReLU),
ReLU, the CIFAR ResNet option-A shortcut (module or its traced ``x[:, :, ::s, ::s]`` +
channel ``F.pad``), global average pooling, ``flatten`` / ``view(N, -1)``, ``Linear`` (+ ``BatchNorm1d`` folded),
``Identity`` / ``Dropout`` (eval), ``MaxPool2d``, ``ReLU6`` / ``Hardtanh``, and the layers of
:func:`prunecal.sparse.sparsify` (``FoldedConv2d``, ``SparseConv2d``, ``FoldedLinear``,
``SparseLinear``). Anything else raises :class:`PlanUnsupported` naming the graph node.

A plan is specialised to one input ``(C, H, W)``; :class:`PlanModule` compiles another plan
the first time it sees a new input size. Outputs equal the dense torch model up to float32
summation order; an image holding NaN/Inf is run with dense weights so that NaN propagates
exactly as in torch, and an image whose output comes out non-finite is re-run that way.
"""
from __future__ import annotations

import inspect
import math
import operator
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch
import torch.fx
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune as torch_prune

from prunecal._native import default_threads, load_native
from prunecal.fx_match import add_call_inplace, is_add_call, is_relu_call, relu_call_inplace
from prunecal.models.resnet_cifar import OptionAShortcut

from . import fold as _fold
from .formats import BSRWeight, CSRWeight
from .modules import FoldedConv2d, FoldedLinear, SparseConv2d, SparseLinear, _InferenceLayer

__all__ = ["PlanUnsupported", "PlanModule", "compile_plan", "PLAN_BACKENDS", "PLAN_MODES"]

PLAN_BACKENDS = ("csr", "bsr", "auto")
"""Conv weight format: ``csr``, ``bsr`` (blocks of ``block_rows`` output channels), or ``auto``:
BSR for layers of density >= :data:`AUTO_BSR_DENSITY` (e.g. the unpruned stem), CSR for the
rest (measured on ResNet-56: CSR is faster on every pruned layer, BSR on the dense stem)."""
AUTO_BSR_DENSITY = 0.5
PLAN_MODES = ("auto", "image", "op")
"""``image``: each thread runs the whole network on its own images (no barrier per layer);
``op``: images one at a time, every conv split over the threads; ``auto``: ``image`` when the
batch shares out evenly over the threads (``N % threads == 0``) or ``N >= 4 * threads``; else
``op`` or one thread, whichever the plan measured faster on its earlier calls (busy cores and
slow cross-core round trips make one thread win; both give the same bits)."""

_SAMPLE_BATCH = 3  # batch of the tracing sample (odd, so that it is not confused with a shape)
_ALIAS_MODULES = (nn.Identity, nn.Dropout, nn.Dropout2d, nn.AlphaDropout)


class PlanUnsupported(NotImplementedError):
    """The model holds something the native plan cannot run; use the per-module path
    (:func:`prunecal.sparse.sparsify`) instead. ``node`` and ``op`` name the culprit."""

    def __init__(self, node: str, op: str, why: str = "") -> None:
        self.node, self.op = node, op
        super().__init__(f"plan: unsupported node {node!r} ({op})" + (f": {why}" if why else ""))


# ------------------------------------------------------------------------------------------
# Intermediate representation
@dataclass
class _Op:
    kind: str  # conv, bn, relu, clamp, add, shortcut, avgpool, maxpool, flatten, linear
    name: str
    inputs: list[int]
    out: int
    relu: bool = False
    weight: Optional[torch.Tensor] = None
    bias: Optional[torch.Tensor] = None
    stride: int = 1
    pad: int = 0
    dil: int = 1
    groups: int = 1
    left: int = 0
    k: int = 1  # maxpool kernel
    lo: float = 0.0  # clamp bounds
    hi: float = 0.0
    bn: Optional[nn.Module] = None
    inplace: bool = False
    residual: Optional[int] = None  # conv: value added before the (fused) ReLU
    target: str = ""  # the module a call_module op runs (its qualified name), else ""


@dataclass
class _IR:
    shapes: dict[int, tuple[int, ...]] = field(default_factory=dict)  # vid -> (C, H, W) or (F,)
    ops: list[_Op] = field(default_factory=list)
    input: int = 0
    output: int = -1

    def new(self, shape: tuple[int, ...]) -> int:
        vid = len(self.shapes)
        self.shapes[vid] = tuple(int(s) for s in shape)
        return vid

    def users(self, vid: int) -> list[_Op]:
        return [op for op in self.ops if vid in op.inputs]

    def producer(self, vid: int) -> Optional[_Op]:
        for op in self.ops:
            if op.out == vid:
                return op
        return None


class _Tracer(torch.fx.Tracer):
    """Keeps torch.nn layers, the option-A shortcut and sparsify's layers as leaves."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, (OptionAShortcut, _InferenceLayer)):
            return True
        return super().is_leaf_module(m, qualname)


def _trace(model: nn.Module) -> torch.fx.GraphModule:
    try:
        graph = _Tracer().trace(model)
    except Exception as e:  # untraceable control flow etc.
        msg = str(e).splitlines()[0] if str(e) else ""
        raise PlanUnsupported(type(model).__name__, "trace", f"torch.fx cannot trace it ({type(e).__name__}: {msg})") from e
    return torch.fx.GraphModule(model, graph)


def _square(v: Any, what: str, node: str) -> int:
    t = (v, v) if isinstance(v, int) else tuple(v)
    if len(t) != 2 or t[0] != t[1]:
        raise PlanUnsupported(node, what, f"non-square {what} {v!r}")
    return int(t[0])


def _has_user_hooks(m: nn.Module) -> bool:
    pre = [h for h in m._forward_pre_hooks.values() if not isinstance(h, torch_prune.BasePruningMethod)]
    return bool(pre or m._forward_hooks)


def _conv_params(m: nn.Conv2d, node: str) -> dict[str, int]:
    if m.padding_mode != "zeros":
        raise PlanUnsupported(node, "Conv2d", f"padding_mode={m.padding_mode!r}")
    if isinstance(m.padding, str):
        if m.padding == "valid":
            pad = 0
        else:  # 'same' with stride 1: symmetric only when dil*(k-1) is even
            tot = [d * (k - 1) for k, d in zip(m.kernel_size, m.dilation)]
            if any(t % 2 for t in tot):
                raise PlanUnsupported(node, "Conv2d", "padding='same' needs asymmetric padding")
            pad = _square((tot[0] // 2, tot[1] // 2), "padding", node)
    else:
        pad = _square(m.padding, "padding", node)
    return dict(stride=_square(m.stride, "stride", node), pad=pad,
                dil=_square(m.dilation, "dilation", node), groups=int(m.groups))


def _as_f32(t: torch.Tensor, node: str) -> torch.Tensor:
    if t.dtype != torch.float32:
        raise PlanUnsupported(node, "dtype", f"weights are {t.dtype}; the native plan is float32")
    if not torch.isfinite(t).all():
        raise ValueError(f"model: layer {node!r} has non-finite (NaN/inf) weights or bias")
    return t.detach().to("cpu").contiguous()


def _is_full_slice(s: Any) -> bool:
    return isinstance(s, slice) and s.start is None and s.stop is None and s.step in (None, 1)


def _subsample_stride(idx: Any) -> Optional[int]:
    """``s`` for an index ``(:, :, ::s, ::s)`` (or ``(..., ::s, ::s)``), else ``None``."""
    if not isinstance(idx, tuple):
        return None
    if len(idx) == 3 and idx[0] is Ellipsis:
        idx = (slice(None), slice(None)) + idx[1:]
    if len(idx) != 4 or not (_is_full_slice(idx[0]) and _is_full_slice(idx[1])):
        return None
    a, b = idx[2], idx[3]
    if not all(isinstance(s, slice) and s.start in (None, 0) and s.stop is None for s in (a, b)):
        return None
    sa, sb = a.step or 1, b.step or 1
    return int(sa) if sa == sb and isinstance(sa, int) and sa >= 1 else None


def _build_ir(gm: torch.fx.GraphModule, input_size: tuple[int, int, int]) -> _IR:
    """Interpret ``gm`` on a sample batch, recording activation ops into an :class:`_IR`."""
    modules = dict(gm.named_modules())
    ir = _IR()
    env: dict[torch.fx.Node, Any] = {}  # concrete sample values
    vid_of: dict[torch.fx.Node, int] = {}  # activation nodes -> value id
    gen = torch.Generator().manual_seed(0)

    def act(a: Any) -> bool:
        return isinstance(a, torch.fx.Node) and a in vid_of

    def concrete(a: Any) -> Any:
        return torch.fx.node.map_arg(a, lambda n: env[n])

    def run(node: torch.fx.Node) -> Any:
        try:
            return _run(node)
        except PlanUnsupported:
            raise
        except Exception as e:  # the model itself rejects this input size
            raise ValueError(f"x: the model cannot run an input of shape (N, {', '.join(map(str, input_size))}) "
                             f"(node {node.name!r}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e

    def _run(node: torch.fx.Node) -> Any:
        args = torch.fx.node.map_aggregate(concrete(node.args), lambda v: v.clone() if isinstance(v, torch.Tensor) else v)
        kwargs = concrete(node.kwargs)
        if node.op == "call_module":
            return modules[node.target](*args, **kwargs)
        if node.op == "call_function":
            return node.target(*args, **kwargs)
        self_obj, *rest = args
        return getattr(self_obj, node.target)(*rest, **kwargs)

    def shape_of(t: torch.Tensor, name: str) -> tuple[int, ...]:
        if not isinstance(t, torch.Tensor) or t.shape[0] != _SAMPLE_BATCH or t.dim() not in (2, 4):
            raise PlanUnsupported(name, "shape", f"activation of shape {tuple(getattr(t, 'shape', ()))}; "
                                  "the plan handles (N, C, H, W) and (N, F) activations")
        return tuple(t.shape[1:])

    def emit(node: torch.fx.Node, kind: str, inputs: list[int], value: Any, **kw: Any) -> None:
        out = ir.new(shape_of(value, node.name))
        ir.ops.append(_Op(kind, node.name, inputs, out, target=str(node.target) if node.op == "call_module" else "",
                          **kw))
        vid_of[node] = out

    def alias(node: torch.fx.Node, src: torch.fx.Node) -> None:
        vid_of[node] = vid_of[src]

    placeholders = 0
    with torch.no_grad():
        for node in gm.graph.nodes:
            what = f"{node.op} {getattr(node.target, '__name__', node.target)}"
            if node.op == "placeholder":
                placeholders += 1
                if placeholders > 1:
                    raise PlanUnsupported(node.name, what, "the plan takes one input tensor")
                env[node] = torch.randn((_SAMPLE_BATCH, *input_size), generator=gen)
                vid_of[node] = ir.new(tuple(input_size))
                ir.input = vid_of[node]
                continue
            if node.op == "output":
                res = node.args[0]
                if not act(res):
                    raise PlanUnsupported(node.name, "output", "the model must return one tensor")
                ir.output = vid_of[res]
                break
            if node.op == "get_attr":
                env[node] = concrete(getattr_path(gm, node.target))
                continue
            tensor_args = [a for a in node.all_input_nodes if a in vid_of]
            if not tensor_args:  # shape arithmetic, constants: evaluate
                env[node] = run(node)
                if isinstance(env[node], torch.Tensor) and env[node].dim() and env[node].shape[0] == _SAMPLE_BATCH:
                    raise PlanUnsupported(node.name, what, "creates a batch-sized tensor from constants")
                continue
            value = run(node)
            env[node] = value
            x = node.args[0] if node.args else None
            if (node.op == "call_function" and node.target is getattr and node.args[1] in ("shape", "ndim", "dtype")) \
                    or (node.op == "call_method" and node.target in ("size", "dim")):
                continue  # metadata: a constant for this input size
            if node.op == "call_module":
                m = modules[node.target]
                if _has_user_hooks(m):
                    raise PlanUnsupported(node.name, what, "module has forward hooks the plan would drop")
                if len(node.args) != 1 or node.kwargs or not act(x):
                    raise PlanUnsupported(node.name, what, "expected one activation argument")
                vin = vid_of[x]
                if isinstance(m, _ALIAS_MODULES):
                    alias(node, x)
                elif type(m) is nn.Conv2d:
                    emit(node, "conv", [vin], value, weight=_as_f32(m.weight, node.name),
                         bias=None if m.bias is None else _as_f32(m.bias, node.name), **_conv_params(m, node.name))
                elif isinstance(m, (FoldedConv2d, SparseConv2d)):
                    w = m.weight if isinstance(m, FoldedConv2d) else m.to_dense_weight()
                    p = [_square(v, k, node.name) for k, v in (("stride", m.stride), ("padding", m.padding), ("dilation", m.dilation))]
                    emit(node, "conv", [vin], value, weight=_as_f32(w, node.name),
                         bias=None if m.bias is None else _as_f32(m.bias, node.name), stride=p[0], pad=p[1], dil=p[2],
                         groups=int(m.groups), relu=bool(m.relu))
                elif type(m) in (nn.BatchNorm2d, nn.BatchNorm1d):  # folded by _fold_bn (1d: after a linear)
                    if type(m) is nn.BatchNorm1d and len(ir.shapes[vin]) != 1:
                        raise PlanUnsupported(node.name, f"{what} (BatchNorm1d)",
                                              f"BatchNorm1d on an activation of shape {ir.shapes[vin]}; the plan "
                                              "folds it into the linear layer before it, on (N, features)")
                    emit(node, "bn", [vin], value, bn=m)
                elif type(m) is nn.ReLU:
                    emit(node, "relu", [vin], value, inplace=bool(m.inplace))
                elif isinstance(m, OptionAShortcut):
                    if m.is_identity:
                        alias(node, x)
                    else:
                        c_in = ir.shapes[vin][0]
                        left = m.pad[0] if m.pad is not None else (m.out_planes - c_in) // 2
                        emit(node, "shortcut", [vin], value, stride=m.stride, left=int(left))
                elif type(m) is nn.MaxPool2d:
                    emit(node, "maxpool", [vin], value, **_maxpool_params(m.kernel_size, m.stride, m.padding, m.dilation,
                                                                        m.ceil_mode, m.return_indices, node.name))
                elif type(m) in (nn.ReLU6, nn.Hardtanh):
                    emit(node, "clamp", [vin], value, lo=float(m.min_val), hi=float(m.max_val))
                elif type(m) is nn.AdaptiveAvgPool2d and m.output_size in (1, (1, 1)):
                    emit(node, "avgpool", [vin], value)
                elif type(m) is nn.Flatten and m.start_dim == 1 and m.end_dim == -1:
                    emit(node, "flatten", [vin], value)
                elif type(m) is nn.Linear or isinstance(m, (FoldedLinear, SparseLinear)):
                    if len(ir.shapes[vin]) != 1:  # torch applies it over the last axis of (N, C, H, W)
                        raise PlanUnsupported(node.name, f"{what} ({type(m).__name__})",
                                              f"linear layer on an activation of shape {ir.shapes[vin]}; "
                                              "the plan runs it on (N, features)")
                    w = m.to_dense_weight() if isinstance(m, SparseLinear) else m.weight
                    emit(node, "linear", [vin], value, weight=_as_f32(w, node.name),
                         bias=None if m.bias is None else _as_f32(m.bias, node.name), relu=bool(getattr(m, "relu", False)))
                else:
                    raise PlanUnsupported(node.name, f"{what} ({type(m).__name__})")
                continue
            if is_relu_call(node) and act(x):
                emit(node, "relu", [vid_of[x]], value, inplace=relu_call_inplace(node))
            elif node.op == "call_function" and node.target in (F.relu6, F.hardtanh) and act(x):
                args = concrete(node.args[1:])
                kw = concrete({k: v for k, v in node.kwargs.items() if k != "inplace"})
                lo, hi = (0.0, 6.0) if node.target is F.relu6 else (
                    float(args[0] if len(args) > 0 else kw.get("min_val", -1.0)),
                    float(args[1] if len(args) > 1 else kw.get("max_val", 1.0)))
                emit(node, "clamp", [vid_of[x]], value, lo=lo, hi=hi, inplace=bool(node.kwargs.get("inplace", False)))
            elif node.op == "call_function" and node.target is F.max_pool2d and act(x):
                a = list(concrete(node.args[1:])) + [None] * 6
                kw = concrete(node.kwargs)
                get = lambda i, k, d: kw.get(k, a[i] if a[i] is not None else d)  # noqa: E731
                ks = get(0, "kernel_size", None)
                emit(node, "maxpool", [vid_of[x]], value, **_maxpool_params(
                    ks, get(1, "stride", None) or ks, get(2, "padding", 0), get(3, "dilation", 1),
                    get(4, "ceil_mode", False), get(5, "return_indices", False), node.name))
            elif is_add_call(node) and act(node.args[0]) and act(node.args[1]):
                a, b = vid_of[node.args[0]], vid_of[node.args[1]]
                if ir.shapes[a] != ir.shapes[b]:
                    raise PlanUnsupported(node.name, what, "broadcasting add")
                emit(node, "add", [a, b], value, inplace=add_call_inplace(node))
            elif node.op == "call_function" and node.target is F.adaptive_avg_pool2d and act(x) \
                    and concrete(node.args[1] if len(node.args) > 1 else node.kwargs.get("output_size")) in (1, (1, 1), [1, 1]):
                emit(node, "avgpool", [vid_of[x]], value)
            elif ((node.op == "call_function" and node.target is torch.flatten) or
                  (node.op == "call_method" and node.target == "flatten")) and act(x) and value.dim() == 2:
                emit(node, "flatten", [vid_of[x]], value)
            elif node.op == "call_method" and node.target in ("view", "reshape") and act(x) and value.dim() == 2 \
                    and len(ir.shapes[vid_of[x]]) in (1, 3):
                emit(node, "flatten", [vid_of[x]], value)
            elif node.op == "call_method" and node.target == "contiguous" and act(x):
                alias(node, x)
            elif node.op == "call_function" and node.target is operator.getitem and act(x) \
                    and _subsample_stride(concrete(node.args[1])) is not None and len(ir.shapes[vid_of[x]]) == 3:
                emit(node, "shortcut", [vid_of[x]], value, stride=_subsample_stride(concrete(node.args[1])), left=0)
            elif node.op == "call_function" and node.target is F.pad and act(x):
                pads = list(concrete(node.args[1] if len(node.args) > 1 else node.kwargs.get("pad")))
                mode = node.kwargs.get("mode", node.args[2] if len(node.args) > 2 else "constant")
                val = node.kwargs.get("value", node.args[3] if len(node.args) > 3 else None)
                if len(pads) != 6 or any(pads[:4]) or mode != "constant" or val not in (None, 0, 0.0) \
                        or min(pads) < 0 or len(ir.shapes[vid_of[x]]) != 3:
                    raise PlanUnsupported(node.name, what, "only zero channel padding (option-A shortcut) is supported")
                emit(node, "shortcut", [vid_of[x]], value, stride=1, left=int(pads[4]))
            else:
                raise PlanUnsupported(node.name, what)
    if ir.output < 0:
        raise PlanUnsupported("output", "output", "graph has no output")
    return ir


def _maxpool_params(k: Any, stride: Any, pad: Any, dil: Any, ceil_mode: bool, indices: bool, node: str) -> dict[str, int]:
    if ceil_mode or indices or _square(dil, "dilation", node) != 1:
        raise PlanUnsupported(node, "max_pool2d", "ceil_mode, return_indices and dilation are not supported")
    k = _square(k, "kernel_size", node)
    return dict(stride=_square(stride if stride not in (None, (), []) else k, "stride", node), pad=_square(pad, "padding", node),
                k=k)


def getattr_path(root: nn.Module, target: str) -> Any:
    obj: Any = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


# ------------------------------------------------------------------------------------------
# Passes
def _check_inplace(ir: _IR) -> None:
    """An in-place op whose input is read again later would change other readers: refuse."""
    for i, op in enumerate(ir.ops):
        if op.inplace:
            src = op.inputs[0]
            later = [o for o in ir.ops[i + 1:] if src in o.inputs] + ([1] if ir.output == src else [])
            if later:
                raise PlanUnsupported(op.name, op.kind, "in-place op on a value that is read again later")


def _fold_bn(ir: _IR) -> None:
    for op in list(ir.ops):
        if op.kind != "bn":
            continue
        prod = ir.producer(op.inputs[0])
        kind = type(op.bn).__name__
        want = "linear" if kind == "BatchNorm1d" else "conv"
        if prod is None or prod.kind != want or prod.relu or len(ir.users(op.inputs[0])) != 1 \
                or ir.output == op.inputs[0]:
            raise PlanUnsupported(op.name, kind, "a BatchNorm is supported only right after a conv" if want == "conv"
                                  else "a BatchNorm1d is supported only right after a linear layer")
        reason = _fold.can_fold_bn(op.bn)
        if reason:
            raise PlanUnsupported(op.name, kind, reason)
        prod.weight, prod.bias = _fold.fold_bn_params(prod.weight, prod.bias, op.bn)
        prod.out = op.out
        ir.ops.remove(op)


def _fuse(ir: _IR) -> None:
    """ReLU into its producer (conv / add / linear); chained shortcuts into one."""
    for op in list(ir.ops):
        src = op.inputs[0]
        prod = ir.producer(src)
        if prod is None or len(ir.users(src)) != 1 or ir.output == src:
            continue
        if op.kind == "relu" and prod.kind in ("conv", "add", "linear"):
            prod.relu = True
        elif op.kind == "relu" and prod.kind == "relu":
            pass  # relu(relu(x)) = relu(x)
        elif op.kind == "shortcut" and prod.kind == "shortcut":
            # subsample and zero channel padding commute: (s1, l1) then (s2, l2) = (s1 * s2, l1 + l2)
            prod.stride *= op.stride
            prod.left += op.left
        else:
            continue
        prod.out = op.out
        ir.ops.remove(op)


def _fuse_residual(ir: _IR) -> None:
    """``relu?(conv(x) + r)`` -> one conv op with a residual epilogue, run where the add was
    (so that ``r`` is ready); the conv's output must feed only the add."""
    for op in list(ir.ops):
        if op.kind != "add":
            continue
        cands = []
        for i, v in enumerate(op.inputs):
            prod = ir.producer(v)
            if prod is not None and prod.kind == "conv" and not prod.relu and prod.residual is None \
                    and len(ir.users(v)) == 1 and ir.output != v and op.inputs[0] != op.inputs[1]:
                cands.append((ir.ops.index(prod), i, prod))
        if not cands:
            continue
        _, i, conv = max(cands, key=lambda c: c[0])
        conv.residual = op.inputs[1 - i]
        conv.inputs = [conv.inputs[0], conv.residual]
        conv.relu, conv.out = op.relu, op.out
        ir.ops.remove(conv)
        ir.ops[ir.ops.index(op)] = conv


def _assign_buffers(ir: _IR) -> tuple[dict[int, int], list[tuple[int, int, int, int]]]:
    """Buffer id per value (flatten = same buffer) and buffer specs ``(C, H, W, P)``.

    P (zero border) is the padding of a stride-1 conv that reads the value (so that it reads
    the buffer as it is); 0 where a flatten/linear reads it; else the P of the add/relu it
    feeds. Buffers of equal (C, H, W, P) are reused once their value is dead.
    """
    root: dict[int, int] = {v: v for v in ir.shapes}
    for op in ir.ops:
        if op.kind == "flatten":
            root[op.out] = root[op.inputs[0]]
    storage_shape = {v: ir.shapes[root[v]] for v in ir.shapes}
    P: dict[int, int] = {}
    for v in reversed(list(ir.shapes)):
        if root[v] != v:
            continue
        aliases = [u for u in ir.shapes if root[u] == v]
        users = [op for op in ir.ops if any(a in op.inputs for a in aliases)]
        p = None
        if any(op.kind in ("flatten", "linear") for op in users) or len(storage_shape[v]) != 3:
            p = 0
        for op in users:
            if p is None and op.kind == "conv" and op.stride == 1 and op.inputs[0] in aliases:
                p = op.pad
        for op in users:
            if p is None and op.kind in ("add", "relu", "clamp") and root[op.out] in P:
                p = P[root[op.out]]
        P[v] = p if p is not None else 0
    last_use: dict[int, int] = {}
    for i, op in enumerate(ir.ops):
        for a in op.inputs:
            last_use[root[a]] = i
    last_use[root[ir.output]] = len(ir.ops)
    specs: list[tuple[int, int, int, int]] = []
    free: dict[tuple[int, int, int, int], list[int]] = {}
    buf: dict[int, int] = {}

    def spec(v: int) -> tuple[int, int, int, int]:
        s = storage_shape[v]
        c, h, w = (s if len(s) == 3 else (s[0], 1, 1))
        return (c, h, w, P[v])

    def alloc(v: int) -> None:
        key = spec(v)
        if free.get(key):
            buf[v] = free[key].pop()
        else:
            specs.append(key)
            buf[v] = len(specs) - 1

    alloc(root[ir.input])
    for i, op in enumerate(ir.ops):
        if op.kind != "flatten":
            alloc(root[op.out])
        for a in set(root[x] for x in op.inputs):
            if last_use.get(a) == i and a != root[op.out]:
                free.setdefault(spec(a), []).append(buf[a])
    return {v: buf[root[v]] for v in ir.shapes if root[v] in buf}, specs


def _pack(w: torch.Tensor, backend: str, groups: int, block_rows: int) -> CSRWeight | BSRWeight:
    if backend == "auto":
        backend = "bsr" if float((w != 0).float().mean()) >= AUTO_BSR_DENSITY else "csr"
    if backend == "bsr" and (groups == 1 or (w.shape[0] // groups) % block_rows == 0):
        return BSRWeight.from_dense(w, block_rows)
    return CSRWeight.from_dense(w)


def _emit(ir: _IR, backend: str, block_rows: int, packed: Optional[dict[str, Any]] = None,
          jit: bool = True) -> Any:
    """The native plan of ``ir``; ``packed`` (if given) receives each conv/linear op's packed
    weight by op name; ``jit``: generated conv kernels where the CPU allows."""
    native = load_native()
    plan = native.Plan(jit)
    buf, specs = _assign_buffers(ir)
    for c, h, w, p in specs:
        plan.add_buffer(c, h, w, p)
    plan.set_io(buf[ir.input], buf[ir.output])

    def b(t: Optional[torch.Tensor]) -> Optional[np.ndarray]:
        return None if t is None else t.detach().to(torch.float32).contiguous().numpy()

    for op in ir.ops:
        ins = [buf[v] for v in op.inputs]
        if op.kind == "conv":
            pw = _pack(op.weight, backend, op.groups, block_rows)
            if packed is not None:
                packed[op.name] = pw
            plan.add_conv(op.name, pw.kind, pw.values, pw.indptr, pw.indices, list(op.weight.shape),
                          getattr(pw, "block_rows", 1), b(op.bias), op.stride, op.pad, op.dil, op.groups, op.relu,
                          ins[0], buf[op.out], -1 if op.residual is None else buf[op.residual])
        elif op.kind == "linear":
            pw = CSRWeight.from_dense(op.weight)
            if packed is not None:
                packed[op.name] = pw
            plan.add_linear(op.name, pw.values, pw.indptr, pw.indices, op.weight.shape[0], op.weight.shape[1],
                            b(op.bias), op.relu, ins[0], buf[op.out])
        elif op.kind == "add":
            plan.add_add(op.name, ins[0], ins[1], buf[op.out], op.relu)
        elif op.kind == "relu":
            plan.add_relu(op.name, ins[0], buf[op.out])
        elif op.kind == "shortcut":
            plan.add_shortcut(op.name, ins[0], buf[op.out], op.stride, op.left)
        elif op.kind == "avgpool":
            plan.add_avgpool(op.name, ins[0], buf[op.out])
        elif op.kind == "maxpool":
            plan.add_maxpool(op.name, ins[0], buf[op.out], op.k, op.stride, op.pad)
        elif op.kind == "clamp":
            plan.add_clamp(op.name, ins[0], buf[op.out], op.lo, op.hi)
        elif op.kind == "flatten":
            pass  # same buffer, P = 0
        else:  # pragma: no cover - removed by the passes
            raise PlanUnsupported(op.name, op.kind)
    return plan


def _compile_native(gm: torch.fx.GraphModule, input_size: tuple[int, int, int], backend: str,
                    block_rows: int, info: Optional[dict[str, Any]] = None,
                    jit: bool = True) -> tuple[Any, tuple[int, ...]]:
    """``(native plan, output shape)``; ``info`` (if given) receives the final ``ir`` and the
    ``packed`` weights by op name."""
    ir = _build_ir(gm, input_size)
    _check_inplace(ir)
    _fold_bn(ir)
    _fuse(ir)
    _fuse_residual(ir)
    if ir.output == ir.input:
        raise PlanUnsupported("output", "identity", "the model returns its input")
    packed: dict[str, Any] = {}
    plan = _emit(ir, backend, block_rows, packed, jit)
    if info is not None:
        info.update(ir=ir, packed=packed)
    return plan, ir.shapes[ir.output]


# ------------------------------------------------------------------------------------------
# Footprint, counted as sparsify counts it
def _sparsify_format(backend: str) -> str:
    """The ``sparsify`` backend whose footprint a plan of ``backend`` reports (``auto`` -> ``csr``,
    as ``compile_plan(..., fallback=True)``)."""
    return "csr" if backend == "auto" else backend


def _layer_stored_bytes(op: _Op, pw: CSRWeight | BSRWeight, fmt: str) -> int:
    """What ``sparsify(model, fmt)`` stores for the layer of ``op`` (``SparseConv2d`` /
    ``SparseLinear.weight_nbytes``): the weight packed in ``fmt`` (BSR: ``from_dense``'s default
    block) plus the bias. The plan's own packing ``pw`` is reused where it is that format."""
    from .modules import _native_format

    cls = _native_format(fmt)
    rows = getattr(pw, "block_rows", None)
    same = pw.kind == fmt and (rows is None or rows == inspect.signature(cls.from_dense).parameters["block_rows"].default)
    if not same:
        pw = cls.from_dense(op.weight.detach().contiguous())
    return int(pw.nbytes) + (0 if op.bias is None else int(op.bias.nbytes))


def _stored_bytes(model: nn.Module, gm: torch.fx.GraphModule, ir: _IR, packed: dict[str, Any],
                  backend: str) -> Optional[int]:
    """``sparsify(model, fmt).sparsify_report.model_sparse_bytes`` computed from the plan's graph
    and converted weights, or ``None`` where the plan cannot vouch that sparsify would convert
    and fold the same layers (then :meth:`PlanModule.footprint` asks sparsify itself).

    sparsify (fx path) replaces every conv/linear by a packed layer (counted as
    ``weight_nbytes``), drops the BatchNorms folded into them, and counts every other tensor of
    the traced model (parameters and buffers of the called modules and of ``get_attr`` nodes)
    dense, through the same :func:`~prunecal.sparse.sparsify._tensor_bytes`.
    """
    from .sparsify import _LAYER_TYPES, _tensor_bytes

    fmt = _sparsify_format(backend)
    if any(isinstance(m, _InferenceLayer) for m in model.modules()):
        return None  # sparsify's module walk keeps those layers as they are
    try:
        torch.fx.symbolic_trace(model)  # sparsify's own trace; if it fails, sparsify walks modules
    except Exception:
        return None
    modules = dict(gm.named_modules())
    calls: dict[str, int] = {}
    for n in gm.graph.nodes:
        if n.op == "call_module":
            calls[str(n.target)] = calls.get(str(n.target), 0) + 1
    if any(c != 1 for c in calls.values()):
        return None  # shared modules: sparsify neither folds nor fuses them
    for n in gm.graph.nodes:  # every BN was folded by the plan; sparsify folds it when the conv feeds only it
        if n.op == "call_module" and isinstance(modules[str(n.target)], nn.modules.batchnorm._BatchNorm):
            src = n.args[0] if n.args else None
            if not (isinstance(src, torch.fx.Node) and src.op == "call_module"
                    and type(modules[str(src.target)]) is nn.Conv2d and len(src.users) == 1):
                return None
    layers: set[str] = set()
    total = 0
    for op in ir.ops:
        if op.kind in ("conv", "linear"):
            m = modules.get(op.target) if op.target else None
            if type(m) not in _LAYER_TYPES or m.weight.device.type != "cpu" or op.name not in packed:
                return None
            layers.add(op.target)
            total += _layer_stored_bytes(op, packed[op.name], fmt)
    others: list[torch.Tensor] = []
    for t in calls:
        m = modules[t]
        if t not in layers and not isinstance(m, nn.modules.batchnorm._BatchNorm):
            others += list(m.parameters()) + list(m.buffers())
    for n in gm.graph.nodes:
        if n.op == "get_attr":
            owner_name, _, attr = str(n.target).rpartition(".")
            owner = gm.get_submodule(owner_name) if owner_name else gm
            if attr in owner._parameters or attr in owner._buffers:
                others.append(getattr(owner, attr))
    return total + _tensor_bytes(others)


# ------------------------------------------------------------------------------------------
class PlanModule(nn.Module):
    """A whole network as one native call per batch (built by :func:`compile_plan`).

    ``forward(x)``: float32 ``(N, C, H, W)`` CPU tensor -> float32 ``(N, *out_shape)`` (logits
    ``(N, classes)`` for a classifier). Inference only: no gradients.

    Attributes:
        backend: ``"csr"``, ``"bsr"`` or ``"auto"``.
        threads: worker threads (``None``: ``torch.get_num_threads()`` at each call).
        mode: ``"auto"``, ``"image"`` or ``"op"`` (see :data:`PLAN_MODES`).
        isa: kernel set, ``"auto"``, ``"avx2"``, ``"neon"`` (AArch64) or ``"generic"``.
        jit: generated conv kernels (fixed at compile time; see :func:`compile_plan`).
    """

    def __init__(self, model: nn.Module, backend: str, block_rows: int, input_size: tuple[int, int, int],
                 threads: Optional[int], mode: str, isa: str, jit: bool = True) -> None:
        super().__init__()
        # a private copy (in a list: not a submodule, so its parameters stay out of this
        # module's state); traced on demand, the trace and native plans are rebuilt after unpickling
        self._model = [model]
        self._gm: list[torch.fx.GraphModule] = [_trace(model)]
        self.backend, self.block_rows = backend, block_rows
        self.threads, self.mode, self.isa = threads, mode, isa
        self.jit = bool(jit)
        self._plans: dict[tuple[int, int, int], tuple[Any, tuple[int, ...]]] = {}
        self.input_size = tuple(int(s) for s in input_size)
        info: dict[str, Any] = {}
        self._plans[self.input_size] = _compile_native(self._gm[0], self.input_size, backend, block_rows, info,
                                                       self.jit)
        from .sparsify import _model_bytes

        stored = _stored_bytes(model, self._gm[0], info["ir"], info["packed"], backend)
        self._footprint: Optional[tuple[int, int]] = None if stored is None else (_model_bytes(model), stored)

    def _plan_source(self) -> nn.Module:
        """The (eval-mode, pruning-free) copy of the model this plan was compiled from."""
        return self._model[0]

    def __getstate__(self) -> dict[str, Any]:  # native plans do not pickle: rebuilt on demand
        state = dict(self.__dict__)
        state["_plans"] = {}
        state["_gm"] = []
        return state

    def plan_for(self, input_size: tuple[int, int, int]) -> Any:
        """The native ``prunecal._C.Plan`` for inputs of ``(C, H, W)`` (compiled on first use)."""
        key = tuple(int(s) for s in input_size)
        if key not in self._plans:
            if len(self._plans) >= 8:
                self._plans.pop(next(iter(self._plans)))
            if not self._gm:
                self._gm.append(_trace(self._model[0]))
            self._plans[key] = _compile_native(self._gm[0], key, self.backend, self.block_rows,
                                               jit=getattr(self, "jit", True))
        return self._plans[key][0]

    @property
    def plan(self) -> Any:
        """The native plan for :attr:`input_size`."""
        return self.plan_for(self.input_size)

    def footprint(self) -> tuple[int, int]:
        """``(dense_bytes, stored_bytes)`` of the model, exactly
        ``sparsify(model, backend).sparsify_report.model_dense_bytes / model_sparse_bytes``
        (backend ``"auto"`` counts as ``"csr"``): all parameters and buffers dense, versus the
        converted conv/linear layers packed in the backend's format (float32 values, int32
        indices, plus bias), BatchNorms folded away, everything else dense.

        Computed at compile time from the weights the plan converted (this is the per-layer
        format of ``sparsify``; the plan itself keeps linear layers in CSR, and ``block_rows`` /
        ``"auto"`` may pack convs differently). Where the plan cannot vouch for sparsify's
        choices (shared modules, layers of a sparsify model, a model only the plan's tracer
        traces...), the numbers come from ``sparsify`` itself (computed once, then cached).
        """
        fp = getattr(self, "_footprint", None)
        if fp is None:
            from .sparsify import sparsify

            rep = sparsify(self._model[0], _sparsify_format(self.backend), plan=False).sparsify_report
            fp = self._footprint = (int(rep.model_dense_bytes), int(rep.model_sparse_bytes))
        return fp

    def describe(self, input_size: Optional[tuple[int, int, int]] = None) -> str:
        """One line per native op, plus buffers and arena size."""
        p = self.plan_for(input_size or self.input_size)
        head = (f"plan: backend={self.backend}, input={tuple(p.input_shape)}, {p.n_ops} ops, {p.n_buffers} buffers, "
                f"arena {p.arena_bytes / 1024:.0f} KiB per thread"
                + (f" (+ {p.lane_bytes / 1024:.0f} KiB lanes buffers at >= 4 images a thread)" if p.lane_bytes else ""))
        return "\n".join([head] + ["  " + line for line in p.describe()])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # cheap checks first: at batch 1 this wrapper is a few % of the whole network's time
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
        if x.dtype != torch.float32:
            raise TypeError(f"x: expected dtype torch.float32, got {x.dtype}")
        if x.is_sparse or x.layout != torch.strided or not x.is_cpu:
            raise ValueError(f"x: expected a dense CPU tensor, got {x.device} / {x.layout}")
        if x.requires_grad and torch.is_grad_enabled():
            raise RuntimeError("PlanModule is inference-only; run it under torch.no_grad()")
        shape = x.shape
        if len(shape) != 4 or min(shape[1:]) < 1:
            raise ValueError(f"x: expected a 4-D (N, C, H, W) tensor, got shape {tuple(shape)}")
        key = (shape[1], shape[2], shape[3])
        entry = self._plans.get(key)
        if entry is None:
            self.plan_for(key)
            entry = self._plans[key]
        plan, out_shape = entry
        if x.requires_grad:
            x = x.detach()
        if not x.is_contiguous():
            x = x.contiguous()
        n = shape[0]
        out = torch.empty((n, math.prod(out_shape)), dtype=torch.float32)
        if n:
            threads = default_threads(self.threads)
            plan.run(x.numpy(), out.numpy(), threads, self.mode, self.isa)
        return out if len(out_shape) == 1 else out.reshape(n, *out_shape)

    def extra_repr(self) -> str:
        p = self.plan
        return (f"backend={self.backend}, input_size={self.input_size}, ops={p.n_ops}, threads={self.threads}, "
                f"mode={self.mode}")


def compile_plan(model: nn.Module, backend: str = "csr", *, threads: Optional[int] = None,
                 input_size: tuple[int, int, int] = (3, 32, 32), block_rows: int = 4, mode: str = "auto",
                 isa: str = "auto", fallback: bool = False, jit: bool = True) -> nn.Module:
    """Compile ``model`` into a :class:`PlanModule` running as one native call per batch.

    Args:
        model: an eval-mode torch model (BatchNorm is folded and ReLU fused here) or the output
            of :func:`prunecal.sparse.sparsify`. It is not modified.
        backend: ``"csr"``, ``"bsr"`` or ``"auto"`` weight format for the convs (see
            :data:`PLAN_BACKENDS`; linear layers use CSR).
        threads: worker threads (``None``: ``torch.get_num_threads()`` at each call).
        input_size: ``(C, H, W)`` compiled now (others are compiled when first seen).
        block_rows: BSR block height, 4 or 8.
        mode: ``"auto"``, ``"image"`` or ``"op"`` (see :data:`PLAN_MODES`).
        isa: ``"auto"``, ``"avx2"``, ``"neon"`` (AArch64) or ``"generic"`` kernels.
        jit: generate conv kernels for this network's weights at compile time (x86-64 CPUs with
            AVX-512F/VL; CSR convs with groups 1; ``PRUNECAL_NO_JIT=1`` turns them off for the
            whole process). Same results bit for bit as the fixed kernels; ``False`` keeps to
            the fixed (ahead-of-time compiled) kernels.
        fallback: instead of raising :class:`PlanUnsupported`, return
            ``sparsify(model, backend)`` (one native call per layer; ``"auto"`` -> ``"csr"``)
            with the reason in its ``plan_unsupported`` attribute.

    Returns:
        A :class:`PlanModule` (or, with ``fallback``, possibly a ``sparsify`` model).

    Raises:
        PlanUnsupported: a layer or op the plan cannot run (the message names the node).
        ValueError / TypeError: bad arguments, NaN/inf weights.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if isinstance(model, PlanModule):  # e.g. sparsify's result: compile its source again
        model = model._plan_source()
    if backend not in PLAN_BACKENDS:
        raise ValueError(f"backend: expected one of {PLAN_BACKENDS}, got {backend!r}")
    if block_rows not in (4, 8):
        raise ValueError(f"block_rows: expected 4 or 8, got {block_rows!r}")
    if mode not in PLAN_MODES:
        raise ValueError(f"mode: expected one of {PLAN_MODES}, got {mode!r}")
    if threads is not None:
        default_threads(threads)  # validates
    try:
        size = tuple(int(s) for s in input_size)
    except (TypeError, ValueError):
        raise ValueError(f"input_size: expected (C, H, W), got {input_size!r}") from None
    if len(size) != 3 or min(size) < 1:
        raise ValueError(f"input_size: expected (C, H, W) of positive ints, got {input_size!r}")
    if model.training:
        raise ValueError("model: is in training mode; call model.eval() first (BatchNorm must use running stats)")
    from .sparsify import _copy_model, _remove_pruning  # prune-reparametrisation-aware copy

    work = _copy_model(model).eval()  # later edits of `model` do not reach plans compiled later
    _remove_pruning(work)
    try:
        return PlanModule(work, backend, block_rows, size, threads, mode, isa, bool(jit))
    except PlanUnsupported as e:
        if not fallback:
            raise
        from .sparsify import sparsify

        out = sparsify(model, "csr" if backend == "auto" else backend, threads=threads, plan=False)
        out.plan_unsupported = out.sparsify_report.plan_unsupported = str(e)
        return out
