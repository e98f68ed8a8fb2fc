"""Command line: ``prunecal-eval`` (run / resume a study) and ``prunecal-report`` (rebuild its report).

Exit codes: 0 done; 1 disk full or an unexpected failure (``prunecal-report --check``: damaged
rows); 2 bad arguments (a setting of the wrong type or out of range, unknown model / method /
corruption / backend names, unreadable weights, data or config, an output path that is a file)
or a damaged result store (``--rebuild-store`` moves it aside); 130 interrupted.
"""
from __future__ import annotations

import argparse
import logging
import os
import sqlite3
import sys
import time
from pathlib import Path
from typing import Sequence

from . import config as C

log = logging.getLogger("prunecal.eval")

_EPILOG = """\
Without arguments beyond --out, a small default study runs on the shipped assets: the pretrained
CIFAR-10 ResNet-20 and the first 500 original-pixel CIFAR-10 test images (100 held out for the
temperature fit, 400 evaluated), methods global_magnitude,l1_filter,bn_channel at sparsities
0,0.2,0.6, one-shot (no fine-tuning: --finetune-epochs 0), seed 0, the 15 benchmark corruptions
at severities 1,3,5 (mCE is then averaged over these three severities), backends csr (every
unit, through the native plan) and dense (clean units: the speed baseline and a logit-equivalence
check; dense alone when prunecal._C is not built). Re-running the same command resumes: only
missing units are evaluated, and a fine-tuning killed midway resumes from its last finished epoch.

The seed study's protocol (prune -> fine-tune 40 epochs at LR 0.001 with masks fixed -> evaluate,
3 seeds): --finetune-epochs 0,40 --finetune-data TRAIN --seeds 0,1,2.

examples:
  prunecal-eval --out runs/default
  prunecal-eval --model resnet56 --weights resnet56-4bfd9763.th --data cifar10/ \\
                --methods global_magnitude,l1_filter --sparsities 0,0.5,0.9 \\
                --corruptions all --severities 1-5 --sparse-backend csr --out runs/r56
  prunecal-eval --model resnet20 --data cifar10/exact_subset.npz \\
                --finetune-data cifar10/train_jpeg.npz --finetune-epochs 0,5 --seeds 0,1 \\
                --methods global_magnitude,l1_filter --sparsities 0,0.7 --out runs/ft
  prunecal-report runs/r56
"""


def _d(name: str) -> str:
    v = getattr(C.DEFAULTS, name)
    if isinstance(v, tuple):
        v = ",".join(f"{x:g}" if isinstance(x, float) else str(x) for x in v)
    return f" (default: {v})"


