"""The sweep: every (network, condition, backend) unit of a study, run as a pipeline of cached
stages and stored as soon as it finishes.

Pipeline (:mod:`prunecal.eval.stages`, :mod:`prunecal.eval.evaluate`)::

    (model, weights) -> prune(method, sparsity, seed) -> fine-tune(recipe, epochs, seed)
        -> temperature(calibration split of the seed) -> compile(backend) -> evaluate(condition)

A *network* is ``(method, sparsity, seed, finetune_epochs)``; ``finetune_epochs = 0`` is the
one-shot network. Its artefacts are cached under content keys (stage parameters chained to the
parent's key), so a fine-tuned model is built once for all its condition units and backends, and
for every later run.

Data split: for each seed the loaded images are split once, by a permutation seeded with that
seed, into a calibration part (``calib_fraction``, default 0.2, clean images only: the
temperature of each network is fitted there) and the evaluation part (the rest); clean and
corrupted units use only these images. Generated corruptions are made once for all loaded
images with ``corruption_seed``, each image's randomness keyed by its index in the loaded data
(the official test-set order), so every seed and subset sees the same corrupted image.

Sparsity 0 is evaluated once per seed, as method ``"none"`` with ``finetune_epochs = 0`` (the
unpruned network); the report shows it as the starting point of every method.

Backends: the FIRST of ``sparse_backend`` evaluates every unit; every other backend evaluates
the clean unit of each network only (its speed, and the equivalence of its logits with the
first backend's, stored as ``ref_max_abs_diff`` / ``ref_argmax_agree`` in its metrics JSON).

Order: one-shot networks first, then each fine-tuning length in increasing order; within each,
condition by condition (clean first), so early results are the clean ones.

Speed (``images_per_s``): evaluation images / seconds inside ``model(x)`` only (no data
conversion, no metrics), batch ``batch_size``, ``threads`` threads; for clean units the best of
:data:`SPEED_REPEATS` passes after a warm-up batch.
"""
from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from prunecal._atomic import atomic_write

from . import config as C
from .cache import ArtefactCache
from .evaluate import SPEED_REPEATS, compile_backend, evaluate_images, forward_logits, metric, score
from .stages import BASELINE, NO_RECIPE, Network, Recipe, StageContext
from .store import Store, now_iso, unit_key

log = logging.getLogger("prunecal.eval")


@dataclass(frozen=True)
class Unit:
    """One evaluation to run (the store's key minus ``config_hash``, ``model`` and the recipe)."""

    method: str
    sparsity: float
    seed: int
    finetune_epochs: int
    corruption: str  # "clean" or a corruption name
    severity: int  # 0 for clean
    backend: str

    @property
    def network(self) -> Network:
        return Network(self.method, self.sparsity, self.seed, self.finetune_epochs)


