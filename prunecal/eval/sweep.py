"""The unit loop: prune, calibrate, (sparsify), evaluate every (model, method, sparsity,
corruption, severity, backend) unit and store each one as soon as it finishes.

Data split: the first ``limit`` images of ``data`` are split once, by a permutation seeded with
``seed``, into a calibration part (``calib_fraction``, default 0.2, clean images only: the
temperature of each pruned model is fitted there) and the evaluation part (the rest; clean and
corrupted units use only these images). So the temperature never sees an evaluation image.
Generated corruptions key each image's randomness by its index in the loaded data
(``Prepared.eval_index``, the official test-set order), not by its position among the
evaluation images: an evaluation image gets the same corruption whatever the subset, equal to its
row of ``python -m prunecal.corruptions`` on the same data and seed.

Sparsity 0 is evaluated once, as method ``"none"`` (the unpruned network); the report shows it
as the starting point of every method.

Backends: the FIRST of ``sparse_backend`` evaluates every unit; every other backend evaluates
the clean unit of each model only (its speed, and the equivalence of its logits with the first
backend's, stored as ``ref_max_abs_diff`` / ``ref_argmax_agree`` in its metrics JSON).

Speed (``images_per_s``): evaluation images / seconds inside ``model(x)`` only (no data
conversion, no metrics), batch ``batch_size``, ``threads`` threads; for clean units the best of
:data:`SPEED_REPEATS` passes after a warm-up batch.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from prunecal._atomic import atomic_write

from . import config as C
from .cache import ModelCache, model_key
from .store import Store, now_iso, unit_key

log = logging.getLogger("prunecal.eval")

BASELINE = "none"
"""Method name stored for the unpruned network (sparsity 0)."""
SPEED_REPEATS = 3
"""Clean units time this many full passes (after a warm-up batch) and keep the fastest, so the
stored images/s is steadier on a shared machine; corrupted units time their single pass."""


@dataclass(frozen=True)
class Unit:
    """One evaluation to run (the store's key minus ``config_hash``/``model``/``seed``)."""

    method: str
    sparsity: float
    corruption: str  # "clean" or a corruption name
    severity: int  # 0 for clean
    backend: str


@dataclass
class Prepared:
    """The loaded inputs of a study (computed once per run)."""

    cfg: C.StudyConfig
    config_hash: str
    weights_sha256: str
    data_fingerprint: str
    calib_images: np.ndarray
    calib_labels: np.ndarray
    eval_images: np.ndarray
    eval_labels: np.ndarray
    eval_index: np.ndarray  # index of each evaluation image in the loaded data (= official order)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


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


def conditions(cfg: C.StudyConfig) -> list[tuple[str, int]]:
    """``[("clean", 0), (corruption, severity), ...]`` in evaluation order."""
    out = [("clean", 0)]
    out += [(c, s) for c in cfg.corruptions for s in cfg.severities]
    return out


def plan(cfg: C.StudyConfig) -> list[Unit]:
    """All units of a resolved config, clean ones first (so early results are the clean ones)."""
    primary, others = cfg.sparse_backend[0], cfg.sparse_backend[1:]
    units: list[Unit] = []
    for cond in conditions(cfg):
        for m, s in model_groups(cfg):
            units.append(Unit(m, s, cond[0], cond[1], primary))
            if cond[0] == "clean":
                units += [Unit(m, s, "clean", 0, b) for b in others]
    return units


def full_key(p: Prepared, u: Unit) -> tuple:
    return unit_key(dict(config_hash=p.config_hash, model=p.cfg.model, method=u.method,
                         sparsity=u.sparsity, seed=p.cfg.seed, corruption=u.corruption,
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


def prepare(cfg: C.StudyConfig) -> Prepared:
    """Load weights hash and data, split calibration / evaluation, hash the config."""
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
        weights_sha = f"random-init-seed{cfg.seed}"
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
    rng = np.random.default_rng(cfg.seed)
    perm = rng.permutation(n)
    n_cal = int(round(cfg.calib_fraction * n))
    if cfg.calib_fraction > 0 and n_cal < 1:
        n_cal = 1
    if n - n_cal < 1:
        raise ValueError(f"calib_fraction {cfg.calib_fraction} leaves no evaluation image of {n}")
    cal_idx, ev_idx = np.sort(perm[:n_cal]), np.sort(perm[n_cal:])
    data_fp = fingerprint(images, labels)
    source = generated_source() if cfg.cifar10c is None else _cifar10c_source(cfg.cifar10c)
    chash = C.results_hash(cfg, weights_sha256=weights_sha, data_fingerprint=data_fp,
                           corruption_source=source)
    if cfg.cifar10c is not None and cfg.corruptions:
        _, c_labels = D.load_cifar10c(cfg.cifar10c, cfg.corruptions[0], 1, indices=ev_idx)
        if not np.array_equal(c_labels, labels[ev_idx]):
            raise ValueError(f"--cifar10c {cfg.cifar10c}: its labels do not match those of --data "
                             f"{dp}; --data must hold the official test set in official order")
    sp = M.spec(cfg.model)
    return Prepared(cfg, chash, weights_sha, data_fp, images[cal_idx], labels[cal_idx],
                    images[ev_idx], labels[ev_idx], ev_idx,
                    tuple(sp.mean), tuple(sp.std))


# ---------------------------------------------------------------------------------------------
# evaluation helpers


def forward_logits(model: nn.Module, images: np.ndarray, mean, std, batch_size: int,
                   on_batch: Callable[[int], None] | None = None, *,
                   warmup: bool = False) -> tuple[np.ndarray, float]:
    """Logits ``(N, C) float32`` of uint8 NHWC ``images``; and seconds spent in ``model`` only
    (``warmup``: one untimed forward of the first batch first, for a steadier speed figure)."""
    from prunecal.data import to_tensor

    outs = []
    spent = 0.0
    with torch.inference_mode():
        if warmup:
            model(to_tensor(images[:batch_size], mean, std))
        for i in range(0, len(images), batch_size):
            x = to_tensor(images[i: i + batch_size], mean, std)
            t0 = time.perf_counter()
            y = model(x)
            spent += time.perf_counter() - t0
            outs.append(y.float().cpu().numpy())
            if on_batch:
                on_batch(len(x))
    return np.concatenate(outs, 0), spent


def _jsonable(obj: Any) -> Any:
    """Convert metric outputs (dataclasses, numpy) into JSON-ready values (NaN kept as NaN)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _jsonable(dataclasses.asdict(obj))
    if hasattr(obj, "to_dict") and callable(obj.to_dict):
        return _jsonable(obj.to_dict())
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        return float(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, torch.Tensor):
        return _jsonable(obj.detach().cpu().numpy())
    return obj


def softmax_np(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def score(logits: np.ndarray, labels: np.ndarray, temperature: float, cfg: C.StudyConfig,
          *, with_ci: bool) -> dict[str, Any]:
    """Metrics of one unit: summaries with and without temperature (``summary_from_logits``,
    exact NLL), reliability bins of both, and (``with_ci``) percentile-bootstrap 95 % CIs of
    accuracy, ECE, ECE after temperature and NLL: ``{"accuracy": [lo, hi], ...}``."""
    from prunecal import metrics as Mx

    kw = dict(n_bins=cfg.n_bins, binning=cfg.binning)
    raw = _jsonable(Mx.summary_from_logits(logits, labels, 1.0, **kw))
    ts = _jsonable(Mx.summary_from_logits(logits, labels, temperature, **kw))
    probs = softmax_np(logits)
    probs_ts = softmax_np(logits.astype(np.float64) / temperature)
    rel = {"raw": _jsonable(Mx.reliability_bins(probs, labels, **kw)),
           "ts": _jsonable(Mx.reliability_bins(probs_ts, labels, **kw))}
    ci = None
    if with_ci and cfg.n_bootstrap >= 2:
        ci = {}
        for name, metric, p, mkw in (("accuracy", "accuracy", probs, {}),
                                     ("ece", "ece", probs, kw), ("ece_ts", "ece", probs_ts, kw),
                                     ("nll", "nll", probs, {})):
            _, lo, hi = Mx.bootstrap_ci(metric, p, labels, n_boot=cfg.n_bootstrap, seed=cfg.seed, **mkw)
            ci[name] = [float(lo), float(hi)]
    return dict(raw=raw, ts=ts, rel=rel, ci=ci)


def _metric(d: dict, *names: str) -> float:
    for n in names:
        if n in d and d[n] is not None:
            return float(d[n])
    raise KeyError(f"metrics summary lacks {names[0]!r} (has {sorted(d)})")


def param_bytes(model: nn.Module) -> int:
    """Bytes of all parameters and buffers (dense storage)."""
    return int(sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers())))


# ---------------------------------------------------------------------------------------------
# the loop


@dataclass
class _Net:
    model: nn.Module  # pruned, dense torch
    temperature: float
    info: dict[str, Any]
    by_backend: dict[str, tuple[nn.Module, int | None, int | None]]
    ref_logits: np.ndarray | None = None


class Sweep:
    """Runs the pending units of a study and stores them.

    Args:
        cfg: a resolved config (:func:`prunecal.eval.config.resolve`).
        store: the result store.
        progress: a :class:`Progress`-like object (``start(total_units, total_images)``,
            ``advance_images(n)``, ``unit_done(unit, row)``, ``stop()``); ``None`` for logs only.
    """

    def __init__(self, cfg: C.StudyConfig, store: Store, *, progress: Any = None) -> None:
        self.cfg = cfg
        self.store = store
        self.progress = progress
        out = Path(cfg.out)
        self.out = out
        cache_root = Path(cfg.cache_dir) if cfg.cache_dir else out / "cache"
        self.model_cache = ModelCache(cache_root)
        self.corruption_root = cache_root / "corruptions"
        self._corr_mem: dict[tuple[str, int], np.ndarray] = {}
        self._nets: dict[tuple[str, float], _Net] = {}
        self._base_params: int | None = None

    # -- pieces --------------------------------------------------------------------------
    def _base_model(self) -> nn.Module:
        from prunecal import models as M

        if self.cfg.weights is None:
            torch.manual_seed(self.cfg.seed)
        return M.create(self.cfg.model, weights=self.cfg.weights).eval()

    def _net(self, p: Prepared, method: str, sparsity: float) -> _Net:
        key = (method, sparsity)
        if key in self._nets:
            return self._nets[key]
        from prunecal import prune as P
        from prunecal.calibrate import fit_temperature

        cfg = self.cfg
        mkey = model_key(cfg.model, p.weights_sha256, method, sparsity, cfg.seed)
        if method == BASELINE:
            model, _ = self.model_cache.get_or_create(mkey, self._base_model)
        else:
            model, _ = self.model_cache.get_or_create(
                mkey, lambda: P.prune(self._base_model(), method, sparsity, seed=cfg.seed))
        model.eval()
        # temperature: keyed also by the calibration data (the config hash covers it)
        tkey = f"{mkey}_T_{p.config_hash}"
        cached = self.model_cache.get_json(tkey)
        if cached is not None:
            temperature = float(cached["temperature"])
        elif len(p.calib_labels) == 0:
            temperature = 1.0
        else:
            logits, _ = forward_logits(model, p.calib_images, p.mean, p.std, cfg.batch_size)
            temperature = float(fit_temperature(torch.from_numpy(logits), torch.from_numpy(p.calib_labels)))
            if not math.isfinite(temperature) or temperature <= 0:
                raise ValueError(f"temperature fit failed for {method}@{sparsity}: {temperature}")
            self.model_cache.put_json(tkey, {"temperature": temperature})
        # achieved sparsity: 1 - nonzero prunable weights / prunable weights of the UNPRUNED
        # network (so structured pruning, which shrinks the network, is counted the same way)
        rep = P.sparsity_report(model)
        if self._base_params is None:
            self._base_params = int(P.sparsity_report(self._base_model()).prunable_params)
        info: dict[str, Any] = dict(
            params_total=int(rep.total_params), params_nonzero=int(rep.total_nonzero),
            macs_dense=float(rep.dense_macs), macs_effective=float(rep.effective_macs),
            sparsity_achieved=1.0 - float(rep.prunable_nonzero) / float(self._base_params))
        net = _Net(model, temperature, info, {})
        self._nets[key] = net
        return net

    def _backend_model(self, net: _Net, backend: str) -> tuple[nn.Module, int | None, int | None]:
        if backend in net.by_backend:
            return net.by_backend[backend]
        entry: tuple[nn.Module, int | None, int | None] | None = None
        if backend in ("csr", "bsr"):
            # the whole network as one native call per batch where the graph allows it (its
            # footprint() counts bytes exactly as sparsify's report does); otherwise the
            # per-layer modules of sparsify (same numbers, slower)
            from prunecal.sparse.plan import PlanUnsupported, compile_plan

            try:
                pm = compile_plan(net.model, backend, threads=self.cfg.threads)
            except PlanUnsupported:
                pass
            else:
                dense_bytes, stored_bytes = pm.footprint()
                entry = (pm, int(dense_bytes), int(stored_bytes))
        if entry is None:
            # every other backend, "dense" included, runs the BN-folded inference model of prunecal.sparse
            from prunecal.sparse import sparsify

            sm = sparsify(net.model, backend, threads=self.cfg.threads)
            rep = sm.sparsify_report
            entry = (sm.eval(), int(rep.model_dense_bytes), int(rep.model_sparse_bytes))
        net.by_backend[backend] = entry
        return entry

    def _images(self, p: Prepared, corruption: str, severity: int) -> tuple[np.ndarray, np.ndarray]:
        if corruption == "clean":
            return p.eval_images, p.eval_labels
        key = (corruption, severity)
        if key in self._corr_mem:
            return self._corr_mem[key], p.eval_labels
        if self.cfg.cifar10c is not None:
            from prunecal.data import load_cifar10c

            imgs, labs = load_cifar10c(self.cfg.cifar10c, corruption, severity, indices=p.eval_index)
            imgs, labs = np.asarray(imgs), np.asarray(labs)
            if not np.array_equal(labs, p.eval_labels):
                raise ValueError(f"--cifar10c {self.cfg.cifar10c}: its labels do not match the "
                                 "evaluation images; --data must hold the official test set in order")
        else:
            from prunecal.corruptions import CorruptionCache

            # randomness keyed by each image's index in the loaded data (= the test set), not
            # by its position among the evaluation images: a subset gets exactly the rows of
            # corrupting the whole set (and of `python -m prunecal.corruptions`)
            imgs = np.asarray(CorruptionCache(self.corruption_root).get(
                p.eval_images, corruption, severity, seed=self.cfg.seed, indices=p.eval_index))
        # units run condition by condition (plan()), so only the current condition is kept
        self._corr_mem = {key: imgs}
        return imgs, p.eval_labels

    # -- run -----------------------------------------------------------------------------
    def pending(self, p: Prepared) -> list[Unit]:
        done = self.store.done_keys(p.config_hash)
        return [u for u in plan(self.cfg) if full_key(p, u) not in done]

    def run(self, p: Prepared) -> int:
        """Evaluate and store every pending unit; returns how many were stored now."""
        cfg = self.cfg
        torch.set_num_threads(cfg.threads)
        todo = self.pending(p)
        n_eval = len(p.eval_labels)
        if self.progress:
            self.progress.start(len(todo), len(todo) * n_eval)
        stored = 0
        primary = cfg.sparse_backend[0]
        try:
            for u in todo:
                started = now_iso()
                if self.progress and hasattr(self.progress, "unit_start"):
                    self.progress.unit_start(u)
                net = self._net(p, u.method, u.sparsity)
                model, bytes_dense, bytes_sparse = self._backend_model(net, u.backend)
                images, labels = self._images(p, u.corruption, u.severity)
                adv = self.progress.advance_images if self.progress else None
                logits, secs = forward_logits(model, images, p.mean, p.std, cfg.batch_size, adv,
                                              warmup=u.corruption == "clean")
                if u.corruption == "clean":  # the speed figure: best of SPEED_REPEATS timed passes
                    for _ in range(SPEED_REPEATS - 1):
                        secs = min(secs, forward_logits(model, images, p.mean, p.std, cfg.batch_size)[1])
                if not np.isfinite(logits).all():
                    raise ValueError(f"non-finite logits for {u}")
                res = score(logits, labels, net.temperature, cfg, with_ci=u.corruption == "clean")
                if u.corruption == "clean":
                    if u.backend == primary:
                        net.ref_logits = logits
                    else:
                        ref = net.ref_logits
                        if ref is None:
                            ref_model = self._backend_model(net, primary)[0]
                            ref, _ = forward_logits(ref_model, images, p.mean, p.std, cfg.batch_size)
                            net.ref_logits = ref
                        res["raw"]["ref_backend"] = primary
                        res["raw"]["ref_max_abs_diff"] = float(np.abs(ref - logits).max())
                        res["raw"]["ref_argmax_agree"] = float((ref.argmax(1) == logits.argmax(1)).mean())
                        if (res["raw"]["ref_argmax_agree"] < 1.0
                                or res["raw"]["ref_max_abs_diff"] > 1e-3 * max(1.0, float(np.abs(ref).max()))):
                            log.warning("backend %s disagrees with %s on %s@%g: max |logit diff| %.3g, "
                                        "argmax agreement %.4f", u.backend, primary, u.method, u.sparsity,
                                        res["raw"]["ref_max_abs_diff"], res["raw"]["ref_argmax_agree"])
                logits_path = None
                if cfg.keep_logits:
                    logits_path = self._save_logits(p, u, logits, labels)
                raw, ts = res["raw"], res["ts"]
                row = dict(
                    config_hash=p.config_hash, model=cfg.model, method=u.method, sparsity=u.sparsity,
                    seed=cfg.seed, corruption=u.corruption, severity=u.severity, backend=u.backend,
                    n_images=len(labels), n_bins=cfg.n_bins, binning=cfg.binning,
                    temperature=net.temperature,
                    accuracy=_metric(raw, "accuracy", "acc"), ece=_metric(raw, "ece"),
                    ece_ts=_metric(ts, "ece"), nll=_metric(raw, "nll"), nll_ts=_metric(ts, "nll"),
                    metrics_json=raw, metrics_ts_json=ts, reliability_json=res["rel"],
                    ci_json=res["ci"], images_per_s=len(labels) / max(secs, 1e-9), eval_seconds=secs,
                    threads=cfg.threads, batch_size=cfg.batch_size, bytes_dense=bytes_dense,
                    bytes_sparse=bytes_sparse, logits_path=logits_path, started_at=started,
                    finished_at=now_iso(), **net.info)
                if self.store.insert_unit(row):
                    stored += 1
                if self.progress:
                    self.progress.unit_done(u, row)
                else:
                    log.info("%s %s@%g %s/%d [%s]: acc %.4f ece %.4f (T=%.3f) %.0f img/s",
                             cfg.model, u.method, u.sparsity, u.corruption, u.severity, u.backend,
                             row["accuracy"], row["ece"], net.temperature, row["images_per_s"])
        finally:
            if self.progress:
                self.progress.stop()
        return stored

    def _save_logits(self, p: Prepared, u: Unit, logits: np.ndarray, labels: np.ndarray) -> str:
        name = f"{p.config_hash}_{u.method}_{u.sparsity:g}_{u.corruption}_{u.severity}_{u.backend}.npz"
        path = self.out / "logits" / name

        atomic_write(path, lambda f: np.savez_compressed(f, logits=logits, labels=labels, index=p.eval_index))
        return str(path.relative_to(self.out))


__all__ = ["Sweep", "Unit", "Prepared", "prepare", "plan", "model_groups", "conditions",
           "forward_logits", "score", "BASELINE", "fingerprint"]
