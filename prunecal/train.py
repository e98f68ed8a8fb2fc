"""A plain CIFAR training loop (SGD + momentum, cosine LR, random crop + flip).

Good enough to train the CIFAR VGG / MobileNetV2 / ResNet nets from scratch on CPU,
and reused by :func:`prunecal.prune.finetune` with fixed pruning masks.
Images are uint8 ``(N, H, W, 3)``; labels int ``(N,)``.
"""
from __future__ import annotations

import contextlib
import math
import numbers
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .data import iterate_batches, random_crop_flip

__all__ = ["train", "evaluate"]


def _check_xy(images, labels, name: str = "images"):
    from .data import check_images

    images = check_images(images, name)
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise ValueError(f"labels for {name} must have shape ({images.shape[0]},), got {labels.shape}")
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"labels must be integers, got {labels.dtype}")
    if images.shape[0] == 0:
        raise ValueError(f"{name} is empty")
    return images, labels


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def evaluate(model: nn.Module, images: np.ndarray, labels: np.ndarray, mean: Sequence[float],
             std: Sequence[float], *, batch_size: int = 256) -> float:
    """Top-1 accuracy in ``[0, 1]`` of ``model`` (run in eval mode, mode restored)."""
    images, labels = _check_xy(images, labels)
    dev = _device(model)
    was = model.training
    model.eval()
    correct = 0
    try:
        for x, y in iterate_batches(images, labels, batch_size, mean, std):
            correct += int((model(x.to(dev)).argmax(1).cpu() == y).sum())
    finally:
        model.train(was)
    return correct / len(labels)


def _progress(enabled: bool):
    if not enabled:
        return contextlib.nullcontext(None)
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                    transient=False)