@dataclass
class Prepared:
    """The loaded inputs of a study (computed once per run)."""

    cfg: C.StudyConfig
    config_hash: str
    weights_sha256: str
    data_fingerprint: str
    images: np.ndarray  # all loaded images, uint8 (N, H, W, 3), official order
    labels: np.ndarray  # int64 (N,)
    splits: dict[int, tuple[np.ndarray, np.ndarray]]  # seed -> (calibration idx, evaluation idx)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    recipe: Recipe | None = None  # None when nothing is fine-tuned
    train_images: np.ndarray | None = None
    train_labels: np.ndarray | None = None

    def calibration(self, seed: int) -> tuple[np.ndarray, np.ndarray]:
        idx = self.splits[seed][0]
        return self.images[idx], self.labels[idx]

    def evaluation(self, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(images, labels, index in the loaded data)`` evaluated for ``seed``."""
        idx = self.splits[seed][1]
        return self.images[idx], self.labels[idx], idx

    def recipe_key(self, finetune_epochs: int) -> str:
        return NO_RECIPE if finetune_epochs == 0 or self.recipe is None else self.recipe.key()

    # the first seed's split: what config.resolved.toml and --dry-run describe
    @property
    def n_calibration(self) -> int:
        return int(len(next(iter(self.splits.values()))[0]))

    @property
    def n_evaluation(self) -> int:
        return int(len(next(iter(self.splits.values()))[1]))


# ---------------------------------------------------------------------------------------------
# planning


def model_groups(cfg: C.StudyConfig) -> list[tuple[str, float]]:
    """``(method, sparsity)`` of every network to evaluate; sparsity 0 once as ``"none"``."""
    groups: list[tuple[str, float]] = []
    if any(s == 0 for s in cfg.sparsities):
        groups.append((BASELINE, 0.0))
    for m in cfg.methods:
        for s in cfg.sparsities:
            if s > 0:
                groups.append((m, float(s)))
    return groups


def networks(cfg: C.StudyConfig) -> list[Network]:
    """Every network of the study: one-shot first, then by fine-tuning length; the unpruned
    network is not fine-tuned (it is the reference every pruned network is compared with)."""
    out: list[Network] = []
    for epochs in sorted(set(cfg.finetune_epochs)):
        for m, s in model_groups(cfg):
            if m == BASELINE and epochs > 0:
                continue
            out += [Network(m, s, seed, epochs) for seed in cfg.seeds]
    return out


def conditions(cfg: C.StudyConfig) -> list[tuple[str, int]]:
    """``[("clean", 0), (corruption, severity), ...]`` in evaluation order."""
    out = [("clean", 0)]
    out += [(c, s) for c in cfg.corruptions for s in cfg.severities]
    return out


def plan(cfg: C.StudyConfig) -> list[Unit]:
    """All units of a resolved config in run order (see the module docstring)."""
    primary, others = cfg.sparse_backend[0], cfg.sparse_backend[1:]
    units: list[Unit] = []
    nets = networks(cfg)
    for epochs in sorted(set(cfg.finetune_epochs)):
        phase = [n for n in nets if n.finetune_epochs == epochs]
        for cond, sev in conditions(cfg):
            for n in phase:
                units.append(Unit(n.method, n.sparsity, n.seed, n.finetune_epochs, cond, sev, primary))
                if cond == "clean":
                    units += [Unit(n.method, n.sparsity, n.seed, n.finetune_epochs, "clean", 0, b)
                              for b in others]
    return units


def full_key(p: Prepared, u: Unit) -> tuple:
    return unit_key(dict(config_hash=p.config_hash, model=p.cfg.model, method=u.method,
                         sparsity=u.sparsity, seed=u.seed, finetune_epochs=u.finetune_epochs,
                         finetune_recipe=p.recipe_key(u.finetune_epochs), corruption=u.corruption,
                         severity=u.severity, backend=u.backend))


# ---------------------------------------------------------------------------------------------
# inputs


def fingerprint(*arrays: np.ndarray) -> str:
    """sha256 (16 hex digits) of arrays' dtype, shape and bytes."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def generated_source() -> str:
    """The ``corruption_source`` of the config hash for corruptions generated in the sweep.

    Names the corruption code version and that randomness is keyed by each image's test-set
    index (older sweeps keyed it by position among the evaluation images and stored
    ``"generated"``), so a study resumed with this code never mixes units of the two keyings.
    """
    from prunecal.corruptions.cache import CODE_VERSION

    return f"generated:v{CODE_VERSION}:test-index"


def _cifar10c_source(path: str) -> str:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"CIFAR-10-C folder not found: {p} (expected the official "
                                "layout: <corruption>.npy and labels.npy)")
    files = sorted((f.name, f.stat().st_size) for f in p.iterdir() if f.is_file())
    return "cifar10c:" + hashlib.sha256(repr(files).encode()).hexdigest()[:16]


def _split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    n_cal = int(round(fraction * n))
    if fraction > 0 and n_cal < 1:
        n_cal = 1
    if n - n_cal < 1:
        raise ValueError(f"calib_fraction {fraction} leaves no evaluation image of {n}")
    return np.sort(perm[:n_cal]), np.sort(perm[n_cal:])


