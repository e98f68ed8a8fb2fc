"""Generate a CIFAR-10-C-layout folder from clean images.

    python -m prunecal.corruptions OUT_DIR --data ../shared/data/cifar10/test.npz [--limit N]
        [--names fog snow ...] [--seed 0] [--workers 2] [--overwrite]

The npz must hold uint8 (N, H, W, 3) images and integer labels; keys are found
automatically (``x``/``y``, ``x_test``/``y_test``) or given with --images-key/--labels-key.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from . import available
from .export import write_cifar10c


def _pick(z, given: str | None, candidates: tuple[str, ...], what: str, path: Path) -> str:
    if given is not None:
        if given not in z.files:
            raise SystemExit(f"{path}: no array {given!r}; arrays: {', '.join(z.files)}")
        return given
    for k in candidates:
        if k in z.files:
            return k
    raise SystemExit(f"{path}: cannot find the {what} (tried {', '.join(candidates)}); "
                     f"arrays: {', '.join(z.files)}; pass --{what}-key")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m prunecal.corruptions", description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="output folder")
    ap.add_argument("--data", type=Path, required=True, help=".npz with uint8 NHWC images and labels")
    ap.add_argument("--images-key", default=None)
    ap.add_argument("--labels-key", default=None)
    ap.add_argument("--limit", type=int, default=None, help="first N images only")
    ap.add_argument("--names", nargs="+", default=None, choices=available(), metavar="NAME",
                    help="corruptions (default: all 19)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--overwrite", action="store_true")
    a = ap.parse_args(argv)
    if not a.data.is_file():
        raise SystemExit(f"no such file: {a.data} (expected an .npz with images and labels)")
    try:
        z = np.load(a.data, allow_pickle=False)
    except Exception as e:  # noqa: BLE001
        raise SystemExit(f"{a.data}: not a readable .npz ({e})") from None
    with z:
        xk = _pick(z, a.images_key, ("x", "x_test", "images", "data"), "images", a.data)
        yk = _pick(z, a.labels_key, ("y", "y_test", "labels", "targets"), "labels", a.data)
        x, y = z[xk], z[yk]
    if a.limit is not None:
        x, y = x[:a.limit], y[:a.limit]
    t0 = time.perf_counter()
    try:
        paths = write_cifar10c(x, y, a.out, a.names, a.seed, workers=a.workers, overwrite=a.overwrite)
    except (TypeError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    print(f"{len(paths)} corruption files up to date in {a.out} ({x.shape[0]} images x 5 severities, "
          f"seed {a.seed}) after {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
