"""``prunecal-eval --executor ray``: the same study as Ray tasks on a cluster (or a local Ray).

Stages become tasks with declared resources:

- a *network task* per network with pending units (prune, fine-tune, temperature; ``num_cpus`` =
  ``threads``, ``num_gpus=1`` when the cluster has GPUs and torch sees CUDA on the driver): it
  returns the trained dense model, which goes to the object store once and is shared by every
  evaluation task of that network;
- a *corruption task* per (corruption, severity): the corrupted set of all loaded images, put in
  the object store once and shared by every network;
- *evaluation tasks*, one per (network, condition group): the clean units of all backends in one
  task (one compile per backend, the equivalence check against the first backend), then one task
  per corruption (its severities, on the first backend; one compile per task).

Dependencies are object references (a task waits for its network and its corrupted sets). Only
the driver writes the store: each finished task's rows are committed as its result arrives, and
the driver claims the units it submits (:meth:`Store.claim_units`), so a killed driver or worker
loses no stored unit and a re-run finishes only the missing ones. The artefact cache
(``--cache-dir``) is written by workers through the same atomic, digest-checked writer as the
local run; on a multi-machine cluster it must be a path every node reaches (a shared file
system); otherwise each node rebuilds what it lacks (same keys, same bytes). A task that raises
is retried by Ray (``RAY_RETRIES`` times, also when its worker dies); after that its units are
recorded as failed in the store (its ``failures`` table, listed by the report) and the sweep finishes the rest.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Any


from . import config as C
from .stages import Network
from .store import KEY_COLUMNS, Store
from .sweep import (NetResult, Prepared, Unit, UnitRunner, build_network, full_key, log_row, plan,
                    stage_context)

log = logging.getLogger("prunecal.eval")

RAY_RETRIES = 2
"""Ray retries of a task that raised or whose worker died, before its units count as failed."""
INSTALL_HINT = "--executor ray needs Ray: pip install 'prunecal[ray]' (or pip install ray)"


def import_ray():
    """The ``ray`` module, or :class:`~prunecal.eval.config.ConfigError` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise C.ConfigError(INSTALL_HINT) from None
    return ray


# ---------------------------------------------------------------------------------------------
# task bodies (plain functions: Ray wraps them; tests may call them directly)


def network_body(cfg: C.StudyConfig, p: Prepared, net: Network) -> NetResult:
    import torch

    torch.set_num_threads(cfg.threads)
    ctx = stage_context(cfg, p, quiet=True)
    return build_network(ctx, p, net, keep_epochs=tuple(cfg.finetune_epochs))


def corruption_body(cfg: C.StudyConfig, p: Prepared, corruption: str, severity: int):
    from .sweep import cache_root, corrupted_source

    return corrupted_source(cfg, p, cache_root(cfg))(corruption, severity)


def evaluate_body(cfg: C.StudyConfig, p: Prepared, net: Network, result: NetResult,
                  units: list[Unit], corrupted: dict[tuple[str, int], Any]) -> dict[str, Any]:
    """``{"worker": host:pid, "rows": [row of each unit]}`` of ``units`` (all of network ``net``),
    evaluated in this worker."""
    import socket

    import torch

    torch.set_num_threads(cfg.threads)

    import ray

    def get(corruption: str, severity: int):
        v = corrupted[(corruption, severity)]
        if isinstance(v, ray.ObjectRef):  # refs nested in a dict arrive unresolved
            v = corrupted[(corruption, severity)] = ray.get(v)
        return v

    runner = UnitRunner(cfg, p, stage_context(cfg, p, quiet=True), get)
    runner.add_network(net, result)
    if os.environ.get("PRUNECAL_RAY_TEST_SLOW"):  # tests: time to kill a worker mid-task
        time.sleep(float(os.environ["PRUNECAL_RAY_TEST_SLOW"]))
    return {"worker": f"{socket.gethostname()}:{os.getpid()}", "rows": [runner.row(u) for u in units]}


# ---------------------------------------------------------------------------------------------
# the driver