class _Parser(argparse.ArgumentParser):
    """argparse with its errors (unknown flag, missing value) on one line, exit 2."""

    def error(self, message: str):  # noqa: D401
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``prunecal-eval`` argument parser (every default is stated in the help). Values are
    taken as text and checked by :func:`prunecal.eval.config.check_setting`, the same schema
    as the config-file keys."""
    p = _Parser(
        prog="prunecal-eval", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_EPILOG,
        description="Prune a CNN post hoc and measure its calibration, corruption robustness and "
                    "CPU speed; results go to OUT/results.sqlite, OUT/report.{md,html}, OUT/results.csv.")
    a = p.add_argument
    a("--config", metavar="FILE", help="TOML or YAML file with the same settings (keys = flag names "
      "with _ or -, optionally under [study]); flags override it")
    a("--out", metavar="DIR", help="output folder (store, cache, report)" + _d("out"))
    a("--model", help="model name (prunecal.models.available())" + _d("model"))
    a("--weights", metavar="PATH", help="checkpoint of the model (default: the shipped ResNet-20 "
      "weights for resnet20, random initialisation seeded by --seed otherwise)")
    a("--data", metavar="PATH", help="CIFAR-10 test data in any format load_cifar10 accepts "
      "(official python/binary folder, npz) (default: the shipped 500 original-pixel test images)")
    a("--split", help="split of --data to evaluate" + _d("split"))
    a("--cifar10c", metavar="DIR", help="evaluate on the official CIFAR-10-C .npy files in DIR instead "
      "of generating corruptions; --data must then hold the official test set in official order "
      "(default: generate with prunecal.corruptions)")
    a("--methods", help="comma-separated pruning methods (prunecal.prune.available())" + _d("methods"))
    a("--sparsities", help="comma-separated target sparsities in [0, 1); 0 = the unpruned network, "
      "evaluated once" + _d("sparsities"))
    a("--corruptions", help="'all' (19), 'benchmark' (the 15 of CIFAR-10-C), 'extra' (4), 'none', or "
      "comma-separated names" + _d("corruptions"))
    a("--severities", help="severities, e.g. '1-5' or '1,3,5'" + _d("severities"))
    a("--sparse-backend", dest="sparse_backend", help="comma-separated backends from dense,torch,csr,bsr; "
      "the first evaluates every unit, the others only the clean units (speed and an equivalence "
      "check of their logits)" + _d("sparse_backend"))
    a("--threads", help="CPU threads for torch and the native kernels" + _d("threads"))
    a("--batch-size", dest="batch_size", help="images per forward pass" + _d("batch_size"))
    a("--seeds", help="comma-separated seeds; every seeded stage (random pruning, slimming, "
      "fine-tuning order and augmentation, the calibration split, bootstrap) runs once per seed and "
      "the report shows mean +- std over seeds" + _d("seeds"))
    a("--seed", help="a single seed (same as --seeds N)")
    a("--corruption-seed", dest="corruption_seed", help="seed of the generated corruptions "
      "(the same corrupted images for every --seeds value)" + _d("corruption_seed"))
    g = p.add_argument_group("fine-tuning (the seed study's protocol: prune -> fine-tune -> evaluate)")
    b = g.add_argument
    b("--finetune-epochs", dest="finetune_epochs", help="comma-separated fine-tuning lengths in "
      "epochs, a sweep dimension: 0 = one-shot, e.g. 0,5 evaluates every pruned network one-shot and "
      "fine-tuned (SGD, masks fixed: pruned weights stay zero)" + _d("finetune_epochs"))
    b("--finetune-data", dest="finetune_data", metavar="PATH", help="training images for fine-tuning "
      "in any layout load_cifar10 accepts (e.g. train_jpeg.npz, or exact_subset.npz's x_train); "
      "required when an epoch count > 0")
    b("--finetune-split", dest="finetune_split", help="split of --finetune-data" + _d("finetune_split"))
    b("--finetune-limit", dest="finetune_limit", help="use only the first N training "
      "images (default: all)")
    b("--finetune-lr", dest="finetune_lr", help="learning rate (the paper: 0.001)"
      + _d("finetune_lr"))
    b("--finetune-batch-size", dest="finetune_batch_size", help="images per SGD step"
      + _d("finetune_batch_size"))
    b("--finetune-momentum", dest="finetune_momentum", help="SGD momentum"
      + _d("finetune_momentum"))
    b("--finetune-weight-decay", dest="finetune_weight_decay", help="SGD weight decay"
      + _d("finetune_weight_decay"))
    b("--finetune-schedule", dest="finetune_schedule", metavar="{" + ",".join(C.FINETUNE_SCHEDULES) + "}",
      help="LR schedule; constant lets a longer run continue a shorter one's checkpoint"
      + _d("finetune_schedule"))
    b("--finetune-augment", dest="finetune_augment", metavar="{true,false}",
      help="random crop (pad 4) + horizontal flip (default: true)")
    b("--finetune-backend", dest="finetune_backend", metavar="{" + ",".join(C.FINETUNE_BACKENDS) + "}",
      help="where fine-tuning runs: torch (masked dense), csr (prunecal's sparse training kernels, "
      "when built), auto (csr where it is measured faster)" + _d("finetune_backend"))
    b("--slimming-l1", dest="slimming_l1", help="network slimming (Liu et al. 2017, "
      "1e-4 there): L1 penalty on BN scales in a sparsity-training stage before bn_channel pruning; "
      "0 = prune the network as it is" + _d("slimming_l1"))
    b("--slimming-epochs", dest="slimming_epochs", help="epochs of that sparsity training "
      "(on --finetune-data)" + _d("slimming_epochs"))
    a("--n-bins", dest="n_bins", help="bins of ECE / MCE / reliability diagrams" + _d("n_bins"))
    a("--binning", metavar="{width,mass}", help="equal-width or equal-mass bins" + _d("binning"))
    a("--calib-fraction", dest="calib_fraction",
      help="fraction of the clean images held out (seeded split) to fit each pruned model's "
      "temperature; never evaluated; 0 disables temperature scaling" + _d("calib_fraction"))
    a("--n-bootstrap", dest="n_bootstrap", help="bootstrap resamples of the clean-unit 95 %% "
      "intervals (0 = none)" + _d("n_bootstrap"))
    a("--keep-logits", dest="keep_logits", action="store_true", default=None,
      help="save each unit's logits, labels and image indices as OUT/logits/*.npz (default: off)")
    a("--limit", help="use only the first N images of --data (default: all)")
    a("--cache-dir", dest="cache_dir", metavar="DIR", help="cache of pruned models and corrupted "
      "images (default: OUT/cache)")
    a("--executor", help="where the units run: local (this process; several processes on one --out "
      "share the work) or ray (Ray tasks on a cluster or a local Ray: pip install 'prunecal[ray]')"
      + _d("executor"))
    a("--ray-address", dest="ray_address", metavar="ADDR", help="Ray cluster to join with --executor "
      "ray: 'auto' (the running cluster) or the head's host:port (default: start a local Ray)")
    a("--no-report", dest="no_report", action="store_true", help="do not write the report at the end")
    a("--dry-run", dest="dry_run", action="store_true", help="print how many units the study has, are "
      "stored and would run, then exit without evaluating")
    a("--quiet", action="store_true", default=None, help="plain log lines instead of progress bars")
    a("--rebuild-store", dest="rebuild_store", action="store_true",
      help="when OUT/results.sqlite is damaged (SQLite cannot read it), move it aside as "
      "results.sqlite.damaged-TIME and start a fresh store; the cache is kept, so only the "
      "evaluations run again (an intact store is kept as it is)")
    return p


def config_from_args(args: argparse.Namespace) -> C.StudyConfig:
    """Defaults < ``--config`` file < flags."""
    cfg = C.DEFAULTS
    if args.config:
        cfg = C.config_from_mapping(C.load_config_file(args.config), cfg)
    names = {f for f in C.StudyConfig.__dataclass_fields__} | {"seed"}
    flags = {k: v for k, v in vars(args).items() if k in names and v is not None}
    # the same schema as the config keys: flag values are text, parsed by each setting's type
    return C.config_from_mapping(flags, cfg, text=True, flags=True)


def _setup_logging(quiet: bool) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S",
                        stream=sys.stderr)


def _fail(msg: str, code: int) -> int:
    print(f"prunecal-eval: error: {msg}", file=sys.stderr)
    return code


def _one_line(exc: BaseException) -> str:
    s = str(exc).strip().splitlines()
    return s[0] if s else type(exc).__name__


def run(argv: Sequence[str] | None = None) -> int:
    """Parse, run and report; returns the exit code (see module doc)."""
    from prunecal.registry import UnknownNameError

    from .store import Store, StoreCorruptError, StoreFullError, is_corruption, is_disk_full

    args = build_parser().parse_args(argv)
    try:
        cfg = config_from_args(args)
        C.check_output_paths(cfg)  # nothing is written before every setting has been checked
    except (C.ConfigError, FileNotFoundError, ValueError) as exc:
        return _fail(_one_line(exc), 2)
    _setup_logging(cfg.quiet)
    out = Path(cfg.out)
    try:
        from .sweep import Sweep, plan, prepare

        cfg = C.resolve(cfg)
        prep = prepare(cfg)
    except (UnknownNameError, C.ConfigError, FileNotFoundError, IsADirectoryError,
            PermissionError) as exc:
        return _fail(_one_line(exc), 2)
    except ValueError as exc:  # corrupt weights / data files
        return _fail(_one_line(exc), 2)
    except KeyboardInterrupt:
        print("interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    store = None
    try:
        out.mkdir(parents=True, exist_ok=True)
        if args.rebuild_store:
            moved = rebuild_store(out / "results.sqlite")
            if moved:
                log.warning("damaged result store moved to %s; starting a fresh store", moved)
        store = Store(out / "results.sqlite")
        resolved = C.to_dict(cfg)
        resolved.update(config_hash=prep.config_hash, weights_sha256=prep.weights_sha256,
                        data_fingerprint=prep.data_fingerprint,
                        n_calibration=prep.n_calibration, n_evaluation=prep.n_evaluation,
                        finetune_recipe=prep.recipe.to_dict() if prep.recipe else None,
                        finetune_recipe_key=prep.recipe.key() if prep.recipe else None)
        store.record_config(prep.config_hash, resolved)
        from prunecal._atomic import atomic_write

        text = (C.to_toml(cfg) + "\n# what the results depend on beside [study]\n[provenance]\n"
                f'config_hash = "{prep.config_hash}"\nweights_sha256 = "{prep.weights_sha256}"\n'
                f'data_fingerprint = "{prep.data_fingerprint}"\n')
        atomic_write(out / "config.resolved.toml", lambda f: f.write(text.encode()))
        from .progress import make_progress

        sweep = Sweep(cfg, store, progress=make_progress(cfg.quiet))
        todo = sweep.pending(prep)
        total = len(plan(cfg))
        log.info("study %s: %d units, %d already stored, %d to run (%d calibration / %d evaluation "
                 "images)", prep.config_hash, total, total - len(todo), len(todo),
                 prep.n_calibration, prep.n_evaluation)
        if args.dry_run:
            print(f"{prep.config_hash}: {total} units, {total - len(todo)} stored, {len(todo)} to run")
            return 0
        if cfg.executor == "ray":
            from .ray_executor import run_ray

            counts = run_ray(cfg, store, prep, address=cfg.ray_address)
            if counts["failed"]:
                log.warning("%d unit(s) failed; re-run the same command to retry them", counts["failed"])
        else:
            sweep.run(prep)
        if not args.no_report:
            from .report import build_report

            paths = build_report(out, config_hash=prep.config_hash)
            log.info("report: %s", paths["html"])
        return 0
    except KeyboardInterrupt:
        print("interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    except StoreFullError as exc:
        return _fail(f"{_one_line(exc)}", 1)
    except StoreCorruptError as exc:
        return _fail(_one_line(exc), 2)
    except sqlite3.DatabaseError as exc:  # not through Store's guard (a damaged file, a lock)
        if is_corruption(exc):
            return _fail(_one_line(StoreCorruptError(out / "results.sqlite", exc)), 2)
        return _fail(f"result store {out / 'results.sqlite'}: {_one_line(exc)}", 1)
    except (UnknownNameError, C.ConfigError, FileNotFoundError) as exc:
        return _fail(_one_line(exc), 2)
    except OSError as exc:
        if is_disk_full(exc):
            return _fail(f"disk full ({exc}); no partial unit was stored: free space and re-run "
                         "the same command to resume", 1)
        if os.environ.get("PRUNECAL_DEBUG"):
            raise
        return _fail(f"{type(exc).__name__}: {_one_line(exc)} (no partial unit was stored)", 1)
    except ValueError as exc:  # bad input found mid-sweep (e.g. a corrupt CIFAR-10-C file)
        if os.environ.get("PRUNECAL_DEBUG"):
            raise
        return _fail(f"{_one_line(exc)} (set PRUNECAL_DEBUG=1 for the traceback)", 2)
    finally:
        if store is not None:
            store.close()


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point of ``prunecal-eval``."""
    sys.exit(run(argv))


