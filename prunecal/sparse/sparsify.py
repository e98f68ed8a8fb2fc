"""``sparsify``: turn a (pruned) torch model into an inference model on a sparse backend.

Example::

    from prunecal.sparse import sparsify
    fast = sparsify(pruned_model, "csr", threads=2)
    print(fast.sparsify_report)          # runs as plan / layers (and why), density and bytes
    with torch.inference_mode():
        logits = fast(x)

The one public door to fast inference. For ``csr`` / ``bsr`` it returns the whole network
compiled into one native call per batch (a :class:`prunecal.sparse.plan.PlanModule`, exactly
what ``compile_plan(model, backend)`` returns) whenever the network compiles, and otherwise the
per-layer model: a new module (a :class:`torch.fx.GraphModule` when the model traces, else a
deep copy with swapped children) whose conv / linear layers each make one native call, with the
reason the plan refused it in ``sparsify_report.plan_unsupported``. ``plan=False`` asks for the
per-layer model. Either way the result is in eval mode and **inference only**.
"""
from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.fx
from torch import nn
from torch.nn.utils import prune as torch_prune

from . import fold as _fold
from .modules import FoldedConv2d, FoldedLinear, SparseConv2d, SparseLinear, _InferenceLayer

__all__ = ["BACKENDS", "sparsify", "SparsifyReport", "LayerRecord", "SkippedRecord"]

BACKENDS: tuple[str, ...] = ("dense", "torch", "csr", "bsr")
"""``dense``: torch conv/linear on folded weights (the baseline); ``torch``: torch.sparse CSR
matmul after ``F.unfold``; ``csr`` / ``bsr``: prunecal's native kernels."""

_LAYER_TYPES = (nn.Conv2d, nn.Linear)
_OTHER_LAYERS = (nn.modules.conv._ConvNd, nn.Linear, nn.Bilinear)


@dataclass
class LayerRecord:
    """One converted layer. Bytes are the stored weight + bias (dense: float32 weight as
    pruned; sparse: the packed format)."""

    name: str
    kind: str
    shape: tuple[int, ...]
    density: float
    dense_bytes: int
    sparse_bytes: int
    backend: str
    folded_bn: str | None = None
    fused_relu: bool = False


@dataclass
class SkippedRecord:
    """A layer not run by the requested backend; ``fallback`` says what runs it instead."""

    name: str
    kind: str
    reason: str
    fallback: str = "unchanged"


