"""Train CIFAR VGG-16-BN / VGG-19-BN so that benchmarks/bench_vgg.py (and bench_plan.py) can
measure the plan with trained weights (trained weights spread sparsity over the layers
differently from the default initialisation). SGD, lr 0.05, batch 128, cosine, 2 threads, on

- ``--train subset`` (default): the 4,660 original training images of
  ``cifar10/exact_subset.npz`` in the shared data folder (``$PRUNECAL_SHARED_DATA``, else
  ``../shared/data`` beside the checkout, as benchmarks/peers.py finds it), 8 epochs: a brief
  run, not a good classifier;
- ``--train full``: the 50,000 training images of ``train_jpeg.npz`` (JPEG copies, decoded once).

Accuracy is printed on the 846 original test images after every epoch.

    python scripts/train_vgg_brief.py OUT_DIR [NAME ...] [--train full] [--epochs N]
    PRUNECAL_VGG_WEIGHTS=OUT_DIR python -m pytest benchmarks/bench_vgg.py --benchmark-only ...

Writes ``OUT_DIR/<name>.pt`` (state dict; default names vgg16_bn vgg19_bn).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
import peers  # noqa: E402  (the shared data folder, found as the benchmarks find it)
from prunecal import models  # noqa: E402
from prunecal.data.cifar10 import load_cifar10  # noqa: E402
from prunecal.train import evaluate, train  # noqa: E402

DATA = next((d / "cifar10" for d in peers.shared_data_dirs() if (d / "cifar10").is_dir()),
            peers.shared_data_dirs()[-1] / "cifar10")


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("names", nargs="*", default=["vgg16_bn", "vgg19_bn"])
    ap.add_argument("--train", choices=("subset", "full"), default="subset")
    ap.add_argument("--epochs", type=int, default=8)
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    d = np.load(DATA / "exact_subset.npz")
    if a.train == "full":
        x_train, y_train = load_cifar10(DATA / "train_jpeg.npz", "train")
    else:
        x_train, y_train = d["x_train"], d["y_train"]
    torch.set_num_threads(2)
    for name in a.names:
        model, spec = models.create(name), models.spec(name)
        t0 = time.time()

        def report(epoch: int, stats: dict, _opt) -> None:
            acc = evaluate(model, d["x_test"], d["y_test"], spec.mean, spec.std)
            print(f"{name} epoch {epoch}: {time.time() - t0:.0f} s, accuracy on 846 test images {acc}",
                  flush=True)

        train(model, x_train, y_train, epochs=a.epochs, lr=0.05, mean=spec.mean, std=spec.std,
              progress=False, seed=0, on_epoch_end=report)
        torch.save(model.state_dict(), a.out / f"{name}.pt")


if __name__ == "__main__":
    main(sys.argv[1:])