def rebuild_store(db: str | Path) -> Path | None:
    """Move a damaged result store (one SQLite cannot read) aside as ``<name>.damaged-<UTC time>``
    (with its ``-wal``; the ``-shm`` index is dropped) so that a fresh one can start; returns the
    new path, or None when the store is absent or intact (then it is kept as it is)."""
    from .store import Store, StoreCorruptError

    db = Path(db)
    if not db.exists():
        return None
    try:
        Store(db).close()
        return None
    except StoreCorruptError:
        pass
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    dest = db.with_name(f"{db.name}.damaged-{stamp}")
    n = 1
    while dest.exists():
        n += 1
        dest = db.with_name(f"{db.name}.damaged-{stamp}-{n}")
    os.replace(db, dest)
    wal = db.with_name(db.name + "-wal")
    if wal.exists():
        os.replace(wal, dest.with_name(dest.name + "-wal"))
    db.with_name(db.name + "-shm").unlink(missing_ok=True)
    return dest


def build_report_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="prunecal-report",
                description="(Re)build OUT/report.md, OUT/report.html, OUT/figures/ "
                            "and OUT/results.csv from OUT/results.sqlite. Every row's checksum is "
                            "verified: a damaged row is named on stderr (one line each) and left "
                            "out of the report.")
    p.add_argument("out", metavar="OUT", help="output folder of a prunecal-eval run")
    p.add_argument("--config-hash", dest="config_hash", help="which study in the store to report "
                   "(default: the one run last); `--list` shows them")
    p.add_argument("--list", action="store_true", help="list the studies in the store and exit")
    p.add_argument("--check", action="store_true", help="verify the store (SQLite's integrity check "
                   "and every row's checksum), list every damaged row and exit: 0 all intact, 1 "
                   "damaged rows (re-run prunecal-eval with the same settings to re-make them), "
                   "2 the file itself is damaged")
    return p