def task_groups(units: list[Unit]) -> list[tuple[Network, list[Unit]]]:
    """Evaluation tasks: per network, its clean units (all backends) in one group, then one group
    per corruption (its severities); networks in the order of ``units``. A failure (e.g. a
    damaged corruption file) then costs the units of that corruption only."""
    by_net: dict[Network, list[Unit]] = defaultdict(list)
    for u in units:
        by_net[u.network].append(u)
    groups: list[tuple[Network, list[Unit]]] = []
    for net, us in by_net.items():
        by_cond: dict[str, list[Unit]] = defaultdict(list)
        for u in us:
            by_cond[u.corruption].append(u)
        groups += [(net, g) for g in by_cond.values()]
    return groups


class RayProgress:
    """Driver-side progress: units and fine-tunes done / running / failed, ETA, rates per worker."""

    def __init__(self, n_units: int, n_networks: int) -> None:
        self.n_units, self.n_networks = n_units, n_networks
        self.units_done = self.units_failed = self.nets_done = self.nets_failed = 0
        self.t0 = time.perf_counter()
        self.per_worker: dict[str, int] = defaultdict(int)
        self._last = 0.0

    def line(self, running: int) -> str:
        el = time.perf_counter() - self.t0
        done = self.units_done + self.units_failed
        eta = (el / done * (self.n_units - done)) if done else float("nan")
        rates = ", ".join(f"{w}: {n / el * 60:.1f} units/min" for w, n in sorted(self.per_worker.items()))
        return (f"ray: units {self.units_done}/{self.n_units} done, {self.units_failed} failed; "
                f"networks {self.nets_done}/{self.n_networks} ready, {self.nets_failed} failed; "
                f"{running} tasks running; ETA {eta:.0f} s" + (f"; {rates}" if rates else ""))

    def maybe_log(self, running: int, force: bool = False) -> None:
        if force or time.perf_counter() - self._last > 5.0:
            self._last = time.perf_counter()
            log.info("%s", self.line(running))


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    # RayTaskError's text starts with a header line; the cause's own message is last
    return (text[-1] if text else type(exc).__name__)[:500]


def failure_rows(p: Prepared, failed: list[tuple[Unit, str]]) -> list[dict[str, Any]]:
    """Store rows (:meth:`Store.record_failures`) of failed units: key columns and the error."""
    rows = []
    for u, err in failed:
        key = dict(zip(KEY_COLUMNS, full_key(p, u)))
        rows.append({**key, "error": err})
    return rows


def run_ray(cfg: C.StudyConfig, store: Store, p: Prepared, *, address: str | None = None,
            num_cpus: int | None = None) -> dict[str, int]:
    """Run the pending units of the study on Ray; returns ``{"stored", "failed"}`` counts.

    Args:
        address: ``None`` starts a local Ray instance (``num_cpus`` CPUs, default all), ``"auto"``
            joins the running cluster, else the head's address.
    """
    ray = import_ray()
    # workers may start in another directory: every path they use must be absolute
    cfg = dataclasses.replace(cfg, out=os.path.abspath(cfg.out))
    owner = f"ray-driver-{os.getpid()}-{time.time_ns()}"
    done = store.done_keys(p.config_hash)
    todo = [u for u in plan(cfg) if full_key(p, u) not in done]
    if not todo:
        return {"stored": 0, "failed": 0}
    claimed = set(store.claim_units(p.config_hash, [full_key(p, u) for u in todo], owner=owner,
                                    lease_s=600.0))
    todo = [u for u in todo if full_key(p, u) in claimed]
    started_here = not ray.is_initialized()
    if started_here:
        kw: dict[str, Any] = dict(ignore_reinit_error=True, log_to_driver=False,
                                  include_dashboard=False)
        if address is None:
            kw["num_cpus"] = num_cpus or os.cpu_count() or 1
        else:
            kw["address"] = address
        # workers import the same prunecal as the driver (a dev checkout included)
        pkg_root = str(Path(__file__).resolve().parents[2])
        env = {k: v for k, v in os.environ.items() if k.startswith("PRUNECAL_")}
        env["PYTHONPATH"] = os.pathsep.join(
            [pkg_root] + [x for x in os.environ.get("PYTHONPATH", "").split(os.pathsep) if x])
        kw["runtime_env"] = {"env_vars": env}
        # Ray puts the driver's working directory on the workers' sys.path: a source checkout
        # there (without its built _C) would shadow the installed package, so start Ray from the
        # folder that holds the package the driver imported.
        here = os.getcwd()
        os.chdir(pkg_root)
        try:
            ray.init(**kw)
        finally:
            os.chdir(here)
    try:
        return _drive(ray, cfg, store, p, todo, owner)
    finally:
        store.release_claims(owner)
        if started_here:
            ray.shutdown()


