"""Weight masks of pruned models and interop with :mod:`torch.nn.utils.prune`.

A mask is a ``bool`` tensor shaped like the weight it belongs to: ``True`` = kept,
``False`` = pruned. prunecal's pruners leave plain weights with zeros (no
reparametrisation); these helpers read masks back, install them as
``torch.nn.utils.prune`` reparametrisations, and read / bake such reparametrisations.
"""
from __future__ import annotations

import copy
from typing import Iterable

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

__all__ = [
    "PRUNABLE_TYPES",
    "effective_weight",
    "prunable_layers",
    "get_masks",
    "apply_masks",
    "apply_masks_torch",
    "masks_from_torch",
    "bake_torch_pruning",
    "has_torch_pruning",
    "deepcopy_model",
]

PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear)
"""Module types whose ``weight`` the unstructured pruners act on."""


def _pruning_hooks(module: nn.Module) -> list[torch_prune.BasePruningMethod]:
    return [h for h in module._forward_pre_hooks.values()
            if isinstance(h, torch_prune.BasePruningMethod)]


def has_torch_pruning(model: nn.Module) -> bool:
    """True if any module of ``model`` carries a ``torch.nn.utils.prune`` reparametrisation."""
    return any(_pruning_hooks(m) for m in model.modules())


def effective_weight(module: nn.Module) -> torch.Tensor:
    """The weight the module computes with: ``weight_orig * weight_mask`` under torch
    pruning, else ``weight`` (a detached view, same shape)."""
    if hasattr(module, "weight_orig") and hasattr(module, "weight_mask"):
        return (module.weight_orig * module.weight_mask).detach()
    return module.weight.detach()


def prunable_layers(model: nn.Module, layers: Iterable[str] | None = None, *,
                    keep_first_conv: bool = False, keep_classifier: bool = False) -> list[str]:
    """Names of the modules whose weights are pruned, in module order.

    Args:
        model: the network.
        layers: explicit module names (each a ``Conv2d`` or ``Linear``); overrides the
            default selection. Unknown or unsupported names raise ``ValueError``.
        keep_first_conv: exclude the first ``Conv2d`` (in module order) from the default.
        keep_classifier: exclude the last ``Linear`` (in module order) from the default.

    Default: every ``Conv2d`` and ``Linear`` weight.
    """
    mods = dict(model.named_modules())
    if layers is not None:
        if isinstance(layers, str):
            raise TypeError("layers must be a list of module names, not a string")
        names = list(dict.fromkeys(layers))
        for n in names:
            if n not in mods:
                raise ValueError(f"layers: no module named {n!r} in {type(model).__name__}")
            if not isinstance(mods[n], PRUNABLE_TYPES):
                raise ValueError(f"layers: module {n!r} is a {type(mods[n]).__name__}; "
                                 "only Conv2d and Linear weights can be pruned")
        if not names:
            raise ValueError("layers: empty list of layers to prune")
        order = {n: i for i, n in enumerate(mods)}
        return sorted(names, key=order.__getitem__)
    names = [n for n, m in mods.items() if isinstance(m, PRUNABLE_TYPES)]
    if keep_first_conv:
        convs = [n for n in names if isinstance(mods[n], nn.Conv2d)]
        if convs:
            names.remove(convs[0])
    if keep_classifier:
        lins = [n for n in names if isinstance(mods[n], nn.Linear)]
        if lins:
            names.remove(lins[-1])
    if not names:
        raise ValueError(f"{type(model).__name__} has no prunable Conv2d/Linear layers")
    return names


def get_masks(model: nn.Module, layers: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """``{module name: bool mask}`` with ``True`` where the effective weight is nonzero.

    Args:
        model: the network (plain weights or ``torch.nn.utils.prune`` reparametrised).
        layers: module names; default the layers recorded in ``model.prune_info``, else
            every ``Conv2d`` / ``Linear``.
    """
    if layers is None:
        info = getattr(model, "prune_info", None)
        layers = info.get("layers") if isinstance(info, dict) else None
    names = prunable_layers(model, layers)
    mods = dict(model.named_modules())
    return {n: effective_weight(mods[n]) != 0 for n in names}


def _check_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> dict[str, nn.Module]:
    mods = dict(model.named_modules())
    out = {}
    for name, mask in masks.items():
        if name not in mods:
            raise ValueError(f"masks: no module named {name!r} in {type(model).__name__}")
        m = mods[name]
        if not hasattr(m, "weight") and not hasattr(m, "weight_orig"):
            raise ValueError(f"masks: module {name!r} has no weight")
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"masks[{name!r}] must be a torch.Tensor, got {type(mask).__name__}")
        shape = effective_weight(m).shape
        if tuple(mask.shape) != tuple(shape):
            raise ValueError(f"masks[{name!r}] has shape {tuple(mask.shape)}, "
                             f"the weight has {tuple(shape)}")
        out[name] = m
    return out


@torch.no_grad()
def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
    """Zero the plain weights where ``masks`` is ``False`` (in place); returns ``model``."""
    for name, m in _check_masks(model, masks).items():
        w = m.weight_orig if hasattr(m, "weight_orig") else m.weight
        w.mul_(masks[name].to(device=w.device, dtype=w.dtype))
    return model


def apply_masks_torch(model: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
    """Install ``masks`` as ``torch.nn.utils.prune.custom_from_mask`` reparametrisations
    (in place), so torch's API (``weight_orig``, ``weight_mask``, ``prune.remove``) sees
    them; a module already pruned by torch gets the masks combined. Returns ``model``."""
    for name, m in _check_masks(model, masks).items():
        w = effective_weight(m)
        torch_prune.custom_from_mask(m, "weight", masks[name].to(device=w.device, dtype=w.dtype))
    return model


def masks_from_torch(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{module name: bool mask}`` read from the ``weight_mask`` buffers that
    ``torch.nn.utils.prune`` installed (modules without one are left out)."""
    return {n: m.weight_mask.detach() != 0 for n, m in model.named_modules()
            if hasattr(m, "weight_mask") and isinstance(m.weight_mask, torch.Tensor)}


def bake_torch_pruning(model: nn.Module) -> nn.Module:
    """Replace every ``torch.nn.utils.prune`` reparametrisation by its effective plain
    parameter (``orig * mask``), in place, via ``prune.remove``; returns ``model``."""
    for m in model.modules():
        for hook in _pruning_hooks(m):
            torch_prune.remove(m, hook._tensor_name)
    return model


def deepcopy_model(model: nn.Module) -> nn.Module:
    """``copy.deepcopy`` that also works under ``torch.nn.utils.prune`` (whose computed
    ``weight`` attribute is a non-leaf tensor that plain deepcopy refuses)."""
    memo: dict[int, object] = {}
    for m in model.modules():
        for hook in _pruning_hooks(m):
            t = getattr(m, hook._tensor_name, None)
            if isinstance(t, torch.Tensor) and not t.is_leaf:
                memo[id(t)] = t.detach().clone()
    return copy.deepcopy(model, memo)
