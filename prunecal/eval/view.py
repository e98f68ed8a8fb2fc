"""Aggregated, read-only view of one study's units, grouped by *network*.

A network (:class:`Net`) is ``(method, sparsity, finetune_epochs, finetune_recipe)``; each may
have several seeds, and every per-network number is a :class:`Stat` (mean, sd, seed count and
the mean of the seeds' bootstrap bounds). The unpruned network is :data:`BASE_NET` (``method``
``"none"``, sparsity 0, one-shot).

Definitions (errors and accuracies as fractions):

- corruption accuracy, cECE, cNLL: plain means over every stored (corruption, severity) unit
  of the network (primary backend), per seed;
- mCE (Hendrycks & Dietterich 2019) and relative mCE: normalised by the UNPRUNED network
  (mean over its seeds, so it scores 100 %), computed with
  :func:`prunecal.metrics.robustness.mce_hendrycks` / ``relative_mce`` over the 15 benchmark
  corruptions at the study's severities; only when all of them are stored for both networks.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple

import numpy as np

from . import verdict as V
from .store import Store

BASELINE = "none"


class Net(NamedTuple):
    """One network of the study; seeds are aggregated over."""

    method: str
    sparsity: float
    epochs: int = 0
    recipe: str = "none"

    @property
    def is_base(self) -> bool:
        return self == BASE_NET

    @property
    def regime(self) -> tuple[int, str]:
        return self.epochs, self.recipe

    def regime_label(self) -> str:
        return regime_label(self.regime)

    def label(self) -> str:
        if self.is_base:
            return "unpruned"
        return f"{self.method} @ {self.sparsity:g}, {self.regime_label()}"


BASE_NET = Net(BASELINE, 0.0, 0, "none")
ONESHOT = (0, "none")


def regime_label(regime: tuple[int, str]) -> str:
    """``one-shot`` or ``fine-tuned 5 ep [recipe]``."""
    e, r = regime
    return "one-shot" if e == 0 else f"fine-tuned {e} ep [{r}]"


def net_of(u: dict[str, Any]) -> Net:
    return Net(u["method"], round(float(u["sparsity"]), 6), int(u.get("finetune_epochs") or 0),
               str(u.get("finetune_recipe") or "none"))


@dataclass
class Stat:
    """One metric of one network over its seeds."""

    mean: float
    sd: float
    n: int
    ci: tuple[float, float] | None = None  # mean of the seeds' bootstrap bounds

    def interval(self) -> tuple[float, float] | None:
        return V.network_interval(self.mean, self.sd, self.n, self.ci)


def stat(values: list[float], cis: list[Any] | None = None) -> Stat | None:
    m, sd, n = V.mean_std(values)
    if n == 0:
        return None
    ci = None
    if cis and all(c is not None for c in cis):
        ci = (float(np.mean([c[0] for c in cis])), float(np.mean([c[1] for c in cis])))
    return Stat(m, sd, n, ci)


def _getter(key: str) -> Callable[[dict], float | None]:
    """``accuracy`` (a column), ``raw:mce`` / ``ts:brier`` (metrics JSON before / after TS)."""
    if ":" in key:
        side, k = key.split(":", 1)
        col = "metrics_json" if side == "raw" else "metrics_ts_json"
        return lambda u: (u.get(col) or {}).get(k)
    return lambda u: u.get(key)


@dataclass
class StudyView:
    """Aggregated, read-only view of one study's units (one ``config_hash``)."""

    config_hash: str
    config: dict[str, Any]
    units: list[dict[str, Any]]
    model: str = ""
    n_bins: int = 15
    methods: list[str] = field(default_factory=list)
    backends: list[str] = field(default_factory=list)
    primary: str = "dense"
    corruptions: list[str] = field(default_factory=list)
    severities: list[int] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    regimes: list[tuple[int, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        cfg = self.config
        self.model = cfg.get("model") or (self.units[0]["model"] if self.units else "?")
        self.n_bins = int(cfg.get("n_bins", 15))
        backends_cfg = list(cfg.get("sparse_backend") or [])
        present_b = {u["backend"] for u in self.units}
        self.backends = [b for b in backends_cfg if b in present_b] + sorted(present_b - set(backends_cfg))
        self.primary = backends_cfg[0] if backends_cfg else (self.backends[0] if self.backends else "dense")
        present_m = {u["method"] for u in self.units} - {BASELINE}
        self.methods = [m for m in cfg.get("methods", []) if m in present_m] + sorted(
            present_m - set(cfg.get("methods", [])))
        present_c = {u["corruption"] for u in self.units} - {"clean"}
        self.corruptions = [c for c in cfg.get("corruptions", []) if c in present_c] + sorted(
            present_c - set(cfg.get("corruptions", [])))
        self.severities = sorted({u["severity"] for u in self.units if u["corruption"] != "clean"})
        self.seeds = sorted({int(u["seed"]) for u in self.units})
        self._idx: dict[tuple, dict] = {}
        self._corr: dict[tuple[Net, int], dict[tuple[str, int], dict]] = {}
        self._net_seeds: dict[Net, set[int]] = {}
        for u in self.units:
            n, sd = net_of(u), int(u["seed"])
            self._idx[(n, sd, u["corruption"], u["severity"], u["backend"])] = u
            self._net_seeds.setdefault(n, set()).add(sd)
            if u["corruption"] != "clean" and u["backend"] == self.primary:
                self._corr.setdefault((n, sd), {})[(u["corruption"], u["severity"])] = u
        self._rob: dict[Net, dict[str, Any]] = {}
        nets = set(self._net_seeds)
        self.regimes = sorted({n.regime for n in nets}, key=lambda r: (r != ONESHOT, r))
        order = {m: i for i, m in enumerate(self.methods)}
        self._nets = sorted(nets, key=lambda n: (not n.is_base, order.get(n.method, -1), n.sparsity,
                                                 self.regimes.index(n.regime)))

    # -- networks ------------------------------------------------------------------------------
    @property
    def nets(self) -> list[Net]:
        """Every network, the unpruned one first, then by method, sparsity, fine-tuning regime."""
        return list(self._nets)

    def pruned_nets(self, method: str | None = None, regime: tuple[int, str] | None = None) -> list[Net]:
        return [n for n in self._nets if not n.is_base and (method is None or n.method == method)
                and (regime is None or n.regime == regime)]

    @property
    def has_base(self) -> bool:
        return BASE_NET in self._nets

    @property
    def finetuned(self) -> bool:
        return any(r != ONESHOT for r in self.regimes)

    def seeds_of(self, net: Net) -> list[int]:
        """The seeds with any unit of the network."""
        return sorted(self._net_seeds.get(net, ()))

    def clean_units(self, net: Net, backend: str | None = None) -> list[dict]:
        """The network's clean units, one per seed."""
        b = backend or self.primary
        return [u for s in self.seeds if (u := self._idx.get((net, s, "clean", 0, b))) is not None]

    def clean_stat(self, net: Net, key: str, backend: str | None = None) -> Stat | None:
        """``key`` over the seeds' clean units: a column (``accuracy``, ``ece_ts``, ...) or
        ``raw:<metric>`` / ``ts:<metric>``; the bootstrap CI where ``ci_json`` has ``key``."""
        us = self.clean_units(net, backend)
        get = _getter(key)
        us = [u for u in us if get(u) is not None]
        if not us:
            return None
        cis = [(u.get("ci_json") or {}).get(key) for u in us]
        return stat([get(u) for u in us], cis)

    def corruption_units_of(self, net: Net, seed: int) -> dict[tuple[str, int], dict]:
        return self._corr.get((net, seed), {})

    def corruption_stat(self, net: Net, key: str) -> Stat | None:
        """Per seed the mean of ``key`` (``accuracy``, ``ece``, ``ece_ts``, ``nll``, ``nll_ts``)
        over the corrupted units, then mean ± sd over the seeds."""
        vals = []
        for s in self.seeds:
            us = self.corruption_units_of(net, s)
            if us:
                vals.append(float(np.mean([u[key] for u in us.values()])))
        return stat(vals)

    def n_corruption_units(self, net: Net) -> int:
        return sum(len(self.corruption_units_of(net, s)) for s in self.seeds)

    def _seed_mean_by_condition(self, net: Net, get: Callable[[dict], float]) -> dict[tuple[str, int], float]:
        """Per (corruption, severity): the mean over the net's seeds of ``get(unit)``."""
        acc: dict[tuple[str, int], list[float]] = {}
        for s in self.seeds:
            for k, u in self.corruption_units_of(net, s).items():
                acc.setdefault(k, []).append(get(u))
        return {k: float(np.mean(v)) for k, v in acc.items()}

    def condition_changes(self, net: Net, key: str) -> dict[tuple[str, int], float]:
        """Per condition present for both: mean over seeds of ``key`` (``error`` or a column),
        pruned minus unpruned."""
        get = (lambda u: 1 - u["accuracy"]) if key == "error" else (lambda u: u[key])
        a = self._seed_mean_by_condition(net, get)
        b = self._seed_mean_by_condition(BASE_NET, get)
        return {k: a[k] - b[k] for k in a if k in b}

    def delta_by_corruption(self, net: Net, corruption: str, key: str) -> float | None:
        d = [v for (c, _), v in self.condition_changes(net, key).items() if c == corruption]
        return float(np.mean(d)) if d else None

    def robustness_net(self, net: Net) -> dict[str, Any]:
        """``{"mce", "rel_mce", "mean_error_15"}`` as Stats over seeds, ``"mce_ratios"``
        (per benchmark corruption, seed-mean) or ``{"reason": why not computed}``."""
        if net not in self._rob:
            self._rob[net] = self._robustness(net)
        return self._rob[net]

    def _robustness(self, net: Net) -> dict[str, Any]:
        from prunecal.metrics import robustness as R

        sev = self.severities
        if not sev:
            return {"reason": "no corrupted units"}
        bench = list(R.BENCHMARK_CORRUPTIONS)
        err = lambda u: 1 - u["accuracy"]  # noqa: E731
        base = self._seed_mean_by_condition(BASE_NET, err)
        seeds = [s for s in self.seeds if self.corruption_units_of(net, s)]
        per_seed = {s: {k: err(u) for k, u in self.corruption_units_of(net, s).items()} for s in seeds}
        complete = [s for s in seeds if all((c, k) in per_seed[s] for c in bench for k in sev)]
        if not base:
            out0: dict[str, Any] = {"reason": "the unpruned network (sparsity 0) is not in the study"}
            if complete:
                out0["mean_error_15"] = stat([R.mean_corruption_error(per_seed[s], bench, sev)
                                              for s in complete])
            return out0
        ref = per_seed[complete[0]] if complete else (per_seed[seeds[0]] if seeds else {})
        missing = sorted({c for c in bench for k in sev if (c, k) not in ref or (c, k) not in base})
        if missing:
            return {"reason": f"{len(missing)} of the 15 benchmark corruptions missing "
                              f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})"}
        b = {(c, k): base[(c, k)] for c in bench for k in sev}
        out: dict[str, Any] = {"mean_error_15": stat([R.mean_corruption_error(per_seed[s], bench, sev)
                                                      for s in complete])}
        try:
            out["mce"] = stat([R.mce_hendrycks(per_seed[s], b, bench, sev) for s in complete])
            mean_e = {k: float(np.mean([per_seed[s][k] for s in complete])) for k in b}
            out["mce_ratios"] = [sum(mean_e[(c, k)] for k in sev) / sum(b[(c, k)] for k in sev)
                                 for c in bench]
        except ValueError as exc:
            out["mce_reason"] = str(exc)
        bcl = self.clean_stat(BASE_NET, "accuracy")
        rel = []
        for s in complete:
            cl = self._idx.get((net, s, "clean", 0, self.primary))
            if cl is None or bcl is None:
                continue
            try:
                rel.append(R.relative_mce(per_seed[s], 1 - cl["accuracy"], b, 1 - bcl.mean, bench, sev))
            except ValueError as exc:
                out["rel_reason"] = str(exc)
        if rel:
            out["rel_mce"] = stat(rel)
        elif "rel_reason" not in out:
            out["rel_reason"] = "clean unit missing"
        return out

    def reference_speed(self) -> tuple[str, float] | None:
        """``(backend, images/s)`` of the unpruned network on ``dense`` (else the primary), mean
        over its seeds."""
        for b in (["dense"] if "dense" in self.backends else []) + [self.primary]:
            st = self.clean_stat(BASE_NET, "images_per_s", b)
            if st is not None:
                return b, st.mean
        return None

    def fastest(self, net: Net) -> tuple[str, Stat] | None:
        """``(backend, images/s Stat)`` of the network's fastest backend (mean over seeds)."""
        best = None
        for b in self.backends:
            st = self.clean_stat(net, "images_per_s", b)
            if st is not None and (best is None or st.mean > best[1].mean):
                best = (b, st)
        return best

    def stored_bytes(self, net: Net, backend: str) -> float | None:
        us = [u.get("bytes_sparse") or u.get("bytes_dense") for u in self.clean_units(net, backend)]
        us = [x for x in us if x]
        return float(np.mean(us)) if us else None

    def reference_bytes(self) -> float | None:
        """Dense bytes of the unpruned network (what ships without pruning)."""
        for b in self.backends:
            us = [u.get("bytes_dense") for u in self.clean_units(BASE_NET, b) if u.get("bytes_dense")]
            if us:
                return float(np.mean(us))
        return None

    def finetune_info(self, net: Net) -> list[dict]:
        """The ``finetune_json`` of the network's clean units (one per seed that has one)."""
        return [u["finetune_json"] for u in self.clean_units(net) if u.get("finetune_json")]

    # -- the one-shot, first-seed lookups of the first report (kept for callers) --------------
    @staticmethod
    def method_of(method: str, sparsity: float) -> str:
        return BASELINE if sparsity == 0 else method

    def net(self, method: str, sparsity: float, epochs: int = 0, recipe: str = "none") -> Net:
        s = round(float(sparsity), 6)
        return BASE_NET if (s == 0 and epochs == 0) else Net(method, s, epochs, recipe)

    def unit(self, method: str, sparsity: float, corruption: str = "clean", severity: int = 0,
             backend: str | None = None) -> dict | None:
        """The one-shot unit of the first seed that has it."""
        n = self.net(method, sparsity)
        for s in self.seeds:
            u = self._idx.get((n, s, corruption, severity, backend or self.primary))
            if u is not None:
                return u
        return None

    def clean_unit(self, method: str, sparsity: float, backend: str | None = None) -> dict | None:
        return self.unit(method, sparsity, backend=backend)

    def clean_series(self, method: str, backend: str | None = None) -> list[tuple[float, dict]]:
        """``[(sparsity, clean unit)]`` of the one-shot networks, with the unpruned one at 0."""
        nets = ([BASE_NET] if self.has_base else []) + self.pruned_nets(method, ONESHOT)
        out = []
        for n in nets:
            u = self.clean_unit(method, n.sparsity, backend)
            if u is not None:
                out.append((n.sparsity, u))
        return out

    def corruption_units(self, method: str, sparsity: float) -> dict[tuple[str, int], dict]:
        n = self.net(method, sparsity)
        seeds = [s for s in self.seeds if self.corruption_units_of(n, s)]
        return self.corruption_units_of(n, seeds[0]) if seeds else {}

    def corruption_summary(self, method: str, sparsity: float) -> dict[str, float] | None:
        """Means (over seeds) of the corrupted units' accuracy, error, ece, ece_ts, nll, nll_ts."""
        n = self.net(method, sparsity)
        acc = self.corruption_stat(n, "accuracy")
        if acc is None:
            return None
        out = {k: self.corruption_stat(n, k).mean for k in ("accuracy", "ece", "ece_ts", "nll", "nll_ts")}
        out["error"] = 1 - out["accuracy"]
        out["n_units"] = self.n_corruption_units(n)
        return out

    def delta_vs_base(self, method: str, sparsity: float, corruption: str, metric: str) -> float | None:
        """Mean over shared severities of ``metric(pruned) - metric(unpruned)`` under ``corruption``."""
        return self.delta_by_corruption(self.net(method, sparsity), corruption, metric)

    def robustness(self, method: str, sparsity: float) -> dict[str, Any]:
        """:meth:`robustness_net` of the one-shot network, Stats replaced by their means."""
        r = self.robustness_net(self.net(method, sparsity))
        return {k: (v.mean if isinstance(v, Stat) else v) for k, v in r.items()}


def load_view(store: Store, config_hash: str | None = None) -> StudyView:
    """The view of ``config_hash`` (default: the study run last). ValueError if absent/empty."""
    cfgs = store.configs()
    if not cfgs:
        raise ValueError(f"{store.path}: the store holds no study yet")
    if config_hash is None:
        chosen = cfgs[0]
    else:
        matches = [c for c in cfgs if c["config_hash"].startswith(config_hash)]
        if len(matches) != 1:
            raise ValueError(f"config hash {config_hash!r} matches {len(matches)} studies; stored: "
                             + ", ".join(c["config_hash"] for c in cfgs))
        chosen = matches[0]
    return StudyView(chosen["config_hash"], chosen["config"], store.units(chosen["config_hash"]))


def fmt_stat(st: Stat | None, scale: float = 100.0, nd: int = 1) -> str:
    """``91.2`` or ``91.2 ± 0.3`` (sd over seeds, shown with 2+ seeds); ``–`` when missing."""
    if st is None or not math.isfinite(st.mean):
        return "–"
    s = f"{scale * st.mean:.{nd}f}"
    return s + (f" ± {scale * st.sd:.{nd}f}" if st.n >= 2 else "")


__all__ = ["StudyView", "load_view", "Net", "BASE_NET", "BASELINE", "ONESHOT", "Stat", "stat",
           "net_of", "regime_label", "fmt_stat"]
