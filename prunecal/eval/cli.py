"""Command line: ``prunecal-eval`` (run / resume a study) and ``prunecal-report`` (rebuild its report).

Exit codes: 0 done; 1 disk full or an unexpected failure; 2 bad arguments (unknown model /
method / corruption / backend names, unreadable weights, data or config); 130 interrupted.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
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


def build_parser() -> argparse.ArgumentParser:
    """The ``prunecal-eval`` argument parser (every default is stated in the help)."""
    p = argparse.ArgumentParser(
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
    a("--threads", type=int, help="CPU threads for torch and the native kernels" + _d("threads"))
    a("--batch-size", dest="batch_size", type=int, help="images per forward pass" + _d("batch_size"))
    a("--seeds", help="comma-separated seeds; every seeded stage (random pruning, slimming, "
      "fine-tuning order and augmentation, the calibration split, bootstrap) runs once per seed and "
      "the report shows mean +- std over seeds" + _d("seeds"))
    a("--seed", type=int, help="a single seed (same as --seeds N)")
    a("--corruption-seed", dest="corruption_seed", type=int, help="seed of the generated corruptions "
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
    b("--finetune-limit", dest="finetune_limit", type=int, help="use only the first N training "
      "images (default: all)")
    b("--finetune-lr", dest="finetune_lr", type=float, help="learning rate (the paper: 0.001)"
      + _d("finetune_lr"))
    b("--finetune-batch-size", dest="finetune_batch_size", type=int, help="images per SGD step"
      + _d("finetune_batch_size"))
    b("--finetune-momentum", dest="finetune_momentum", type=float, help="SGD momentum"
      + _d("finetune_momentum"))
    b("--finetune-weight-decay", dest="finetune_weight_decay", type=float, help="SGD weight decay"
      + _d("finetune_weight_decay"))
    b("--finetune-schedule", dest="finetune_schedule", choices=C.FINETUNE_SCHEDULES,
      help="LR schedule; constant lets a longer run continue a shorter one's checkpoint"
      + _d("finetune_schedule"))
    b("--finetune-augment", dest="finetune_augment", choices=("true", "false"),
      help="random crop (pad 4) + horizontal flip (default: true)")
    b("--finetune-backend", dest="finetune_backend", choices=C.FINETUNE_BACKENDS,
      help="where fine-tuning runs: torch (masked dense), csr (prunecal's sparse training kernels, "
      "when built), auto (csr where it is measured faster)" + _d("finetune_backend"))
    b("--slimming-l1", dest="slimming_l1", type=float, help="network slimming (Liu et al. 2017, "
      "1e-4 there): L1 penalty on BN scales in a sparsity-training stage before bn_channel pruning; "
      "0 = prune the network as it is" + _d("slimming_l1"))
    b("--slimming-epochs", dest="slimming_epochs", type=int, help="epochs of that sparsity training "
      "(on --finetune-data)" + _d("slimming_epochs"))
    a("--n-bins", dest="n_bins", type=int, help="bins of ECE / MCE / reliability diagrams" + _d("n_bins"))
    a("--binning", choices=("width", "mass"), help="equal-width or equal-mass bins" + _d("binning"))
    a("--calib-fraction", dest="calib_fraction", type=float,
      help="fraction of the clean images held out (seeded split) to fit each pruned model's "
      "temperature; never evaluated; 0 disables temperature scaling" + _d("calib_fraction"))
    a("--n-bootstrap", dest="n_bootstrap", type=int, help="bootstrap resamples of the clean-unit 95 %% "
      "intervals (0 = none)" + _d("n_bootstrap"))
    a("--keep-logits", dest="keep_logits", action="store_true", default=None,
      help="save each unit's logits, labels and image indices as OUT/logits/*.npz (default: off)")
    a("--limit", type=int, help="use only the first N images of --data (default: all)")
    a("--cache-dir", dest="cache_dir", metavar="DIR", help="cache of pruned models and corrupted "
      "images (default: OUT/cache)")
    a("--no-report", dest="no_report", action="store_true", help="do not write the report at the end")
    a("--dry-run", dest="dry_run", action="store_true", help="print how many units the study has, are "
      "stored and would run, then exit without evaluating")
    a("--quiet", action="store_true", default=None, help="plain log lines instead of progress bars")
    return p


def config_from_args(args: argparse.Namespace) -> C.StudyConfig:
    """Defaults < ``--config`` file < flags."""
    cfg = C.DEFAULTS
    if args.config:
        cfg = C.config_from_mapping(C.load_config_file(args.config), cfg)
    names = {f for f in C.StudyConfig.__dataclass_fields__} | {"seed"}
    flags = {k: v for k, v in vars(args).items() if k in names and v is not None}
    if "finetune_augment" in flags:
        flags["finetune_augment"] = flags["finetune_augment"] == "true"
    return C.config_from_mapping(flags, cfg)


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

    from .store import Store, StoreFullError, is_disk_full

    args = build_parser().parse_args(argv)
    try:
        cfg = config_from_args(args)
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


def build_report_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="prunecal-report",
                                description="(Re)build OUT/report.md, OUT/report.html, OUT/figures/ "
                                            "and OUT/results.csv from OUT/results.sqlite.")
    p.add_argument("out", metavar="OUT", help="output folder of a prunecal-eval run")
    p.add_argument("--config-hash", dest="config_hash", help="which study in the store to report "
                   "(default: the one run last); `--list` shows them")
    p.add_argument("--list", action="store_true", help="list the studies in the store and exit")
    return p


def report_run(argv: Sequence[str] | None = None) -> int:
    """``prunecal-report``; returns the exit code."""
    from .store import Store, StoreFullError

    args = build_report_parser().parse_args(argv)
    db = Path(args.out) / "results.sqlite"
    if not db.is_file():
        print(f"prunecal-report: error: no result store at {db} (run prunecal-eval --out "
              f"{args.out} first)", file=sys.stderr)
        return 2
    if args.list:
        with Store(db) as st:
            for c in st.configs():
                print(f"{c['config_hash']}  {c['n_units']:5d} units  last run {c['last_run_at']}  "
                      f"model {c['config'].get('model')}")
        return 0
    try:
        from .report import build_report

        paths = build_report(args.out, config_hash=args.config_hash)
    except (ValueError, StoreFullError) as exc:
        print(f"prunecal-report: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    for k in ("md", "html", "csv"):
        print(paths[k])
    return 0


def report_main(argv: Sequence[str] | None = None) -> None:
    """Console entry point of ``prunecal-report``."""
    sys.exit(report_run(argv))


if __name__ == "__main__":
    main()