@dataclass
class SparsifyReport:
    """What :func:`sparsify` did. ``model_*_bytes`` are whole-model footprints (all parameters
    and buffers; packed formats for converted layers)."""

    backend: str
    threads: int | None
    graph: str
    trace_error: str | None = None
    layers: list[LayerRecord] = field(default_factory=list)
    skipped: list[SkippedRecord] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    model_dense_bytes: int = 0
    model_sparse_bytes: int = 0
    runs_as: str = "layers"
    """``"plan"``: the returned model is the compiled whole-network plan (``PlanModule``);
    ``"layers"``: one native (or torch) call per converted layer."""
    plan_unsupported: str | None = None
    """Why the returned model is not the plan (``None`` when it is)."""

    @property
    def layer_dense_bytes(self) -> int:
        """Dense bytes of the converted layers."""
        return sum(r.dense_bytes for r in self.layers)

    @property
    def layer_sparse_bytes(self) -> int:
        """Stored bytes of the converted layers in their backend's format."""
        return sum(r.sparse_bytes for r in self.layers)

    @property
    def compression(self) -> float:
        """``model_dense_bytes / model_sparse_bytes`` (> 1 means smaller)."""
        return self.model_dense_bytes / max(self.model_sparse_bytes, 1)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (tuples become lists)."""
        d = asdict(self)
        d.update(layer_dense_bytes=self.layer_dense_bytes, layer_sparse_bytes=self.layer_sparse_bytes,
                 compression=self.compression)
        return json.loads(json.dumps(d))

    def __str__(self) -> str:
        head = (f"sparsify: backend={self.backend}, threads={self.threads or 'torch default'}, "
                f"graph={self.graph}; {len(self.layers)} layers converted, {len(self.skipped)} skipped")
        lines = [head]
        lines.append(f"  runs as: {'one native plan per batch (compile_plan)' if self.runs_as == 'plan' else 'per-layer modules'}"
                     + (f"; no plan: {self.plan_unsupported}" if self.plan_unsupported else ""))
        if self.trace_error:
            lines.append(f"  fx tracing failed ({self.trace_error}); used a module walk")
        if self.layers:
            rows = [("layer", "kind", "shape", "density", "dense KiB", "stored KiB", "backend", "BN folded", "ReLU")]
            for r in self.layers:
                rows.append((r.name, r.kind, "x".join(map(str, r.shape)), f"{r.density:.3f}",
                             f"{r.dense_bytes / 1024:.1f}", f"{r.sparse_bytes / 1024:.1f}", r.backend,
                             r.folded_bn or "-", "yes" if r.fused_relu else "-"))
            lines += _table(rows)
        if self.skipped:
            lines.append("skipped:")
            lines += _table([("layer", "kind", "runs as", "reason")]
                            + [(s.name, s.kind, s.fallback, s.reason) for s in self.skipped])
        lines += [f"note: {n}" for n in self.notes]
        lines.append(f"converted layers: {self.layer_dense_bytes / 1024:.1f} KiB dense -> "
                     f"{self.layer_sparse_bytes / 1024:.1f} KiB stored")
        lines.append(f"whole model: {self.model_dense_bytes / 1024:.1f} KiB dense -> "
                     f"{self.model_sparse_bytes / 1024:.1f} KiB ({self.compression:.2f}x smaller)")
        return "\n".join(lines)


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    out.insert(1, "  " + "  ".join("-" * w for w in widths))
    return out


# --------------------------------------------------------------------------------------------
def _remove_pruning(model: nn.Module) -> None:
    """Make ``torch.nn.utils.prune`` reparametrisations permanent (weight = weight_orig * mask)."""
    for m in model.modules():
        for hook in list(m._forward_pre_hooks.values()):
            if isinstance(hook, torch_prune.BasePruningMethod):
                names = [h._tensor_name for h in hook._pruning_methods] if isinstance(
                    hook, torch_prune.PruningContainer) else [hook._tensor_name]
                for n in dict.fromkeys(names):
                    if hasattr(m, n + "_orig"):
                        torch_prune.remove(m, n)


def _copy_model(model: nn.Module) -> nn.Module:
    """``copy.deepcopy`` that also copes with ``torch.nn.utils.prune`` reparametrisations, whose
    computed ``weight`` attribute (a non-leaf tensor) cannot be deep-copied itself."""
    memo: dict[int, Any] = {}
    for m in model.modules():
        for hook in m._forward_pre_hooks.values():
            if isinstance(hook, torch_prune.BasePruningMethod):
                names = [h._tensor_name for h in hook._pruning_methods] if isinstance(
                    hook, torch_prune.PruningContainer) else [hook._tensor_name]
                for n in names:
                    t = m.__dict__.get(n)
                    if isinstance(t, torch.Tensor):
                        memo[id(t)] = t.detach().clone()
    return copy.deepcopy(model, memo)


def _tensor_bytes(tensors) -> int:
    seen: set[tuple[int, int]] = set()
    total = 0
    for t in tensors:
        if t is None or t.is_sparse or t.layout != torch.strided:
            continue
        key = (t.untyped_storage().data_ptr(), t.storage_offset()) if t.numel() else (id(t), 0)
        if key in seen:
            continue
        seen.add(key)
        total += t.numel() * t.element_size()
    return total


def _model_bytes(model: nn.Module) -> int:
    """Footprint: replacement layers count their packed bytes, everything else its tensors."""
    total = 0
    others = []
    for m in model.modules():
        if isinstance(m, _InferenceLayer):
            total += m.weight_nbytes
        else:
            others += list(m.parameters(recurse=False)) + list(m.buffers(recurse=False))
    return total + _tensor_bytes(others)


def _explicit_padding(conv: nn.Conv2d) -> tuple[int, int] | None:
    """Symmetric zero padding of ``conv`` as a pair, or ``None`` when 'same' is asymmetric."""
    if isinstance(conv.padding, str):
        if conv.padding == "valid":
            return (0, 0)
        pads = []
        for k, d in zip(conv.kernel_size, conv.dilation):
            total = d * (k - 1)
            if total % 2:
                return None
            pads.append(total // 2)
        return (pads[0], pads[1])
    return (int(conv.padding[0]), int(conv.padding[1]))


def _unsupported(mod: nn.Module, backend: str) -> str | None:
    """Why ``backend`` cannot run ``mod`` (which then stays unchanged), or ``None``."""
    if type(mod) not in _LAYER_TYPES:
        return f"unsupported layer type {type(mod).__name__}"
    if _fold.has_hooks(mod):
        return "the module has forward hooks, which a replacement would drop"
    if mod.weight is None or mod.weight.dim() not in (2, 4):
        return "no standard weight"
    if not mod.weight.is_floating_point():
        return f"weight dtype {mod.weight.dtype} is not floating point"
    if isinstance(mod, nn.Conv2d):
        if mod.padding_mode != "zeros":
            return f"padding_mode={mod.padding_mode!r} (only 'zeros' is supported)"
        if _explicit_padding(mod) is None:
            return "padding='same' would need asymmetric padding"
    if backend in ("csr", "bsr", "torch"):
        if mod.weight.device.type != "cpu":
            return f"weight on {mod.weight.device}; sparse backends are CPU-only"
    if backend in ("csr", "bsr"):
        if mod.weight.dtype != torch.float32:
            return f"weight dtype {mod.weight.dtype}; native kernels are float32-only"
        reason = _native_limit(mod)
        if reason:
            return reason
    return None


def _native_limit(mod: nn.Module) -> str | None:
    """Limits of :mod:`prunecal.sparse.ops`: square stride, padding and dilation only."""
    if isinstance(mod, nn.Conv2d):
        pad = _explicit_padding(mod)
        for what, v in (("stride", mod.stride), ("padding", pad), ("dilation", mod.dilation)):
            if v is not None and v[0] != v[1]:
                return f"non-square {what} {tuple(v)} (native kernels need square values)"
    return None


def _check_finite(name: str, t: torch.Tensor | None) -> None:
    if t is not None and not torch.isfinite(t).all():
        raise ValueError(f"model: layer {name!r} has non-finite (NaN/inf) weights or bias")


def _build(name: str, mod: nn.Module, bn: nn.Module | None, bn_name: str | None, relu: bool,
           backend: str, threads: int | None, min_sparsity: float,
           report: SparsifyReport) -> nn.Module:
    """The replacement for ``mod`` (with ``bn`` folded and ``relu`` fused), recorded in ``report``."""
    _check_finite(name, mod.weight)
    _check_finite(name, mod.bias)
    dense_bytes = _tensor_bytes([mod.weight, mod.bias])
    w, b = (_fold.fold_bn_params(mod.weight, mod.bias, bn) if bn is not None
            else (mod.weight.detach(), None if mod.bias is None else mod.bias.detach()))
    density = float((w != 0).sum()) / max(w.numel(), 1)
    use = backend
    if backend != "dense" and density > 1.0 - min_sparsity:
        use = "dense"
        report.skipped.append(SkippedRecord(
            name, type(mod).__name__,
            f"too dense (density {density:.3f} > 1 - min_sparsity = {1.0 - min_sparsity:.3f})",
            fallback="dense" + (" (folded)" if bn is not None else "")))
    is_conv = isinstance(mod, nn.Conv2d)
    kw = dict(relu=relu, folded_bn=bn is not None)
    if is_conv:
        conv_args = (mod.stride, _explicit_padding(mod), mod.dilation, mod.groups)
        new = (FoldedConv2d(w, b, *conv_args, **kw) if use == "dense"
               else SparseConv2d(w, b, *conv_args, backend=use, threads=threads, **kw))
    else:
        new = (FoldedLinear(w, b, **kw) if use == "dense"
               else SparseLinear(w, b, backend=use, threads=threads, **kw))
    if use == backend:
        report.layers.append(LayerRecord(name, type(mod).__name__, tuple(w.shape), density, dense_bytes,
                                         new.weight_nbytes, use, bn_name, relu))
    return new


def _set_submodule(root: nn.Module, target: str, new: nn.Module) -> None:
    parent_name, _, child = target.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


# --------------------------------------------------------------------------------------------
def _sparsify_fx(gm: torch.fx.GraphModule, opts: dict[str, Any], report: SparsifyReport) -> nn.Module:
    modules = dict(gm.named_modules())
    chains, notes = _fold.find_chains(gm, _LAYER_TYPES, fold_bn=opts["fold_bn"], fuse_relu=opts["fuse_relu"])
    report.notes += [f"{t}: {why}" for t, why in notes.items()]
    done: set[str] = set()
    for ch in chains:
        target = str(ch.layer.target)
        if target in done:
            continue
        done.add(target)
        mod = modules[target]
        reason = _unsupported(mod, opts["backend"])
        if reason:
            report.skipped.append(SkippedRecord(target, type(mod).__name__, reason))
            continue
        bn = modules[str(ch.bn.target)] if ch.bn is not None else None
        new = _build(target, mod, bn, str(ch.bn.target) if bn is not None else None, ch.relu is not None,
                     report=report, **opts["build"])
        _set_submodule(gm, target, new)
        if ch.relu is not None:
            ch.relu.replace_all_uses_with(ch.bn or ch.layer)
            gm.graph.erase_node(ch.relu)
        if ch.bn is not None:
            ch.bn.replace_all_uses_with(ch.layer)
            gm.graph.erase_node(ch.bn)
    for n in gm.graph.nodes:  # other conv-like layers the graph calls
        if n.op == "call_module" and str(n.target) not in done:
            mod = modules.get(str(n.target))
            if isinstance(mod, _OTHER_LAYERS):
                done.add(str(n.target))
                report.skipped.append(SkippedRecord(str(n.target), type(mod).__name__,
                                                    f"unsupported layer type {type(mod).__name__}"))
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm


def _sparsify_walk(model: nn.Module, opts: dict[str, Any], report: SparsifyReport) -> nn.Module:
    backend = opts["backend"]
    handled: set[str] = set()
    for ch in _fold.find_sequential_chains(model, _LAYER_TYPES, fold_bn=opts["fold_bn"],
                                           fuse_relu=opts["fuse_relu"]):
        seq = model.get_submodule(ch.seq) if ch.seq else model
        name = f"{ch.seq}.{ch.layer}" if ch.seq else ch.layer
        handled.add(name)
        mod = seq._modules[ch.layer]
        reason = _unsupported(mod, backend)
        if reason:
            report.skipped.append(SkippedRecord(name, type(mod).__name__, reason))
            continue
        bn = seq._modules[ch.bn] if ch.bn is not None else None
        bn_name = (f"{ch.seq}.{ch.bn}" if ch.seq else ch.bn) if ch.bn is not None else None
        setattr(seq, ch.layer, _build(name, mod, bn, bn_name, ch.relu is not None, report=report, **opts["build"]))
        for extra in (ch.bn, ch.relu):
            if extra is not None:
                setattr(seq, extra, nn.Identity())
    slots = [(pname, parent, cname, child) for pname, parent in model.named_modules()
             for cname, child in list(parent._modules.items()) if child is not None]
    for pname, parent, cname, child in slots:
        name = f"{pname}.{cname}" if pname else cname
        if name in handled or isinstance(child, _InferenceLayer) or not isinstance(child, _OTHER_LAYERS):
            continue
        handled.add(name)
        reason = _unsupported(child, backend)
        if reason:
            report.skipped.append(SkippedRecord(name, type(child).__name__, reason))
            continue
        setattr(parent, cname, _build(name, child, None, None, False, report=report, **opts["build"]))
    return model


def sparsify(
    model: nn.Module,
    backend: str = "csr",
    *,
    threads: int | None = None,
    fold_bn: bool = True,
    fuse_relu: bool = True,
    min_sparsity: float = 0.0,
    plan: bool = True,
    input_size: tuple[int, int, int] = (3, 32, 32),
) -> nn.Module:
    """A new inference-only model whose Conv2d / Linear layers run on ``backend``.

    For ``csr`` / ``bsr`` (with ``plan=True``, the default options of ``fold_bn``, ``fuse_relu``
    and ``min_sparsity``) the whole network is compiled into one native call per batch, the
    model :func:`prunecal.sparse.plan.compile_plan` returns, whenever the plan can run it; else
    (``PlanUnsupported``, an input the model cannot take, ``dense`` / ``torch`` backends, other
    options) the per-layer model below, with the reason in ``sparsify_report.plan_unsupported``.

    Per-layer model: BatchNorm2d layers that directly follow a conv are folded into it
    (eval-mode running statistics), and a ReLU that directly follows is fused, wherever the
    graph allows (the intermediate value has no other user). The input model is not modified.

    Args:
        model: a torch model (``torch.nn.utils.prune`` masks are applied and removed on the copy).
        backend: one of :data:`BACKENDS`.
        threads: threads for the native ``csr``/``bsr`` kernels (``None`` = torch's current
            ``torch.get_num_threads()`` at each call). ``dense``/``torch`` use torch's global pool.
        fold_bn: fold BatchNorm2d into the preceding conv.
        fuse_relu: fuse a following ReLU (``nn.ReLU``, ``F.relu``, ``torch.relu``, ``.relu()``).
        min_sparsity: for the sparse backends, layers with density above ``1 - min_sparsity``
            run dense instead (listed as skipped, "too dense"; per-layer model only).
        plan: ``False``: always the per-layer model.
        input_size: ``(C, H, W)`` the plan is compiled for first (other sizes are compiled
            when first seen).

    Returns:
        The new model in eval mode; ``.sparsify_report`` is a :class:`SparsifyReport` whose
        ``runs_as`` says which of the two it is. The plan is a ``PlanModule``; the per-layer
        model a :class:`torch.fx.GraphModule` when ``model`` traces, else a copy of ``model``'s
        class where only provably safe ``nn.Sequential`` conv/BN/ReLU runs are folded.

    Raises:
        ValueError: unknown backend, bad ``threads`` / ``min_sparsity``, NaN/inf weights.
        TypeError: ``model`` is not an ``nn.Module``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if hasattr(model, "_plan_source"):  # a PlanModule (e.g. an earlier sparsify's result)
        model = model._plan_source()
    if backend not in BACKENDS:
        raise ValueError(f"backend: unknown backend {backend!r}; valid backends: {', '.join(BACKENDS)}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads: expected None or an int >= 1, got {threads!r}")
    if not isinstance(min_sparsity, (int, float)) or not 0.0 <= float(min_sparsity) <= 1.0:
        raise ValueError(f"min_sparsity: expected a number in [0, 1], got {min_sparsity!r}")
    if not isinstance(plan, bool):
        raise TypeError(f"plan: expected a bool, got {type(plan).__name__}")
    try:
        input_size = tuple(int(v) for v in input_size)
    except (TypeError, ValueError):
        raise ValueError(f"input_size: expected (C, H, W), got {input_size!r}") from None
    if len(input_size) != 3 or min(input_size) < 1:
        raise ValueError(f"input_size: expected (C, H, W) of positive ints, got {input_size!r}")
    if backend in ("csr", "bsr"):
        try:
            from . import formats, ops  # noqa: F401
        except ImportError as e:
            raise RuntimeError(f"backend {backend!r} needs the native core prunecal._C ({e}); "
                               "build it (scripts/dev_build.sh or pip install .) or use 'dense'/'torch'") from e

    work = _copy_model(model).eval()
    _remove_pruning(work)
    report = SparsifyReport(backend=backend, threads=threads, graph="fx")
    report.model_dense_bytes = _model_bytes(work)
    opts = dict(backend=backend, fold_bn=fold_bn, fuse_relu=fuse_relu,
                build=dict(backend=backend, threads=threads, min_sparsity=float(min_sparsity)))
    try:
        gm = torch.fx.symbolic_trace(work)
    except Exception as e:  # untraceable control flow, unsupported Python constructs, ...
        gm = None
        report.graph = "module walk"
        report.trace_error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
    out = _sparsify_fx(gm, opts, report) if gm is not None else _sparsify_walk(work, opts, report)
    out.eval()
    report.model_sparse_bytes = _model_bytes(out)
    out.sparsify_report = report
    if not plan:
        report.plan_unsupported = "plan=False"
        return out
    why = _plan_precondition(backend, fold_bn, fuse_relu, float(min_sparsity))
    if why is None:
        pm, why = _try_plan(model, backend, threads, input_size)
        if pm is not None:
            report.runs_as = "plan"
            pm._footprint = (int(report.model_dense_bytes), int(report.model_sparse_bytes))
            pm.sparsify_report = report
            return pm
    report.plan_unsupported = why
    return out


def _plan_precondition(backend: str, fold_bn: bool, fuse_relu: bool, min_sparsity: float) -> str | None:
    """Why these options keep to the per-layer model, or ``None``."""
    if backend not in ("csr", "bsr"):
        return f"backend {backend!r} runs per layer (the native plan runs 'csr' / 'bsr')"
    if not (fold_bn and fuse_relu):
        return "fold_bn=False / fuse_relu=False are per-layer options (the plan always folds and fuses)"
    if min_sparsity > 0.0:
        return "min_sparsity > 0 is a per-layer option (the plan runs every conv sparse)"
    return None


def _try_plan(model: nn.Module, backend: str, threads: int | None,
              input_size: tuple[int, int, int]) -> tuple[nn.Module | None, str | None]:
    """``(PlanModule, None)``, or ``(None, reason)`` where the plan cannot run ``model``."""
    from .plan import PlanUnsupported, compile_plan

    try:
        return compile_plan(model.eval() if not model.training else _copy_model(model).eval(), backend,
                            threads=threads, input_size=input_size), None
    except PlanUnsupported as e:
        return None, str(e)
    except ValueError as e:  # e.g. the model cannot take input_size
        return None, f"{type(e).__name__}: {e}"
