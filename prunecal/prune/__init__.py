"""Post-hoc pruning methods.

``prune(model, method, sparsity, *, seed=0, **options)`` returns a pruned deep copy
(the input is untouched) with ``model.prune_info`` (a dict: method, kind, sparsity,
seed, scope, pruned layers or channel groups, achieved sparsity, and ``previous``: the
input's own ``prune_info`` when pruning an already pruned model, e.g. structured then
unstructured).

- Unstructured (``global_magnitude``, ``layer_magnitude``, ``random``): plain weights
  with exact zeros; ``sparsity`` = fraction of prunable weights zeroed. Options:
  ``layers``, ``keep_first_conv``, ``keep_classifier`` (and ``scope`` for ``random``).
- Structured (``l1_filter``, ``bn_channel``): a physically smaller dense network;
  ``sparsity`` = fraction of prunable channels removed. Options: ``scope``,
  ``layers`` (producer convs), ``min_channels``.

A model carrying ``torch.nn.utils.prune`` reparametrisations is accepted: its
effective weights (``orig * mask``) are used, so masked weights count as pruned.

Saving: :func:`prunecal.models.save_checkpoint` stores ``prune_info`` with the weights, and
``prunecal.models.create(name, weights=path)`` rebuilds a structurally pruned (smaller)
network from it (:func:`restore_structure`).

Add a method in one place::

    from prunecal.prune import METHODS
    @METHODS.register("my_method")
    def my_method(model, sparsity, *, seed=0, **options):  # prune in place, return model
        ...
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Callable

import torch
from torch import nn

from ..registry import Registry
from .finetune import finetune
from .masks import (apply_masks, apply_masks_torch, bake_torch_pruning, deepcopy_model,
                    get_masks, masks_from_torch, prunable_layers)
from .report import LayerStats, SparsityReport, sparsity_report, weight_sparsity
from .structured import ChannelGroup, bn_channel, find_channel_groups, l1_filter, restore_structure
from .unstructured import global_magnitude, layer_magnitude, random_unstructured

__all__ = [
    "METHODS", "available", "prune", "get_masks", "apply_masks", "apply_masks_torch",
    "masks_from_torch", "bake_torch_pruning", "deepcopy_model", "prunable_layers", "sparsity_report",
    "weight_sparsity", "SparsityReport", "LayerStats", "finetune", "find_channel_groups", "ChannelGroup",
    "restore_structure",
]

PruneFn = Callable[..., nn.Module]

METHODS: Registry[PruneFn] = Registry("pruning method")
"""``name -> fn(model, sparsity, *, seed=0, **options)`` pruning ``model`` in place."""

METHODS.register("global_magnitude", global_magnitude)
METHODS.register("layer_magnitude", layer_magnitude)
METHODS.register("random", random_unstructured)
METHODS.register("l1_filter", l1_filter)
METHODS.register("bn_channel", bn_channel)


def available() -> list[str]:
    """Names of the registered pruning methods."""
    return METHODS.names()


def _check_sparsity(sparsity: Any) -> float:
    if isinstance(sparsity, bool) or not isinstance(sparsity, numbers.Real):
        raise TypeError(f"sparsity must be a real number in [0, 1), got {type(sparsity).__name__}")
    s = float(sparsity)
    if math.isnan(s) or not 0.0 <= s < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity!r}")
    return s


def _check_finite(model: nn.Module) -> None:
    """Rankings by magnitude or |gamma| are meaningless with NaN/inf weights (NaN sorts
    last, so it would silently be kept): refuse them, naming the tensors."""
    bad = [n for n, t in (*model.named_parameters(), *model.named_buffers())
           if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        more = f" ... (+{len(bad) - 5} more)" if len(bad) > 5 else ""
        raise ValueError(f"model has non-finite (NaN/inf) values in {', '.join(bad[:5])}{more}; "
                         "cannot rank weights for pruning")


def prune(model: nn.Module, method: str, sparsity: float, *, seed: int = 0,
          **options: Any) -> nn.Module:
    """Return a pruned deep copy of ``model`` (``model`` itself is untouched).

    Args:
        model: the network (any ``nn.Module``; eval/train mode is preserved).
        method: one of :func:`available`.
        sparsity: in ``[0, 1)``: fraction of prunable weights (unstructured) or of
            prunable channels (structured) to remove.
        seed: for randomised methods; recorded in ``prune_info`` for all.
        **options: method options (see the module docstring).

    Raises:
        UnknownNameError: unknown ``method`` (lists the valid names).
        TypeError / ValueError: bad ``model``, ``sparsity`` or ``seed``; a model with
            NaN/inf parameters or buffers (magnitude ranking would be meaningless).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    fn = METHODS.get(method)
    s = _check_sparsity(sparsity)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    out = bake_torch_pruning(deepcopy_model(model))
    _check_finite(out)
    out = fn(out, s, seed=int(seed), **options)
    if not isinstance(out, nn.Module):
        raise TypeError(f"pruning method {method!r} returned {type(out).__name__}, not a module")
    info = getattr(out, "prune_info", None)
    before = getattr(model, "prune_info", None)
    out.prune_info = {**(info if isinstance(info, dict) else {}), "method": method,
                      "sparsity": s, "seed": int(seed),
                      "previous": before if isinstance(before, dict) else None}
    return out