def load_finetune_data(cfg: C.StudyConfig, image_shape: tuple[int, ...],
                       num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """The fine-tuning set (``finetune_data``, split ``finetune_split``, first ``finetune_limit``),
    checked against the evaluated images' size and the model's class count."""
    from prunecal import data as D

    path = Path(cfg.finetune_data)  # type: ignore[arg-type]
    if not path.exists():
        raise FileNotFoundError(f"finetune_data not found: {path} (accepted: the official CIFAR-10 "
                                "python or binary folder, or an npz with x_train/y_train, x/y or "
                                "the JPEG layout of train_jpeg.npz)")
    try:
        images, labels = D.load_cifar10(path, split=cfg.finetune_split, limit=cfg.finetune_limit)
    except (KeyError, IndexError) as exc:
        raise ValueError(f"finetune_data {path}: no {cfg.finetune_split!r} split ({exc})") from None
    images, labels = np.asarray(images), np.asarray(labels)
    if images.shape[1:] != tuple(image_shape):
        raise ValueError(f"finetune_data {path}: images of shape {images.shape[1:]}, but the "
                         f"evaluated images are {tuple(image_shape)}")
    if len(labels) == 0:
        raise ValueError(f"finetune_data {path}: no image in split {cfg.finetune_split!r}")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"finetune_data {path}: labels span {int(labels.min())}..{int(labels.max())}, "
                         f"the model has {num_classes} classes")
    return images, labels.astype(np.int64)


def prepare(cfg: C.StudyConfig) -> Prepared:
    """Hash the weights, load the data (and the fine-tuning set when any network is fine-tuned),
    split calibration / evaluation per seed, hash the config."""
    from prunecal import data as D
    from prunecal import models as M
    from prunecal.models.checkpoint import file_sha256

    if cfg.weights is not None:
        wp = Path(cfg.weights)
        if not wp.is_file():
            raise FileNotFoundError(f"weights not found: {wp} (expected a torch checkpoint: a "
                                    "state dict or {'state_dict': ...})")
        weights_sha = file_sha256(wp)
    else:
        weights_sha = "random-init"
    M.create(cfg.model, weights=cfg.weights)  # fail early on corrupt / mismatching weights
    dp = Path(cfg.data)  # type: ignore[arg-type]
    if not dp.exists():
        raise FileNotFoundError(f"data not found: {dp} (accepted: the official CIFAR-10 python or "
                                "binary folder, or an npz with x/y or x_test/y_test arrays)")
    images, labels = D.load_cifar10(dp, split=cfg.split, limit=cfg.limit)
    images = np.asarray(images)
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    if n < 2:
        raise ValueError(f"data {dp}: need at least 2 images, got {n}")
    splits = {seed: _split(n, cfg.calib_fraction, seed) for seed in cfg.seeds}
    data_fp = fingerprint(images, labels)
    source = generated_source() if cfg.cifar10c is None else _cifar10c_source(cfg.cifar10c)
    chash = C.results_hash(cfg, weights_sha256=weights_sha, data_fingerprint=data_fp,
                           corruption_source=source)
    if cfg.cifar10c is not None and cfg.corruptions:
        _, c_labels = D.load_cifar10c(cfg.cifar10c, cfg.corruptions[0], 1, indices=np.arange(n))
        if not np.array_equal(c_labels, labels):
            raise ValueError(f"--cifar10c {cfg.cifar10c}: its labels do not match those of --data "
                             f"{dp}; --data must hold the official test set in official order")
    sp = M.spec(cfg.model)
    recipe = tr_x = tr_y = None
    needs_train = any(e > 0 for e in cfg.finetune_epochs) or (
        cfg.slimming_l1 > 0 and "bn_channel" in cfg.methods)
    if needs_train:
        tr_x, tr_y = load_finetune_data(cfg, images.shape[1:], sp.num_classes)
        recipe = Recipe.from_config(cfg, fingerprint(tr_x, tr_y), len(tr_y))
    return Prepared(cfg, chash, weights_sha, data_fp, images, labels, splits,
                    tuple(sp.mean), tuple(sp.std), recipe, tr_x, tr_y)


# ---------------------------------------------------------------------------------------------
# the loop


