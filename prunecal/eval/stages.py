"""The model side of the study as cached stages:
``(model, weights) -> [slim] -> prune(method, sparsity, seed) -> fine-tune(recipe, epochs, seed)
-> temperature(calibration split)``.

Each stage's artefact lives in the :class:`~prunecal.eval.cache.ArtefactCache` under a key made of
its parent's key and its own parameters (:func:`~prunecal.eval.cache.stage_key`), so it is built
once for every unit, backend and later run that needs it. Every function here is a function of
its arguments and the cache only (no store, no progress display), so the local sweep and the Ray
executor run the same code.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from . import config as C
from .cache import ArtefactCache, stage_key

log = logging.getLogger("prunecal.eval")

BASELINE = "none"
"""Method name stored for the unpruned network (sparsity 0)."""
NO_RECIPE = "none"
"""``finetune_recipe`` of one-shot (not fine-tuned) networks."""
SPARSE_TRAIN_MIN_SPARSITY = 0.8
"""``finetune_backend = "auto"`` fine-tunes through the sparse kernels from this fraction of
pruned conv / linear weights on (docs/sparse-training.md has the measured break-even), unless
:data:`SPARSE_TRAIN_MIN_SPARSITY_BY_ISA` names the native ISA path."""
SPARSE_TRAIN_MIN_SPARSITY_BY_ISA = {"avx2": 0.7}
"""Per ISA path (``prunecal._C.isa_path()``): on AVX2 (no AVX-512) masked dense torch is slower
too, and the sparse kernels were measured 1.22-1.33x faster at 70 % (ResNet-20 / 56, 2 threads,
every runtime held to AVX2; docs/sparse-training.md)."""


def sparse_train_min_sparsity(isa: str) -> float:
    """The pruned fraction from which ``auto`` fine-tunes through the sparse kernels on ``isa``."""
    return SPARSE_TRAIN_MIN_SPARSITY_BY_ISA.get(isa, SPARSE_TRAIN_MIN_SPARSITY)


@dataclass(frozen=True)
class Recipe:
    """The fine-tuning recipe (SGD + momentum, masks fixed) beside its epochs and seed."""

    lr: float
    batch_size: int
    momentum: float
    weight_decay: float
    schedule: str  # "constant" | "cosine"
    augment: bool
    data_fingerprint: str  # of the training images and labels actually used
    n_images: int

    @classmethod
    def from_config(cls, cfg: C.StudyConfig, data_fingerprint: str, n_images: int) -> "Recipe":
        return cls(float(cfg.finetune_lr), int(cfg.finetune_batch_size), float(cfg.finetune_momentum),
                   float(cfg.finetune_weight_decay), cfg.finetune_schedule, bool(cfg.finetune_augment),
                   data_fingerprint, int(n_images))

    def key(self) -> str:
        """Short key (``ft-`` + 10 hex digits) stored as the unit's ``finetune_recipe``."""
        return "ft-" + stage_key("", "recipe", **dataclasses.asdict(self)).split("_", 1)[1][:10]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Network:
    """One network of the study: the unit key minus condition and backend."""

    method: str
    sparsity: float
    seed: int
    finetune_epochs: int


