"""Optional fine-tuning of a pruned network with its pruning masks held fixed.

Off by default in the study (post hoc); see :func:`finetune`.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from torch import nn

from .masks import bake_torch_pruning, deepcopy_model, get_masks

__all__ = ["finetune"]


def finetune(model: nn.Module, images: np.ndarray, labels: np.ndarray, *, epochs: int = 1,
             lr: float = 0.01, batch_size: int = 128, momentum: float = 0.9,
             weight_decay: float = 5e-4, mean: Sequence[float], std: Sequence[float],
             seed: int = 0, progress: bool = True, val: tuple[np.ndarray, np.ndarray] | None = None,
             **train_options) -> nn.Module:
    """Fine-tune a deep copy of ``model`` (SGD, cosine LR, random crop + flip) and return it.

    Every weight that is zero in ``model``'s Conv2d / Linear layers (the pruning mask)
    stays exactly zero; ``torch.nn.utils.prune`` reparametrisations are baked first.
    The training history is attached as ``result.finetune_history``. Other options are
    passed to :func:`prunecal.train.train`.
    """
    from ..train import train

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    out = bake_torch_pruning(deepcopy_model(model))
    names = [n for n, m in out.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    masks = get_masks(out, names)
    hist = train(out, images, labels, epochs=epochs, lr=lr, batch_size=batch_size,
                 momentum=momentum, weight_decay=weight_decay, mean=mean, std=std, seed=seed,
                 progress=progress, val=val, masks=masks, **train_options)
    out.finetune_history = hist
    return out