def _drive(ray, cfg: C.StudyConfig, store: Store, p: Prepared, todo: list[Unit], owner: str
           ) -> dict[str, int]:
    import torch

    gpus = 1 if (torch.cuda.is_available() and ray.cluster_resources().get("GPU", 0) >= 1) else 0
    threads = max(1, int(cfg.threads))
    net_task = ray.remote(network_body).options(num_cpus=threads, num_gpus=gpus,
                                                max_retries=RAY_RETRIES, retry_exceptions=True)
    corr_task = ray.remote(corruption_body).options(num_cpus=1, max_retries=RAY_RETRIES,
                                                    retry_exceptions=True)
    eval_task = ray.remote(evaluate_body).options(num_cpus=threads, max_retries=RAY_RETRIES,
                                                  retry_exceptions=True)
    cfg_ref, p_ref = ray.put(cfg), ray.put(p)
    groups = task_groups(todo)
    nets = list(dict.fromkeys(n for n, _ in groups))
    net_refs = {n: net_task.remote(cfg_ref, p_ref, n) for n in nets}
    conds = list(dict.fromkeys((u.corruption, u.severity) for u in todo if u.corruption != "clean"))
    corr_refs = {c: corr_task.remote(cfg_ref, p_ref, *c) for c in conds}
    pending: dict[Any, tuple[Network, list[Unit]]] = {}
    for net, units in groups:
        needed = {(u.corruption, u.severity): corr_refs[(u.corruption, u.severity)]
                  for u in units if u.corruption != "clean"}
        ref = eval_task.remote(cfg_ref, p_ref, net, net_refs[net], units, needed)
        pending[ref] = (net, units)
    prog = RayProgress(len(todo), len(nets))
    net_pending = {r: n for n, r in net_refs.items()}
    failed: list[tuple[Unit, str]] = []
    stored = 0
    last_renew = time.perf_counter()
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=5.0)
        # networks finished (for the progress line only; failures surface in their eval tasks)
        if net_pending:
            nready, _ = ray.wait(list(net_pending), num_returns=len(net_pending), timeout=0)
            for r in nready:
                net_pending.pop(r)
                try:
                    ray.get(r)
                    prog.nets_done += 1
                except Exception:  # noqa: BLE001 - counted; the units' tasks report the error
                    prog.nets_failed += 1
        for ref in ready:
            net, units = pending.pop(ref)
            try:
                res = ray.get(ref)
                rows = res["rows"]
            except Exception as exc:  # noqa: BLE001 - a task that failed after its retries
                err = _one_line(exc)
                log.warning("ray: %d unit(s) of %s@%g seed %d ft %d failed after %d retries: %s",
                            len(units), net.method, net.sparsity, net.seed, net.finetune_epochs,
                            RAY_RETRIES, err)
                failed += [(u, err) for u in units]
                prog.units_failed += len(units)
                continue
            for u, row in zip(units, rows):
                if store.insert_unit(row):
                    stored += 1
                log_row(u, row, cfg.model)
            prog.units_done += len(units)
            prog.per_worker[res["worker"]] += len(units)
        if time.perf_counter() - last_renew > 60:
            store.renew_claims(owner, lease_s=600.0)
            last_renew = time.perf_counter()
        prog.maybe_log(len(pending))
    prog.maybe_log(0, force=True)
    if failed:
        store.record_failures(failure_rows(p, failed))
        log.warning("ray: %d unit(s) failed; recorded in the store (failures table) and listed in "
                    "the report; re-run to retry them", len(failed))
    return {"stored": stored, "failed": len(failed)}


__all__ = ["run_ray", "task_groups", "import_ray", "failure_rows", "RAY_RETRIES",
           "INSTALL_HINT", "network_body", "corruption_body", "evaluate_body"]