class _StderrLines(logging.Handler):
    """Warnings of the store (damaged rows) as ``prunecal-report: warning: ...`` lines."""

    def emit(self, record: logging.LogRecord) -> None:
        print(f"prunecal-report: warning: {record.getMessage()}", file=sys.stderr)


def _report_check(db: Path) -> int:
    from .store import Store

    with Store(db) as st:
        problems = [str(r[0]) for r in st.conn.execute("PRAGMA integrity_check(20)")]
        if problems != ["ok"]:
            from .store import StoreCorruptError

            raise StoreCorruptError(db, "; ".join(problems[:3]))
        bad = st.check()
        n = st.count()
        n_cfg = len(st.configs())
    for b in bad:
        print(b["line"])
    if bad:
        print(f"prunecal-report: {len(bad)} of {n} unit rows in {db} are damaged; re-run "
              "prunecal-eval with the same settings to re-make them", file=sys.stderr)
        return 1
    print(f"{db}: {n} unit rows in {n_cfg} studies, every row checksum verifies")
    return 0


def report_run(argv: Sequence[str] | None = None) -> int:
    """``prunecal-report``; returns the exit code."""
    from .store import Store, StoreCorruptError, StoreFullError, is_corruption

    args = build_report_parser().parse_args(argv)
    db = Path(args.out) / "results.sqlite"
    if not db.is_file():
        print(f"prunecal-report: error: no result store at {db} (run prunecal-eval --out "
              f"{args.out} first)", file=sys.stderr)
        return 2
    store_log = logging.getLogger("prunecal.eval.store")
    handler = _StderrLines(logging.WARNING)
    store_log.addHandler(handler)
    propagate, store_log.propagate = store_log.propagate, False
    try:
        if args.check:
            return _report_check(db)
        if args.list:
            with Store(db) as st:
                for c in st.configs():
                    print(f"{c['config_hash']}  {c['n_units']:5d} units  last run {c['last_run_at']}  "
                          f"model {c['config'].get('model')}")
            return 0
        from .report import build_report

        paths = build_report(args.out, config_hash=args.config_hash)
    except sqlite3.DatabaseError as exc:
        msg = StoreCorruptError(db, exc) if is_corruption(exc) else f"result store {db}: {exc}"
        print(f"prunecal-report: error: {_one_line(msg)}", file=sys.stderr)
        return 2
    except (ValueError, StoreFullError) as exc:  # StoreCorruptError is a ValueError
        print(f"prunecal-report: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    finally:
        store_log.removeHandler(handler)
        store_log.propagate = propagate
    for k in ("md", "html", "csv"):
        print(paths[k])
    return 0


def report_main(argv: Sequence[str] | None = None) -> None:
    """Console entry point of ``prunecal-report``."""
    sys.exit(report_run(argv))


if __name__ == "__main__":
    main()