@dataclass
class StageContext:
    """What the stages need: config, cache, base weights' identity, normalisation, training data."""

    cfg: C.StudyConfig
    cache: ArtefactCache
    weights_sha256: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    train_images: np.ndarray | None = None
    train_labels: np.ndarray | None = None
    recipe: Recipe | None = None
    quiet: bool = True

    # -- base ----------------------------------------------------------------------------
    def base_key(self, seed: int) -> str:
        origin = self.weights_sha256 if self.cfg.weights is not None else f"random-init-seed{seed}"
        return stage_key(origin, "base", model=self.cfg.model)

    def base_model(self, seed: int) -> nn.Module:
        """The unpruned network (pretrained weights, or random initialisation seeded by ``seed``)."""
        from prunecal import models as M

        if self.cfg.weights is None:
            torch.manual_seed(seed)
        return M.create(self.cfg.model, weights=self.cfg.weights).eval()

    def dense_architecture(self) -> nn.Module:
        """An untrained model of the study's architecture (checkpoints are loaded into it)."""
        from prunecal import models as M

        return M.create(self.cfg.model)

    def _cached_model(self, kind: str, key: str, build, **meta: Any) -> nn.Module:
        path = self.cache.path(kind, key)
        hit = self.cache.load_model(path, self.dense_architecture)
        if hit is not None:
            return hit[0]
        model = build()
        self.cache.save_model(path, model, **meta)
        return model.eval()

    # -- network slimming ------------------------------------------------------------------
    def uses_slimming(self, method: str) -> bool:
        return method == "bn_channel" and self.cfg.slimming_l1 > 0

    def slim_key(self, seed: int) -> str:
        assert self.recipe is not None
        return stage_key(self.base_key(seed), "slim", l1=self.cfg.slimming_l1,
                         epochs=self.cfg.slimming_epochs, recipe=self.recipe.key(), seed=seed)

    def slimmed(self, seed: int) -> nn.Module:
        """The base network after ``slimming_epochs`` of sparsity training with the L1 penalty
        ``slimming_l1 * sum |gamma|`` on every BN scale (Liu et al. 2017), before bn_channel."""
        return self._cached_model("slim", self.slim_key(seed), lambda: self._slim(seed),
                                  slimming_l1=self.cfg.slimming_l1, epochs=self.cfg.slimming_epochs)

    def _slim(self, seed: int) -> nn.Module:
        from prunecal.train import train

        assert self.recipe is not None and self.train_images is not None
        model = self.base_model(seed)
        l1 = float(self.cfg.slimming_l1)
        scales = [m.weight for m in model.modules() if isinstance(m, nn.BatchNorm2d) and m.affine]

        def penalty(_: nn.Module) -> torch.Tensor:
            return l1 * sum(g.abs().sum() for g in scales)

        r = self.recipe
        train(model, self.train_images, self.train_labels, epochs=self.cfg.slimming_epochs, lr=r.lr,
              batch_size=r.batch_size, momentum=r.momentum, weight_decay=r.weight_decay,
              mean=self.mean, std=self.std, seed=seed, progress=not self.quiet,
              augment=r.augment, schedule=r.schedule, extra_loss=penalty)
        return model

    # -- pruning -------------------------------------------------------------------------
    def prune_key(self, method: str, sparsity: float, seed: int) -> str:
        if method == BASELINE:
            return self.base_key(seed)
        parent = self.slim_key(seed) if self.uses_slimming(method) else self.base_key(seed)
        return stage_key(parent, "prune", method=method, sparsity=float(sparsity), seed=seed)

    def pruned(self, method: str, sparsity: float, seed: int) -> nn.Module:
        """The one-shot pruned network (the unpruned base for ``method == "none"``)."""
        if method == BASELINE:
            return self.base_model(seed)
        from prunecal import prune as P

        def build() -> nn.Module:
            parent = self.slimmed(seed) if self.uses_slimming(method) else self.base_model(seed)
            return P.prune(parent, method, sparsity, seed=seed)

        return self._cached_model("pruned", self.prune_key(method, sparsity, seed), build,
                                  method=method, sparsity=float(sparsity), seed=seed)

    # -- fine-tuning ---------------------------------------------------------------------
    def finetune_chain(self, net: Network) -> str:
        """Key of a fine-tuning run; epoch ``k``'s checkpoint is ``<chain>_e<k>``. A constant LR
        makes epoch ``k`` of a longer run equal to a ``k``-epoch run, so more epochs continue the
        same chain; a cosine schedule depends on the total, which is then part of the key."""
        assert self.recipe is not None
        total = net.finetune_epochs if self.recipe.schedule == "cosine" else None
        return stage_key(self.prune_key(net.method, net.sparsity, net.seed), "finetune",
                         recipe=self.recipe.key(), seed=net.seed, total=total)

    def model_key(self, net: Network) -> str:
        """Key of the network a unit evaluates (pruned, or its fine-tuned form)."""
        if net.finetune_epochs == 0:
            return self.prune_key(net.method, net.sparsity, net.seed)
        return f"{self.finetune_chain(net)}_e{net.finetune_epochs}"

    def finetuned(self, net: Network, *, keep_epochs: tuple[int, ...] = ()) -> tuple[nn.Module, dict]:
        """``(model, finetune_meta)``: the pruned network fine-tuned for ``net.finetune_epochs``
        epochs with its zeros held at zero. Resumes from the latest finished epoch of its chain
        (a kill loses at most the epoch in progress); epoch checkpoints other than ``keep_epochs``
        (other requested totals) are removed once the next one is written."""
        assert self.recipe is not None and self.train_images is not None
        from prunecal.prune.masks import get_masks
        from prunecal.train import train

        chain, target, r = self.finetune_chain(net), net.finetune_epochs, self.recipe
        for k in range(target, 0, -1):
            hit = self.cache.load_model(self.cache.path("finetune", f"{chain}_e{k}"),
                                        self.dense_architecture)
            if hit is not None:
                break
        else:
            k, hit = 0, None
        if hit is not None and k == target:
            return hit[0], hit[1]
        pruned = self.pruned(net.method, net.sparsity, net.seed)
        names = [n for n, m in pruned.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        masks = get_masks(pruned, names)
        backend = self.train_backend(pruned)
        model, opt_state, history, seconds = pruned, None, None, 0.0
        label = f"{self.cfg.model} {net.method}@{net.sparsity:g} seed {net.seed}"
        if hit is not None:
            model, opt_state = hit[0], hit[2]
            history, seconds = hit[1].get("history"), float(hit[1].get("seconds", 0.0))
            was = (hit[1].get("recipe") or {}).get("backend", "torch")
            if was != backend:  # the optimizer's parameters differ between the two paths
                log.warning("fine-tune %s: checkpoint made with the %s backend, resuming with %s "
                            "(SGD momentum restarts)", label, was, backend)
                opt_state = None
        t0 = time.perf_counter()
        keep = set(keep_epochs) | {target}
        if backend == "csr":
            from prunecal.sparse.train import trainable

            runner: nn.Module = trainable(model, "csr", threads=self.cfg.threads)
            to_torch = runner.to_torch  # type: ignore[assignment]
            masks_arg = None  # pruned zeros are not parameters there: kept by construction
        else:
            runner, masks_arg = model, masks

            def to_torch() -> nn.Module:
                return model

        def checkpoint(epoch: int, hist: dict, opt: torch.optim.Optimizer) -> None:
            spent = seconds + time.perf_counter() - t0
            self.cache.save_model(self.cache.path("finetune", f"{chain}_e{epoch}"), to_torch(),
                                  optimizer=opt.state_dict(),
                                  **self._ft_meta(epoch, hist, spent, backend))
            prev = self.cache.path("finetune", f"{chain}_e{epoch - 1}")
            if epoch - 1 not in keep and prev.exists():
                for p in (prev, prev.with_name(prev.name + ".sha256")):
                    p.unlink(missing_ok=True)
            log.info("fine-tune %s: epoch %d/%d loss %.4f train acc %.4f (%.0f s, %s)", label, epoch,
                     target, hist["loss"][-1], hist["train_acc"][-1], spent, backend)

        if k:
            log.info("fine-tune %s: resuming at epoch %d of %d", label, k, target)
        hist = train(runner, self.train_images, self.train_labels, epochs=target, lr=r.lr,
                     batch_size=r.batch_size, momentum=r.momentum, weight_decay=r.weight_decay,
                     mean=self.mean, std=self.std, seed=net.seed, progress=not self.quiet,
                     augment=r.augment, masks=masks_arg, schedule=r.schedule, start_epoch=k,
                     optimizer_state=opt_state, on_epoch_end=checkpoint,  # (channels_last, train's default,
                     # for both backends: csr one epoch 1.20-1.33x faster than NCHW, scripts/finetune_epoch.py)
                     history={kk: list(v) for kk, v in history.items()} if history else None)
        out = to_torch()
        out.prune_info = getattr(pruned, "prune_info", None)
        return out.eval(), self._ft_meta(target, hist, seconds + time.perf_counter() - t0, backend)

    def train_backend(self, pruned: nn.Module) -> str:
        """``torch`` (masked dense) or ``csr`` (prunecal.sparse.trainable) for fine-tuning
        ``pruned``: as ``finetune_backend`` says; ``auto`` takes csr when the native kernels are
        built and at least :func:`sparse_train_min_sparsity` of the ISA path of the conv / linear
        weights are pruned zeros (below that masked dense torch was measured as fast or faster)."""
        choice = self.cfg.finetune_backend
        if choice == "torch":
            return "torch"
        if not C.native_available():
            if choice == "csr":
                raise C.ConfigError("finetune_backend csr needs the native core prunecal._C "
                                    "(pip install . or scripts/dev_build.sh)")
            return "torch"
        if choice == "csr":
            return "csr"
        from prunecal import _C
        from prunecal.prune.report import weight_sparsity

        return "csr" if weight_sparsity(pruned) >= sparse_train_min_sparsity(_C.isa_path()) else "torch"

    def _ft_meta(self, epochs: int, hist: dict, seconds: float, backend: str) -> dict[str, Any]:
        assert self.recipe is not None
        return {"recipe": {**self.recipe.to_dict(), "epochs": epochs, "key": self.recipe.key(),
                           "backend": backend},
                "history": {k: list(hist.get(k, [])) for k in ("epoch", "loss", "train_acc", "lr")},
                "seconds": float(seconds)}

    def network(self, net: Network, *, keep_epochs: tuple[int, ...] = ()) -> tuple[nn.Module, dict | None]:
        """``(model, finetune_meta or None)`` of a network, every stage from the cache or built."""
        if net.finetune_epochs == 0:
            return self.pruned(net.method, net.sparsity, net.seed).eval(), None
        return self.finetuned(net, keep_epochs=keep_epochs)

    # -- temperature ---------------------------------------------------------------------
    def temperature(self, net: Network, model: nn.Module, calib_images: np.ndarray,
                    calib_labels: np.ndarray, calib_fingerprint: str) -> float:
        """Temperature fitted on the clean calibration images (1.0 without any)."""
        if len(calib_labels) == 0:
            return 1.0
        from prunecal.calibrate import fit_temperature

        from .evaluate import forward_logits

        path = self.cache.path("temperature", stage_key(self.model_key(net), "temperature",
                                                        calib=calib_fingerprint), ".json")
        cached = self.cache.get_json(path)
        if cached is not None:
            t = cached.get("temperature")
            if isinstance(t, (int, float)) and math.isfinite(t) and t > 0:
                return float(t)
            self.cache.discard(path, f"artefact {path} holds no valid temperature: rebuilding it")
        logits, _ = forward_logits(model, calib_images, self.mean, self.std, self.cfg.batch_size)
        t = float(fit_temperature(torch.from_numpy(logits), torch.from_numpy(calib_labels)))
        if not math.isfinite(t) or t <= 0:
            raise ValueError(f"temperature fit failed for {net.method}@{net.sparsity}: {t}")
        self.cache.put_json(path, {"temperature": t})
        return t


__all__ = ["StageContext", "Network", "Recipe", "BASELINE", "NO_RECIPE"]
