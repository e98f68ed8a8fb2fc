"""Progress display of the sweep: a rich bar (units, images/s, ETA) or plain log lines."""
from __future__ import annotations

import logging
import sys
import time
from typing import Any

log = logging.getLogger("prunecal.eval")


class RichProgress:
    """Bar over all images of the pending units, with images/s and ETA (rich, on stderr)."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (BarColumn, Progress, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        self._p = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                           TextColumn("{task.fields[units]}"),
                           TextColumn("{task.fields[rate]} img/s"), TimeElapsedColumn(),
                           TextColumn("ETA"), TimeRemainingColumn(),
                           console=Console(stderr=True), transient=False)
        self._task = None
        self._n_units = 0
        self._done = 0
        self._images = 0
        self._t0 = 0.0

    def start(self, n_units: int, n_images: int) -> None:
        self._n_units = n_units
        self._t0 = time.perf_counter()
        self._p.start()
        self._task = self._p.add_task("prunecal-eval", total=max(n_images, 1),
                                      units=f"0/{n_units} units", rate="-")

    def advance_images(self, n: int) -> None:
        self._images += n
        rate = self._images / max(time.perf_counter() - self._t0, 1e-9)
        self._p.update(self._task, advance=n, rate=f"{rate:,.0f}")

    def unit_start(self, unit: Any) -> None:
        desc = f"{unit.method}@{unit.sparsity:g} {unit.corruption}/{unit.severity} [{unit.backend}]"
        self._p.update(self._task, description=desc)

    def unit_done(self, unit: Any, row: dict) -> None:
        self._done += 1
        self._p.update(self._task, units=f"{self._done}/{self._n_units} units")

    def stop(self) -> None:
        self._p.stop()

    def pause(self) -> None:
        """Hide the bar (fine-tuning shows its own); :meth:`resume` shows it again."""
        self._p.stop()

    def resume(self) -> None:
        self._p.start()


class LogProgress:
    """Plain log lines (``--quiet``): one per unit, with images/s and ETA."""

    def __init__(self) -> None:
        self._n_units = 0
        self._done = 0
        self._t0 = 0.0
        self._images = 0

    def start(self, n_units: int, n_images: int) -> None:
        self._n_units, self._t0 = n_units, time.perf_counter()

    def advance_images(self, n: int) -> None:
        self._images += n

    def unit_done(self, unit: Any, row: dict) -> None:
        self._done += 1
        el = time.perf_counter() - self._t0
        eta = el / self._done * (self._n_units - self._done)
        log.info("[%d/%d] %s@%g %s/%d [%s] acc %.4f ece %.4f ece(T) %.4f  %.0f img/s  ETA %.0f s",
                 self._done, self._n_units, unit.method, unit.sparsity, unit.corruption,
                 unit.severity, unit.backend, row["accuracy"], row["ece"], row["ece_ts"],
                 self._images / max(el, 1e-9), eta)

    def stop(self) -> None:
        pass


def make_progress(quiet: bool) -> Any:
    """Rich bar on a terminal unless ``quiet``; plain log lines otherwise."""
    if quiet or not sys.stderr.isatty():
        return LogProgress()
    return RichProgress()


__all__ = ["RichProgress", "LogProgress", "make_progress"]
