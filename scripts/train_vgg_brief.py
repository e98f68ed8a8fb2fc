"""Briefly train CIFAR VGG-16-BN / VGG-19-BN so that benchmarks/bench_vgg.py can measure the plan
with trained weights (trained weights spread sparsity over the layers differently from the
default initialisation). Not a good classifier: 8 epochs on the 4,660 original training images
of ``../shared/data/cifar10/exact_subset.npz`` (SGD, lr 0.05, batch 128, cosine), 2 threads.

    python scripts/train_vgg_brief.py OUT_DIR [NAME ...]      # default: vgg16_bn vgg19_bn
    PRUNECAL_VGG_WEIGHTS=OUT_DIR python -m pytest benchmarks/bench_vgg.py --benchmark-only ...

Writes ``OUT_DIR/<name>.pt`` (state dict) and prints the accuracy on the 846 test images.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from prunecal import models  # noqa: E402
from prunecal.train import evaluate, train  # noqa: E402


def main(argv: list[str]) -> None:
    if not argv:
        sys.exit(__doc__)
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    d = np.load(ROOT.parent / "shared" / "data" / "cifar10" / "exact_subset.npz")
    torch.set_num_threads(2)
    for name in argv[1:] or ["vgg16_bn", "vgg19_bn"]:
        model, spec = models.create(name), models.spec(name)
        t0 = time.time()
        train(model, d["x_train"], d["y_train"], epochs=8, lr=0.05, mean=spec.mean, std=spec.std,
              progress=False, seed=0)
        acc = evaluate(model, d["x_test"], d["y_test"], spec.mean, spec.std)
        torch.save(model.state_dict(), out / f"{name}.pt")
        print(f"{name}: {time.time() - t0:.0f} s, accuracy on 846 test images {acc}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
