"""Unstructured (weight-level) pruning: global / layer-wise magnitude and random.

Every method zeroes exactly ``round(sparsity * n)`` weights (``n`` = weights in the
scope: all prunable layers together for a global method, each layer for a
layer-wise one), choosing the lowest scores with ties broken by flat index (a
stable sort), so results are exact and deterministic. Weights that are already
zero score lowest and count as pruned, which makes pruning idempotent. Biases are
never pruned. The methods act in place; :func:`prunecal.prune.prune` calls them on
a deep copy.
"""
from __future__ import annotations

from typing import Iterable, Literal

import torch
from torch import nn

from .masks import prunable_layers

__all__ = ["global_magnitude", "layer_magnitude", "random_unstructured", "prune_by_scores"]

Scope = Literal["global", "layer"]


@torch.no_grad()
def prune_by_scores(model: nn.Module, layers: list[str], scores: dict[str, torch.Tensor],
                    sparsity: float, scope: Scope) -> dict[str, float]:
    """Zero the ``round(sparsity * n)`` lowest-score weights of each scope (in place).

    Args:
        model: network with plain weights.
        layers: module names to prune.
        scores: ``{name: float tensor shaped like the weight}``; ties go to the lower
            flat index (layers concatenated in ``layers`` order for ``scope='global'``).
        sparsity: fraction in ``[0, 1)``.
        scope: ``'global'`` (one ranking over all layers) or ``'layer'`` (per layer).

    Returns ``{name: achieved sparsity}`` (fraction of zero weights per layer).
    """
    mods = dict(model.named_modules())
    weights = [mods[n].weight for n in layers]
    flat = [scores[n].detach().reshape(-1).to(torch.float64) for n in layers]
    if scope == "global":
        allscores = torch.cat(flat)
        k = int(round(sparsity * allscores.numel()))
        drop = torch.zeros(allscores.numel(), dtype=torch.bool)
        if k > 0:
            order = torch.sort(allscores.cpu(), stable=True).indices
            drop[order[:k]] = True
        drops = torch.split(drop, [f.numel() for f in flat])
    elif scope == "layer":
        drops = []
        for f in flat:
            k = int(round(sparsity * f.numel()))
            d = torch.zeros(f.numel(), dtype=torch.bool)
            if k > 0:
                d[torch.sort(f.cpu(), stable=True).indices[:k]] = True
            drops.append(d)
    else:
        raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
    achieved = {}
    for name, w, d in zip(layers, weights, drops):
        w.masked_fill_(d.view(w.shape).to(w.device), 0)  # works for any memory format
        achieved[name] = float((w == 0).sum()) / w.numel()
    return achieved


def _magnitude_scores(model: nn.Module, layers: list[str]) -> dict[str, torch.Tensor]:
    mods = dict(model.named_modules())
    return {n: mods[n].weight.detach().abs() for n in layers}


def _info(method: str, sparsity: float, seed: int, layers: list[str], scope: str,
          achieved: dict[str, float], model: nn.Module) -> dict:
    mods = dict(model.named_modules())
    total = sum(mods[n].weight.numel() for n in layers)
    zeros = sum(round(achieved[n] * mods[n].weight.numel()) for n in layers)
    return {"method": method, "kind": "unstructured", "sparsity": float(sparsity),
            "seed": int(seed), "scope": scope, "layers": list(layers),
            "achieved_sparsity": zeros / total, "layer_sparsity": achieved}


def _run(model, sparsity, seed, method, scope, scores_fn, layers, keep_first_conv,
         keep_classifier):
    names = prunable_layers(model, layers, keep_first_conv=keep_first_conv,
                            keep_classifier=keep_classifier)
    achieved = prune_by_scores(model, names, scores_fn(model, names), sparsity, scope)
    model.prune_info = _info(method, sparsity, seed, names, scope, achieved, model)
    return model


def global_magnitude(model: nn.Module, sparsity: float, *, seed: int = 0,
                     layers: Iterable[str] | None = None, keep_first_conv: bool = False,
                     keep_classifier: bool = False) -> nn.Module:
    """Zero the ``sparsity`` fraction of smallest-``|w|`` weights, ranked across all
    prunable layers together (one threshold). In place; returns ``model``."""
    return _run(model, sparsity, seed, "global_magnitude", "global", _magnitude_scores,
                layers, keep_first_conv, keep_classifier)


def layer_magnitude(model: nn.Module, sparsity: float, *, seed: int = 0,
                    layers: Iterable[str] | None = None, keep_first_conv: bool = False,
                    keep_classifier: bool = False) -> nn.Module:
    """Zero the ``sparsity`` fraction of smallest-``|w|`` weights in every prunable
    layer (the same sparsity per layer, to one weight). In place; returns ``model``."""
    return _run(model, sparsity, seed, "layer_magnitude", "layer", _magnitude_scores,
                layers, keep_first_conv, keep_classifier)


def random_unstructured(model: nn.Module, sparsity: float, *, seed: int = 0,
                        layers: Iterable[str] | None = None, keep_first_conv: bool = False,
                        keep_classifier: bool = False, scope: Scope = "layer") -> nn.Module:
    """Zero a uniformly random ``sparsity`` fraction of weights, per layer
    (``scope='layer'``, default) or over all prunable layers (``scope='global'``).
    Deterministic per ``seed``; weights already zero are pruned first. In place."""
    if scope not in ("global", "layer"):
        raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")

    def scores(m: nn.Module, names: list[str]) -> dict[str, torch.Tensor]:
        gen = torch.Generator().manual_seed(int(seed))
        mods = dict(m.named_modules())
        out = {}
        for n in names:
            w = mods[n].weight.detach().cpu()
            s = torch.rand(w.shape, generator=gen, dtype=torch.float64)
            out[n] = torch.where(w == 0, torch.full_like(s, -1.0), s)
        return out

    return _run(model, sparsity, seed, "random", scope, scores, layers, keep_first_conv,
                keep_classifier)
