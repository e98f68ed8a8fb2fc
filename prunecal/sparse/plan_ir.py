"""The plan's front end: torch.fx tracing and the intermediate representation (IR) a traced
model becomes, one handler per supported layer type or call (``_MODULES``, ``_CALLS``); the
passes that fold, fuse and lay out the IR, and the native emission, are in
:mod:`prunecal.sparse.plan`. A layer type the plan should run is added here, in one place:
a matcher and a handler that emits its op."""
from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune as torch_prune

from prunecal.fx_match import add_call_inplace, is_add_call, is_relu_call, relu_call_inplace
from prunecal.models.resnet_cifar import OptionAShortcut

from .modules import FoldedConv2d, FoldedLinear, SparseConv2d, SparseLinear, _InferenceLayer

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


class _IRBuilder:
    """Interprets a traced graph on a sample batch of ``input_size`` images and records its
    activation ops into an :class:`_IR`: one handler per layer type (``_MODULES``) and per
    function / method call (``_CALLS``); a node no handler takes raises PlanUnsupported."""

    def __init__(self, gm: torch.fx.GraphModule, input_size: tuple[int, int, int]) -> None:
        self.gm, self.input_size = gm, input_size
        self.modules = dict(gm.named_modules())
        self.ir = _IR()
        self.env: dict[torch.fx.Node, Any] = {}  # concrete sample values
        self.vid_of: dict[torch.fx.Node, int] = {}  # activation nodes -> value id
        self.gen = torch.Generator().manual_seed(0)
        self.placeholders = 0

    # -- values ------------------------------------------------------------------------------
    def act(self, a: Any) -> bool:
        return isinstance(a, torch.fx.Node) and a in self.vid_of

    def concrete(self, a: Any) -> Any:
        return torch.fx.node.map_arg(a, lambda n: self.env[n])

    def run(self, node: torch.fx.Node) -> Any:
        try:
            args = torch.fx.node.map_aggregate(self.concrete(node.args),
                                               lambda v: v.clone() if isinstance(v, torch.Tensor) else v)
            kwargs = self.concrete(node.kwargs)
            if node.op == "call_module":
                return self.modules[node.target](*args, **kwargs)
            if node.op == "call_function":
                return node.target(*args, **kwargs)
            self_obj, *rest = args
            return getattr(self_obj, node.target)(*rest, **kwargs)
        except PlanUnsupported:
            raise
        except Exception as e:  # the model itself rejects this input size
            raise ValueError(f"x: the model cannot run an input of shape (N, {', '.join(map(str, self.input_size))}) "
                             f"(node {node.name!r}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e

    @staticmethod
    def shape_of(t: torch.Tensor, name: str) -> tuple[int, ...]:
        if not isinstance(t, torch.Tensor) or t.shape[0] != _SAMPLE_BATCH or t.dim() not in (2, 4):
            raise PlanUnsupported(name, "shape", f"activation of shape {tuple(getattr(t, 'shape', ()))}; "
                                  "the plan handles (N, C, H, W) and (N, F) activations")
        return tuple(t.shape[1:])

    def emit(self, node: torch.fx.Node, kind: str, inputs: list[int], value: Any, **kw: Any) -> None:
        out = self.ir.new(self.shape_of(value, node.name))
        self.ir.ops.append(_Op(kind, node.name, inputs, out,
                               target=str(node.target) if node.op == "call_module" else "", **kw))
        self.vid_of[node] = out

    def alias(self, node: torch.fx.Node, src: torch.fx.Node) -> None:
        self.vid_of[node] = self.vid_of[src]

    def shape(self, node: torch.fx.Node) -> tuple[int, ...]:
        return self.ir.shapes[self.vid_of[node]]

    # -- the walk ----------------------------------------------------------------------------
    def build(self) -> _IR:
        with torch.no_grad():
            for node in self.gm.graph.nodes:
                if node.op == "output":
                    res = node.args[0]
                    if not self.act(res):
                        raise PlanUnsupported(node.name, "output", "the model must return one tensor")
                    self.ir.output = self.vid_of[res]
                    break
                self.node(node)
        if self.ir.output < 0:
            raise PlanUnsupported("output", "output", "graph has no output")
        return self.ir

    def node(self, node: torch.fx.Node) -> None:
        what = f"{node.op} {getattr(node.target, '__name__', node.target)}"
        if node.op == "placeholder":
            self.placeholders += 1
            if self.placeholders > 1:
                raise PlanUnsupported(node.name, what, "the plan takes one input tensor")
            self.env[node] = torch.randn((_SAMPLE_BATCH, *self.input_size), generator=self.gen)
            self.vid_of[node] = self.ir.input = self.ir.new(tuple(self.input_size))
            return
        if node.op == "get_attr":
            self.env[node] = self.concrete(getattr_path(self.gm, node.target))
            return
        if not any(a in self.vid_of for a in node.all_input_nodes):  # shape arithmetic, constants: evaluate
            self.env[node] = v = self.run(node)
            if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == _SAMPLE_BATCH:
                raise PlanUnsupported(node.name, what, "creates a batch-sized tensor from constants")
            return
        value = self.env[node] = self.run(node)
        if (node.op == "call_function" and node.target is getattr and node.args[1] in ("shape", "ndim", "dtype")) \
                or (node.op == "call_method" and node.target in ("size", "dim")):
            return  # metadata: a constant for this input size
        if node.op == "call_module":
            self.module(node, what, value)
            return
        x = node.args[0] if node.args else None
        for matches, handle in _CALLS:
            if matches(self, node, x):
                handle(self, node, x, what, value)
                return
        raise PlanUnsupported(node.name, what)

    def module(self, node: torch.fx.Node, what: str, value: Any) -> None:
        m = self.modules[node.target]
        if _has_user_hooks(m):
            raise PlanUnsupported(node.name, what, "module has forward hooks the plan would drop")
        x = node.args[0] if node.args else None
        if len(node.args) != 1 or node.kwargs or not self.act(x):
            raise PlanUnsupported(node.name, what, "expected one activation argument")
        for matches, handle in _MODULES:
            if matches(m):
                handle(self, node, m, self.vid_of[x], what, value)
                return
        raise PlanUnsupported(node.name, f"{what} ({type(m).__name__})")


# -- module handlers: (node, module, input value id, what, sample output) ----------------------
def _m_alias(b: _IRBuilder, node: torch.fx.Node, m: nn.Module, vin: int, what: str, value: Any) -> None:
    b.alias(node, node.args[0])


def _m_conv(b: _IRBuilder, node: torch.fx.Node, m: nn.Module, vin: int, what: str, value: Any) -> None:
    # (checked in the order of the first fault reported: Conv2d weight, bias, geometry; sparsify's
    # layers geometry, weight, bias)
    if type(m) is nn.Conv2d:
        w = _as_f32(m.weight, node.name)
        b.emit(node, "conv", [vin], value, weight=w, bias=None if m.bias is None else _as_f32(m.bias, node.name),
               **_conv_params(m, node.name))
        return
    p = [_square(v, k, node.name) for k, v in (("stride", m.stride), ("padding", m.padding), ("dilation", m.dilation))]
    w = _as_f32(m.weight if isinstance(m, FoldedConv2d) else m.to_dense_weight(), node.name)
    bias = None if m.bias is None else _as_f32(m.bias, node.name)
    b.emit(node, "conv", [vin], value, weight=w, bias=bias, stride=p[0], pad=p[1], dil=p[2],
           groups=int(m.groups), relu=bool(m.relu))


def _m_batchnorm(b: _IRBuilder, node: torch.fx.Node, m: nn.Module, vin: int, what: str, value: Any) -> None:
    # folded by _fold_bn (BatchNorm1d: into the linear before it)
    if type(m) is nn.BatchNorm1d and len(b.ir.shapes[vin]) != 1:
        raise PlanUnsupported(node.name, f"{what} (BatchNorm1d)",
                              f"BatchNorm1d on an activation of shape {b.ir.shapes[vin]}; the plan "
                              "folds it into the linear layer before it, on (N, features)")
    b.emit(node, "bn", [vin], value, bn=m)


def _m_relu(b: _IRBuilder, node: torch.fx.Node, m: nn.Module, vin: int, what: str, value: Any) -> None:
    b.emit(node, "relu", [vin], value, inplace=bool(m.inplace))


def _m_shortcut(b: _IRBuilder, node: torch.fx.Node, m: nn.Module, vin: int, what: str, value: Any) -> None:
    if m.is_identity:
        b.alias(node, node.args[0])
        return
    left = m.pad[0] if m.pad is not None else (m.out_planes - b.ir.shapes[vin][0]) // 2
    b.emit(node, "shortcut", [vin], value, stride=m.stride, left=int(left))


def _m_maxpool(b: _IRBuilder, node: torch.fx.Node, m: nn.Module, vin: int, what: str, value: Any) -> None:
    b.emit(node, "maxpool", [vin], value, **_maxpool_params(m.kernel_size, m.stride, m.padding, m.dilation,
                                                          m.ceil_mode, m.return_indices, node.name))


def _m_clamp(b: _IRBuilder, node: torch.fx.Node, m: nn.Module, vin: int, what: str, value: Any) -> None:
    b.emit(node, "clamp", [vin], value, lo=float(m.min_val), hi=float(m.max_val))


def _m_unary(kind: str) -> Callable[..., None]:
    """The handler of a module that becomes one ``kind`` op of its input, no parameters."""
    def handler(b: _IRBuilder, node: torch.fx.Node, m: nn.Module, vin: int, what: str, value: Any) -> None:
        b.emit(node, kind, [vin], value)
    return handler


def _m_linear(b: _IRBuilder, node: torch.fx.Node, m: nn.Module, vin: int, what: str, value: Any) -> None:
    if len(b.ir.shapes[vin]) != 1:  # torch applies it over the last axis of (N, C, H, W)
        raise PlanUnsupported(node.name, f"{what} ({type(m).__name__})",
                              f"linear layer on an activation of shape {b.ir.shapes[vin]}; "
                              "the plan runs it on (N, features)")
    w = m.to_dense_weight() if isinstance(m, SparseLinear) else m.weight
    b.emit(node, "linear", [vin], value, weight=_as_f32(w, node.name),
           bias=None if m.bias is None else _as_f32(m.bias, node.name), relu=bool(getattr(m, "relu", False)))


_MODULES: list[tuple[Callable[[nn.Module], bool], Callable[..., None]]] = [
    (lambda m: isinstance(m, _ALIAS_MODULES), _m_alias),
    (lambda m: type(m) is nn.Conv2d or isinstance(m, (FoldedConv2d, SparseConv2d)), _m_conv),
    (lambda m: type(m) in (nn.BatchNorm2d, nn.BatchNorm1d), _m_batchnorm),
    (lambda m: type(m) is nn.ReLU, _m_relu),
    (lambda m: isinstance(m, OptionAShortcut), _m_shortcut),
    (lambda m: type(m) is nn.MaxPool2d, _m_maxpool),
    (lambda m: type(m) in (nn.ReLU6, nn.Hardtanh), _m_clamp),
    (lambda m: type(m) is nn.AdaptiveAvgPool2d and m.output_size in (1, (1, 1)), _m_unary("avgpool")),
    (lambda m: type(m) is nn.Flatten and m.start_dim == 1 and m.end_dim == -1, _m_unary("flatten")),
    (lambda m: type(m) is nn.Linear or isinstance(m, (FoldedLinear, SparseLinear)), _m_linear),
]
"""Module types the plan runs, first match wins: (matches(module), handler)."""


# -- call handlers: (node, its first argument, what, sample output) ----------------------------
def _is_fn(node: torch.fx.Node, *fns: Any) -> bool:
    return node.op == "call_function" and any(node.target is f for f in fns)


def _is_method(node: torch.fx.Node, *names: str) -> bool:
    return node.op == "call_method" and node.target in names


def _c_relu(b: _IRBuilder, node: torch.fx.Node, x: Any, what: str, value: Any) -> None:
    b.emit(node, "relu", [b.vid_of[x]], value, inplace=relu_call_inplace(node))


def _c_clamp(b: _IRBuilder, node: torch.fx.Node, x: Any, what: str, value: Any) -> None:
    args = b.concrete(node.args[1:])
    kw = b.concrete({k: v for k, v in node.kwargs.items() if k != "inplace"})
    lo, hi = (0.0, 6.0) if node.target is F.relu6 else (
        float(args[0] if len(args) > 0 else kw.get("min_val", -1.0)),
        float(args[1] if len(args) > 1 else kw.get("max_val", 1.0)))
    b.emit(node, "clamp", [b.vid_of[x]], value, lo=lo, hi=hi, inplace=bool(node.kwargs.get("inplace", False)))


def _c_maxpool(b: _IRBuilder, node: torch.fx.Node, x: Any, what: str, value: Any) -> None:
    a = list(b.concrete(node.args[1:])) + [None] * 6
    kw = b.concrete(node.kwargs)
    get = lambda i, k, d: kw.get(k, a[i] if a[i] is not None else d)  # noqa: E731
    ks = get(0, "kernel_size", None)
    b.emit(node, "maxpool", [b.vid_of[x]], value, **_maxpool_params(
        ks, get(1, "stride", None) or ks, get(2, "padding", 0), get(3, "dilation", 1),
        get(4, "ceil_mode", False), get(5, "return_indices", False), node.name))


def _c_add(b: _IRBuilder, node: torch.fx.Node, x: Any, what: str, value: Any) -> None:
    u, v = b.vid_of[node.args[0]], b.vid_of[node.args[1]]
    if b.ir.shapes[u] != b.ir.shapes[v]:
        raise PlanUnsupported(node.name, what, "broadcasting add")
    b.emit(node, "add", [u, v], value, inplace=add_call_inplace(node))


def _c_unary(kind: str) -> Callable[..., None]:
    """The handler of a call that becomes one ``kind`` op of its first argument, no parameters."""
    def handler(b: _IRBuilder, node: torch.fx.Node, x: Any, what: str, value: Any) -> None:
        b.emit(node, kind, [b.vid_of[x]], value)
    return handler


def _c_alias(b: _IRBuilder, node: torch.fx.Node, x: Any, what: str, value: Any) -> None:
    b.alias(node, x)


def _c_subsample(b: _IRBuilder, node: torch.fx.Node, x: Any, what: str, value: Any) -> None:
    b.emit(node, "shortcut", [b.vid_of[x]], value, stride=_subsample_stride(b.concrete(node.args[1])), left=0)


def _c_pad(b: _IRBuilder, node: torch.fx.Node, x: Any, what: str, value: Any) -> None:
    pads = list(b.concrete(node.args[1] if len(node.args) > 1 else node.kwargs.get("pad")))
    mode = node.kwargs.get("mode", node.args[2] if len(node.args) > 2 else "constant")
    val = node.kwargs.get("value", node.args[3] if len(node.args) > 3 else None)
    if len(pads) != 6 or any(pads[:4]) or mode != "constant" or val not in (None, 0, 0.0) \
            or min(pads) < 0 or len(b.shape(x)) != 3:
        raise PlanUnsupported(node.name, what, "only zero channel padding (option-A shortcut) is supported")
    b.emit(node, "shortcut", [b.vid_of[x]], value, stride=1, left=int(pads[4]))


def _avgpool_call(b: _IRBuilder, node: torch.fx.Node, x: Any) -> bool:
    if not (_is_fn(node, F.adaptive_avg_pool2d) and b.act(x)):
        return False
    return b.concrete(node.args[1] if len(node.args) > 1 else node.kwargs.get("output_size")) in (1, (1, 1), [1, 1])


_CALLS: list[tuple[Callable[[_IRBuilder, torch.fx.Node, Any], bool], Callable[..., None]]] = [
    (lambda b, n, x: is_relu_call(n) and b.act(x), _c_relu),
    (lambda b, n, x: _is_fn(n, F.relu6, F.hardtanh) and b.act(x), _c_clamp),
    (lambda b, n, x: _is_fn(n, F.max_pool2d) and b.act(x), _c_maxpool),
    (lambda b, n, x: is_add_call(n) and b.act(n.args[0]) and b.act(n.args[1]), _c_add),
    (_avgpool_call, _c_unary("avgpool")),
    (lambda b, n, x: (_is_fn(n, torch.flatten) or _is_method(n, "flatten")) and b.act(x) and b.env[n].dim() == 2,
     _c_unary("flatten")),
    (lambda b, n, x: _is_method(n, "view", "reshape") and b.act(x) and b.env[n].dim() == 2
     and len(b.shape(x)) in (1, 3), _c_unary("flatten")),
    (lambda b, n, x: _is_method(n, "contiguous") and b.act(x), _c_alias),
    (lambda b, n, x: _is_fn(n, operator.getitem) and b.act(x)
     and _subsample_stride(b.concrete(n.args[1])) is not None and len(b.shape(x)) == 3, _c_subsample),
    (lambda b, n, x: _is_fn(n, F.pad) and b.act(x), _c_pad),
]
"""Function / method calls on activations the plan runs, first match wins: (matches(builder,
node, first argument), handler)."""


def build_ir(gm: torch.fx.GraphModule, input_size: tuple[int, int, int]) -> _IR:
    """Interpret ``gm`` on a sample batch, recording activation ops into an :class:`_IR`."""
    return _IRBuilder(gm, input_size).build()


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