@dataclass
class NetResult:
    """A network ready to evaluate: its dense torch model (pruned, fine-tuned), temperature,
    size figures and fine-tuning record (what a Ray network task returns)."""

    model: nn.Module
    temperature: float
    info: dict[str, Any]
    finetune: dict[str, Any] | None


def build_network(ctx: StageContext, p: Prepared, net: Network, *,
                  keep_epochs: tuple[int, ...] = ()) -> NetResult:
    """Run (or read from the cache) every model-side stage of ``net``."""
    from prunecal import prune as P

    model, ft = ctx.network(net, keep_epochs=keep_epochs)
    cal_x, cal_y = p.calibration(net.seed)
    t = ctx.temperature(net, model, cal_x, cal_y, fingerprint(cal_x, cal_y))
    # achieved sparsity: 1 - nonzero prunable weights / prunable weights of the UNPRUNED
    # network (so structured pruning, which shrinks the network, is counted the same way)
    rep = P.sparsity_report(model)
    base_params = int(P.sparsity_report(ctx.base_model(net.seed)).prunable_params)
    info: dict[str, Any] = dict(
        params_total=int(rep.total_params), params_nonzero=int(rep.total_nonzero),
        macs_dense=float(rep.dense_macs), macs_effective=float(rep.effective_macs),
        sparsity_achieved=1.0 - float(rep.prunable_nonzero) / float(base_params))
    return NetResult(model, t, info, ft)


@dataclass
class _Net:
    result: NetResult
    by_backend: dict[str, tuple[nn.Module, int | None, int | None]]
    ref_logits: np.ndarray | None = None


CorruptedFn = Callable[[str, int], np.ndarray]
"""``(corruption, severity) -> uint8 images`` of ALL loaded images (test-set order)."""


