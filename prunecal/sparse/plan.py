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
from typing import Any, Optional

import numpy as np
import torch
import torch.fx
from torch import nn

from prunecal._native import default_threads, load_native

from . import fold as _fold
from .formats import BSRWeight, CSRWeight
from .modules import _InferenceLayer
from .plan_ir import _IR, PlanUnsupported, _Op, _trace, build_ir

__all__ = ["PlanUnsupported", "PlanModule", "compile_plan", "PLAN_BACKENDS", "PLAN_MODES"]

PLAN_BACKENDS = ("csr", "bsr", "auto")
"""Conv weight format: ``csr``, ``bsr`` (blocks of ``block_rows`` output channels), or ``auto``:
BSR for layers of density >= :data:`AUTO_BSR_DENSITY`, CSR for the rest."""
AUTO_BSR_DENSITY = math.inf
"""Density from which ``auto`` packs a layer as BSR; default ``inf``: never, so ``auto`` = CSR.
(It was 0.5, for ResNet-56's dense stem; since the generated kernels CSR is as fast there, and
on VGG-16-BN / MobileNetV2 at 90 % the BSR-packed dense-ish layers cost 32 % / 19 % at batch 64
on the AVX-512 path, up to 6 % at batch 1 on the AVX2 path: docs/performance.md.)"""
PLAN_MODES = ("auto", "image", "op")
"""``image``: each thread runs the whole network on its own images (no barrier per layer);
``op``: images one at a time, every conv split over the threads; ``auto``: ``image`` when the
batch shares out evenly over the threads (``N % threads == 0``) or ``N >= 4 * threads``; else
``op`` or one thread, whichever the plan measured faster on its earlier calls (busy cores and
slow cross-core round trips make one thread win; both give the same bits)."""

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
    ir = build_ir(gm, input_size)
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
