"""The evaluate stage: logits of a (compiled) network on a set of images, and their metrics.

Pure functions of their inputs; the sweep and the Ray executor share them.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from . import config as C


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
          *, with_ci: bool, seed: int = 0) -> dict[str, Any]:
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
            _, lo, hi = Mx.bootstrap_ci(metric, p, labels, n_boot=cfg.n_bootstrap, seed=seed, **mkw)
            ci[name] = [float(lo), float(hi)]
    return dict(raw=raw, ts=ts, rel=rel, ci=ci)


def metric(d: dict, *names: str) -> float:
    for n in names:
        if n in d and d[n] is not None:
            return float(d[n])
    raise KeyError(f"metrics summary lacks {names[0]!r} (has {sorted(d)})")


def param_bytes(model: nn.Module) -> int:
    """Bytes of all parameters and buffers (dense storage)."""
    return int(sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers())))




SPEED_REPEATS = 3
"""Clean units time this many full passes (after a warm-up batch) and keep the fastest, so the
stored images/s is steadier on a shared machine; corrupted units time their single pass."""


def evaluate_images(model: nn.Module, images: np.ndarray, labels: np.ndarray, mean, std,
                    temperature: float, cfg: C.StudyConfig, *, clean: bool, seed: int,
                    on_batch: Callable[[int], None] | None = None
                    ) -> tuple[np.ndarray, dict[str, Any], float]:
    """``(logits, scores, seconds)`` of one unit: logits of ``images``, :func:`score` (bootstrap
    intervals for ``clean`` units) and the forward time (best of :data:`SPEED_REPEATS` passes
    after a warm-up for clean units). Non-finite logits raise ``ValueError``."""
    logits, secs = forward_logits(model, images, mean, std, cfg.batch_size, on_batch, warmup=clean)
    if clean:
        for _ in range(SPEED_REPEATS - 1):
            secs = min(secs, forward_logits(model, images, mean, std, cfg.batch_size)[1])
    if not np.isfinite(logits).all():
        raise ValueError("the network produced non-finite logits")
    return logits, score(logits, labels, temperature, cfg, with_ci=clean, seed=seed), secs


def compile_backend(model: nn.Module, backend: str, threads: int) -> tuple[nn.Module, int | None, int | None]:
    """The compile stage: ``(runnable model, dense bytes, stored bytes)`` of ``model`` for
    ``backend``. csr / bsr: the whole network as one native plan where the graph allows (its
    footprint counts bytes as sparsify's report does), else sparsify's per-layer modules; every
    other backend ("dense" included) runs the BN-folded inference model of prunecal.sparse."""
    if backend in ("csr", "bsr"):
        from prunecal.sparse.plan import PlanUnsupported, compile_plan

        try:
            pm = compile_plan(model, backend, threads=threads)
        except PlanUnsupported:
            pass
        else:
            dense_bytes, stored_bytes = pm.footprint()
            return pm, int(dense_bytes), int(stored_bytes)
    from prunecal.sparse import sparsify

    sm = sparsify(model, backend, threads=threads, plan=False)  # (the plan was tried above)
    rep = sm.sparsify_report
    return sm.eval(), int(rep.model_dense_bytes), int(rep.model_sparse_bytes)


__all__ = ["forward_logits", "score", "softmax_np", "param_bytes", "metric", "evaluate_images",
           "compile_backend", "SPEED_REPEATS"]