class UnitRunner:
    """Evaluates units into store rows; networks and compiled backends are kept between units
    of the same network. Shared by the local sweep and the Ray executor's tasks.

    Args:
        cfg, p: the resolved config and its prepared inputs.
        ctx: the stage context (artefact cache) networks are built from.
        corrupted: source of corrupted image sets.
        on_batch: called with the number of images after each evaluated batch.
        pause, resume: called around a fine-tuning that runs here (progress displays).
    """

    def __init__(self, cfg: C.StudyConfig, p: Prepared, ctx: StageContext, corrupted: CorruptedFn,
                 *, on_batch: Callable[[int], None] | None = None,
                 pause: Callable[[], None] | None = None,
                 resume: Callable[[], None] | None = None) -> None:
        self.cfg, self.p, self.ctx, self.corrupted = cfg, p, ctx, corrupted
        self.on_batch, self.pause, self.resume = on_batch, pause, resume
        self.out = Path(cfg.out)
        self._nets: dict[Network, _Net] = {}

    def add_network(self, net: Network, result: NetResult) -> None:
        """Use an already built network (e.g. from a Ray object reference)."""
        self._nets[net] = _Net(result, {})

    def network(self, net: Network) -> _Net:
        if net not in self._nets:
            if self._nets and next(iter(self._nets)).finetune_epochs != net.finetune_epochs:
                self._nets.clear()  # a new phase: the previous phase's networks are done
            pausing = net.finetune_epochs > 0 and self.pause is not None
            if pausing:
                self.pause()  # fine-tuning shows its own bar
            try:
                result = build_network(self.ctx, self.p, net, keep_epochs=tuple(self.cfg.finetune_epochs))
            finally:
                if pausing and self.resume is not None:
                    self.resume()
            self._nets[net] = _Net(result, {})
        return self._nets[net]

    def backend_model(self, n: _Net, backend: str) -> tuple[nn.Module, int | None, int | None]:
        if backend not in n.by_backend:
            n.by_backend[backend] = compile_backend(n.result.model, backend, self.cfg.threads)
        return n.by_backend[backend]

    def images(self, seed: int, corruption: str, severity: int) -> tuple[np.ndarray, np.ndarray]:
        ev_x, ev_y, ev_idx = self.p.evaluation(seed)
        if corruption == "clean":
            return ev_x, ev_y
        return self.corrupted(corruption, severity)[ev_idx], ev_y

    def row(self, u: Unit) -> dict[str, Any]:
        """Run every stage one unit needs (cached ones are read) and return its store row."""
        cfg, p = self.cfg, self.p
        started = now_iso()
        primary = cfg.sparse_backend[0]
        n = self.network(u.network)
        net = n.result
        model, bytes_dense, bytes_sparse = self.backend_model(n, u.backend)
        images, labels = self.images(u.seed, u.corruption, u.severity)
        clean = u.corruption == "clean"
        try:
            logits, res, secs = evaluate_images(model, images, labels, p.mean, p.std, net.temperature,
                                                cfg, clean=clean, seed=u.seed, on_batch=self.on_batch)
        except ValueError as exc:
            raise ValueError(f"{exc} ({u})") from None
        if clean:
            if u.backend == primary:
                n.ref_logits = logits
            else:
                ref = n.ref_logits
                if ref is None:
                    ref_model = self.backend_model(n, primary)[0]
                    ref, _ = forward_logits(ref_model, images, p.mean, p.std, cfg.batch_size)
                    n.ref_logits = ref
                raw = res["raw"]
                raw["ref_backend"] = primary
                raw["ref_max_abs_diff"] = float(np.abs(ref - logits).max())
                raw["ref_argmax_agree"] = float((ref.argmax(1) == logits.argmax(1)).mean())
                if (raw["ref_argmax_agree"] < 1.0
                        or raw["ref_max_abs_diff"] > 1e-3 * max(1.0, float(np.abs(ref).max()))):
                    log.warning("backend %s disagrees with %s on %s@%g: max |logit diff| %.3g, "
                                "argmax agreement %.4f", u.backend, primary, u.method, u.sparsity,
                                raw["ref_max_abs_diff"], raw["ref_argmax_agree"])
        logits_path = self._save_logits(u, logits, labels) if cfg.keep_logits else None
        raw, ts = res["raw"], res["ts"]
        return dict(
            config_hash=p.config_hash, model=cfg.model, method=u.method, sparsity=u.sparsity,
            seed=u.seed, finetune_epochs=u.finetune_epochs,
            finetune_recipe=p.recipe_key(u.finetune_epochs), corruption=u.corruption,
            severity=u.severity, backend=u.backend, n_images=len(labels), n_bins=cfg.n_bins,
            binning=cfg.binning, temperature=net.temperature,
            accuracy=metric(raw, "accuracy", "acc"), ece=metric(raw, "ece"),
            ece_ts=metric(ts, "ece"), nll=metric(raw, "nll"), nll_ts=metric(ts, "nll"),
            metrics_json=raw, metrics_ts_json=ts, reliability_json=res["rel"],
            ci_json=res["ci"], images_per_s=len(labels) / max(secs, 1e-9), eval_seconds=secs,
            threads=cfg.threads, batch_size=cfg.batch_size, bytes_dense=bytes_dense,
            bytes_sparse=bytes_sparse, logits_path=logits_path, started_at=started,
            finished_at=now_iso(), finetune_json=net.finetune, **net.info)

    def _save_logits(self, u: Unit, logits: np.ndarray, labels: np.ndarray) -> str:
        p = self.p
        name = (f"{p.config_hash}_{u.method}_{u.sparsity:g}_s{u.seed}_ft{u.finetune_epochs}_"
                f"{u.corruption}_{u.severity}_{u.backend}.npz")
        path = self.out / "logits" / name
        index = p.evaluation(u.seed)[2]
        atomic_write(path, lambda f: np.savez_compressed(f, logits=logits, labels=labels, index=index))
        return str(path.relative_to(self.out))