def train(model: nn.Module, images: np.ndarray, labels: np.ndarray, *, epochs: int, lr: float,
          batch_size: int = 128, mean: Sequence[float], std: Sequence[float],
          val: tuple[np.ndarray, np.ndarray] | None = None, seed: int = 0,
          progress: bool = True, momentum: float = 0.9, weight_decay: float = 5e-4,
          nesterov: bool = False, warmup_epochs: float = 0.0, label_smoothing: float = 0.0,
          augment: bool = True, masks: dict[str, torch.Tensor] | None = None,
          channels_last: bool = True, schedule: str = "cosine", start_epoch: int = 0,
          optimizer_state: dict | None = None,
          on_epoch_end: Callable[[int, dict, torch.optim.Optimizer], None] | None = None,
          extra_loss: Callable[[nn.Module], torch.Tensor] | None = None,
          history: dict[str, list] | None = None) -> dict[str, list]:
    """Train ``model`` in place with SGD and a per-step cosine LR schedule.

    Args:
        model: the network (left in eval mode at the end).
        images, labels: training set, uint8 ``(N, H, W, 3)`` and ints ``(N,)``.
        epochs: passes over the data (>= 1); lr: peak learning rate (> 0).
        batch_size: images per step (default 128; the last partial batch is dropped
            when at least one full batch exists).
        mean, std: input normalisation (the model's ``ModelSpec``).
        val: optional ``(images, labels)`` evaluated after every epoch.
        seed: seeds shuffling, augmentation and torch's RNG (dropout).
        progress: show a rich progress bar.
        momentum, weight_decay, nesterov: SGD settings (defaults 0.9, 5e-4, False).
        warmup_epochs: linear LR warm-up before the cosine decay (default 0).
        label_smoothing: cross-entropy label smoothing (default 0).
        augment: random crop (pad 4) + horizontal flip (default True).
        masks: ``{module name: bool tensor}``; those weights are held at zero (their
            gradients are zeroed before, and the weights re-masked after, every step).
        channels_last: train in the NHWC memory format (default True: oneDNN's CPU kernels
            are faster there, notably depthwise convs); the weights are converted back to
            the ordinary contiguous format at the end, also when training fails.
        schedule: ``"cosine"`` (per step, over ``epochs``; default) or ``"constant"`` (``lr``
            throughout, after any warm-up).
        start_epoch: epochs already done (resume): training runs epochs ``start_epoch+1 ..
            epochs``. Shuffling and augmentation of epoch ``e`` are seeded by ``(seed, e)``
            alone, so a resumed run equals an uninterrupted one when ``optimizer_state``
            (``opt.state_dict()`` saved after epoch ``start_epoch``) is given.
        on_epoch_end: ``fn(epoch, history, optimizer)`` after each epoch (e.g. a checkpoint).
        extra_loss: ``fn(model) -> scalar`` added to the loss (e.g. network slimming's L1
            penalty on BN scales).
        history: the history of the epochs before ``start_epoch`` (continued, not copied).

    Returns ``{'epoch', 'loss', 'train_acc', 'lr', 'val_acc'}`` lists, one entry per
    epoch (``val_acc`` only with ``val``), plus ``'step_loss'`` per step.
    """
    images, labels = _check_xy(images, labels)
    if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 1:
        raise ValueError(f"epochs must be an int >= 1, got {epochs!r}")
    if isinstance(lr, bool) or not (isinstance(lr, numbers.Real) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    lr = float(lr)
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if schedule not in ("cosine", "constant"):
        raise ValueError(f"schedule must be 'cosine' or 'constant', got {schedule!r}")
    if isinstance(start_epoch, bool) or not isinstance(start_epoch, (int, np.integer)) \
            or not 0 <= start_epoch <= epochs:
        raise ValueError(f"start_epoch must be an int in [0, epochs], got {start_epoch!r}")
    if val is not None:
        if not (isinstance(val, (tuple, list)) and len(val) == 2):
            raise TypeError("val must be a tuple (images, labels)")
        val = _check_xy(val[0], val[1], "val images")
    dev = _device(model)
    # (convs: 4-D weights, or layers that say they read NHWC, e.g. prunecal.sparse.trainable's)
    fmt = bool(channels_last) and (any(p.dim() == 4 for p in model.parameters())
                                   or any(getattr(m, "reads_channels_last", False) for m in model.modules()))
    if fmt:  # oneDNN's NHWC kernels: faster on CPU, notably for depthwise convs
        model.to(memory_format=torch.channels_last)
    try:
        mods = dict(model.named_modules())
        mask_list = []
        for name, m in (masks or {}).items():
            if name not in mods or not isinstance(getattr(mods[name], "weight", None), torch.Tensor):
                raise ValueError(f"masks: no module with a weight named {name!r}")
            w = mods[name].weight
            if tuple(m.shape) != tuple(w.shape):
                raise ValueError(f"masks[{name!r}] has shape {tuple(m.shape)}, weight {tuple(w.shape)}")
            mask_list.append((w, m.to(device=dev, dtype=w.dtype)))

        n = len(labels)
        drop_last = n >= batch_size
        steps_per_epoch = n // batch_size if drop_last else 1
        total = epochs * steps_per_epoch
        warm = int(round(warmup_epochs * steps_per_epoch))
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                              nesterov=nesterov)
        if optimizer_state is not None:
            opt.load_state_dict(optimizer_state)

        def lr_at(step: int) -> float:
            if step < warm:
                return lr * (step + 1) / warm
            if schedule == "constant":
                return lr
            t = (step - warm) / max(1, total - warm)
            return 0.5 * lr * (1 + math.cos(math.pi * t))

        hist: dict[str, list] = history if history is not None else {}
        for k in ("epoch", "loss", "train_acc", "lr", "step_loss") + (("val_acc",) if val is not None else ()):
            hist.setdefault(k, [])
        step = start_epoch * steps_per_epoch
        devices = [dev] if dev.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), _progress(progress) as bar:
            task = bar.add_task("train", total=total, completed=step, info="") if bar is not None else None
            cur_lr = lr_at(step)
            for epoch in range(start_epoch, epochs):
                # each epoch's randomness depends on (seed, epoch) only: resumable exactly
                rng = np.random.default_rng([seed, epoch])
                torch.manual_seed(seed * 100_003 + epoch)  # dropout etc.; caller's RNG restored after
                model.train()
                loss_sum, correct, seen = 0.0, 0, 0
                aug = random_crop_flip if augment else None
                for x, y in iterate_batches(images, labels, batch_size, mean, std, shuffle=True,
                                            rng=rng, drop_last=drop_last, augment=aug):
                    x = x.to(dev, memory_format=torch.channels_last) if fmt else x.to(dev)
                    y = y.to(dev)
                    cur_lr = lr_at(step)
                    for g in opt.param_groups:
                        g["lr"] = cur_lr
                    out = model(x)
                    loss = F.cross_entropy(out, y, label_smoothing=label_smoothing)
                    if extra_loss is not None:
                        loss = loss + extra_loss(model)
                    if not torch.isfinite(loss):
                        raise FloatingPointError(f"training diverged: loss {loss.item()} at step {step} "
                                                 f"(lr {cur_lr:.4g}); lower lr")
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    with torch.no_grad():
                        for w, m in mask_list:
                            if w.grad is not None:
                                w.grad.mul_(m)
                    opt.step()
                    with torch.no_grad():
                        for w, m in mask_list:
                            w.mul_(m)
                    b = len(y)
                    loss_sum += loss.item() * b
                    correct += int((out.argmax(1) == y).sum())
                    seen += b
                    hist["step_loss"].append(loss.item())
                    step += 1
                    if bar is not None:
                        bar.update(task, advance=1, description=f"epoch {epoch + 1}/{epochs}",
                                   info=f"loss {loss_sum / seen:.3f} acc {correct / seen:.3f}")
                hist["epoch"].append(epoch + 1)
                hist["loss"].append(loss_sum / seen)
                hist["train_acc"].append(correct / seen)
                hist["lr"].append(cur_lr)
                if val is not None:
                    hist["val_acc"].append(evaluate(model, val[0], val[1], mean, std))
                    if bar is not None:
                        bar.update(task, info=f"loss {loss_sum / seen:.3f} val {hist['val_acc'][-1]:.3f}")
                if on_epoch_end is not None:
                    on_epoch_end(epoch + 1, hist, opt)
    finally:
        if fmt:  # hand back ordinary contiguous weights (other modules read their memory)
            model.to(memory_format=torch.contiguous_format)
    model.eval()
    return hist