def corrupted_source(cfg: C.StudyConfig, p: Prepared, cache_root: Path) -> CorruptedFn:
    """``(corruption, severity) -> images``: the official CIFAR-10-C files (``cfg.cifar10c``) or
    generated corruptions of all loaded images (cached on disk under ``cache_root``), each image's
    randomness keyed by its index in the loaded data (= the test set); the last set is kept in
    memory (units run condition by condition)."""
    memo: dict[tuple[str, int], np.ndarray] = {}

    def get(corruption: str, severity: int) -> np.ndarray:
        key = (corruption, severity)
        if key in memo:
            return memo[key]
        all_idx = np.arange(len(p.labels))
        if cfg.cifar10c is not None:
            from prunecal.data import load_cifar10c

            imgs, labs = load_cifar10c(cfg.cifar10c, corruption, severity, indices=all_idx)
            imgs, labs = np.asarray(imgs), np.asarray(labs)
            if not np.array_equal(labs, p.labels):
                raise ValueError(f"--cifar10c {cfg.cifar10c}: its labels do not match the "
                                 "evaluation images; --data must hold the official test set in order")
        else:
            from prunecal.corruptions import CorruptionCache

            imgs = np.asarray(CorruptionCache(cache_root / "corruptions").get(
                p.images, corruption, severity, seed=cfg.corruption_seed, indices=all_idx))
        memo.clear()
        memo[key] = imgs
        return imgs

    return get


def cache_root(cfg: C.StudyConfig) -> Path:
    """The artefact cache folder: ``cache_dir`` or ``OUT/cache``."""
    return Path(cfg.cache_dir) if cfg.cache_dir else Path(cfg.out) / "cache"


def stage_context(cfg: C.StudyConfig, p: Prepared, *, quiet: bool) -> StageContext:
    return StageContext(cfg, ArtefactCache(cache_root(cfg)), p.weights_sha256, p.mean, p.std,
                        p.train_images, p.train_labels, p.recipe, quiet=quiet)


class Sweep:
    """Runs the pending units of a study in this process and stores each one as it finishes.

    Args:
        cfg: a resolved config (:func:`prunecal.eval.config.resolve`).
        store: the result store (written by this process only).
        progress: a :class:`Progress`-like object (``start(total_units, total_images)``,
            ``advance_images(n)``, ``unit_done(unit, row)``, ``stop()``, optionally
            ``pause()`` / ``resume()`` around fine-tuning); ``None`` for logs only.
    """

    def __init__(self, cfg: C.StudyConfig, store: Store, *, progress: Any = None) -> None:
        self.cfg = cfg
        self.store = store
        self.progress = progress
        self.out = Path(cfg.out)
        self.cache = ArtefactCache(cache_root(cfg))
        self._runner: UnitRunner | None = None

    def runner(self, p: Prepared) -> UnitRunner:
        if self._runner is None or self._runner.p is not p:
            pr = self.progress
            self._runner = UnitRunner(
                self.cfg, p, stage_context(self.cfg, p, quiet=self.cfg.quiet or pr is None),
                corrupted_source(self.cfg, p, cache_root(self.cfg)),
                on_batch=pr.advance_images if pr else None,
                pause=getattr(pr, "pause", None), resume=getattr(pr, "resume", None))
        return self._runner

    def _images(self, p: Prepared, seed: int, corruption: str, severity: int):
        return self.runner(p).images(seed, corruption, severity)

    def pending(self, p: Prepared) -> list[Unit]:
        done = self.store.done_keys(p.config_hash)
        return [u for u in plan(self.cfg) if full_key(p, u) not in done]

    def _network_ready(self, p: Prepared, runner: UnitRunner, net: Network) -> bool:
        """True when evaluating ``net`` needs no fine-tuning here (one-shot, built, or cached)."""
        if net.finetune_epochs == 0 or net in runner._nets:
            return True
        ctx = runner.ctx
        return ctx.cache.path("finetune", ctx.model_key(net)).is_file()

    def run(self, p: Prepared) -> int:
        """Evaluate and store every pending unit; returns how many were stored now.

        Several processes may run the same study on one folder: each unit is claimed in the
        store before it runs (a lease renewed in the background while this process lives), and a
        network to fine-tune is claimed too, so concurrent runs share the units and fine-tune
        each network once; units another process holds are retried until stored or its lease
        expires (its process died)."""
        cfg = self.cfg
        torch.set_num_threads(cfg.threads)
        todo = self.pending(p)
        runner = self.runner(p)
        if self.progress:
            self.progress.start(len(todo), sum(len(p.splits[u.seed][1]) for u in todo))
        owner = f"{socket.gethostname()}-{os.getpid()}-{time.time_ns()}"
        renewer = ClaimRenewer(self.store.path, owner, CLAIM_LEASE_S)
        stored = 0
        try:
            remaining = todo
            while remaining:
                deferred: list[Unit] = []
                for u in remaining:
                    if not self._network_ready(p, runner, u.network):
                        if not self.store.claim_units(p.config_hash, [network_claim_key(p, u.network)],
                                                      owner=owner, lease_s=CLAIM_LEASE_S):
                            deferred.append(u)  # another process fine-tunes it now
                            continue
                        runner.network(u.network)
                    key = full_key(p, u)
                    if not self.store.claim_units(p.config_hash, [key], owner=owner,
                                                  lease_s=CLAIM_LEASE_S):
                        deferred.append(u)  # stored meanwhile, or another process runs it
                        continue
                    if self.progress and hasattr(self.progress, "unit_start"):
                        self.progress.unit_start(u)
                    row = runner.row(u)
                    if self.store.insert_unit(row):
                        stored += 1
                    if self.progress:
                        self.progress.unit_done(u, row)
                    else:
                        log_row(u, row, cfg.model)
                done = self.store.done_keys(p.config_hash)
                left = [u for u in deferred if full_key(p, u) not in done]
                if left and len(left) == len(remaining):
                    time.sleep(CLAIM_POLL_S)  # all held by live processes: wait for them
                remaining = left
        finally:
            renewer.stop()
            try:
                self.store.release_claims(owner)
            except Exception:  # noqa: BLE001 - a damaged / full store must not mask the cause
                pass
            if self.progress:
                self.progress.stop()
        return stored


CLAIM_LEASE_S = 120.0
"""Seconds a claim lives without renewal; renewed every quarter of that while its process runs."""
CLAIM_POLL_S = 1.0
"""Pause before retrying units that other live processes hold."""


def network_claim_key(p: Prepared, net: Network) -> tuple:
    """A claim-table key for fine-tuning ``net`` (the unit key with corruption ``__network__``)."""
    return unit_key(dict(config_hash=p.config_hash, model=p.cfg.model, method=net.method,
                         sparsity=net.sparsity, seed=net.seed, finetune_epochs=net.finetune_epochs,
                         finetune_recipe=p.recipe_key(net.finetune_epochs),
                         corruption="__network__", severity=0, backend="-"))


class ClaimRenewer:
    """Background thread renewing ``owner``'s claims every ``lease_s / 4`` seconds (own SQLite
    connection); it dies with its process, so a killed run's claims expire."""

    def __init__(self, path: Path, owner: str, lease_s: float) -> None:
        self._stop = threading.Event()
        self._args = (path, owner, lease_s)
        self._thread = threading.Thread(target=self._run, name="prunecal-claims", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        path, owner, lease_s = self._args
        try:
            st = Store(path)
        except Exception:  # noqa: BLE001 - the main thread reports store problems
            return
        try:
            while not self._stop.wait(lease_s / 4):
                try:
                    st.renew_claims(owner, lease_s)
                except Exception:  # noqa: BLE001 - e.g. a busy store: retry next time
                    pass
        finally:
            st.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def log_row(u: Unit, row: dict[str, Any], model: str) -> None:
    log.info("%s %s@%g seed %d ft %d %s/%d [%s]: acc %.4f ece %.4f (T=%.3f) %.0f img/s", model,
             u.method, u.sparsity, u.seed, u.finetune_epochs, u.corruption, u.severity, u.backend,
             row["accuracy"], row["ece"], row["temperature"], row["images_per_s"])


__all__ = ["Sweep", "Unit", "Prepared", "prepare", "plan", "networks", "model_groups", "conditions",
           "forward_logits", "score", "BASELINE", "fingerprint", "SPEED_REPEATS", "full_key",
           "UnitRunner", "NetResult", "build_network", "corrupted_source", "stage_context",
           "cache_root"]
