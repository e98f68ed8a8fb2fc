"""Wall time of one fine-tuning epoch on the full CIFAR-10 training set, as the sweep's
fine-tuning stage runs it (``prunecal.train.train``: SGD, LR 0.001, momentum 0.9, weight decay
5e-4, batch 128, crop + flip augmentation, masks fixed), for a pretrained ResNet pruned to a
sparsity by global magnitude (``benchmarks/peers.pruned_model``):

- ``torch``: masked dense torch, channels_last (the stage's torch backend);
- ``csr``: ``prunecal.sparse.trainable`` in NCHW;
- ``csr_cl``: the same in channels_last.

    PYTHONPATH=. python scripts/finetune_epoch.py --nets resnet20,resnet56 --sparsity 0.9 --threads 2

Data: ``../shared/data/cifar10/train_jpeg.npz`` (50,000 images; ``--limit`` for fewer). Each
variant runs in turn in this process; the printed seconds exclude data loading and model setup.
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(ROOT, "benchmarks"), ROOT]

import peers  # noqa: E402

from prunecal import _C  # noqa: E402
from prunecal.data.cifar10 import load_cifar10  # noqa: E402
from prunecal.eval.config import StudyConfig  # noqa: E402
from prunecal.models import spec as model_spec  # noqa: E402
from prunecal.prune.masks import get_masks  # noqa: E402
from prunecal.sparse.train import trainable  # noqa: E402
from prunecal.train import train  # noqa: E402


def epoch_seconds(net: str, sparsity: float, variant: str, images, labels, threads: int) -> float:
    model = copy.deepcopy(peers.pruned_model(net, sparsity))  # every variant starts from the same weights
    spec, cfg = model_spec(net), StudyConfig()  # the stage's recipe: StudyConfig's fine-tuning defaults
    kw = dict(epochs=1, lr=cfg.finetune_lr, batch_size=cfg.finetune_batch_size, momentum=cfg.finetune_momentum,
              weight_decay=cfg.finetune_weight_decay, mean=spec.mean, std=spec.std, seed=0, progress=False,
              augment=cfg.finetune_augment, schedule=cfg.finetune_schedule)
    if variant == "torch":  # masks as the stage makes them: every conv and linear
        names = [n for n, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
        runner, masks, cl = model, get_masks(model, names), True
    else:
        runner, masks, cl = trainable(model, "csr", threads=threads), None, variant == "csr_cl"
    t0 = time.perf_counter()
    train(runner, images, labels, masks=masks, channels_last=cl, **kw)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nets", default="resnet20,resnet56")
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--variants", default="torch,csr,csr_cl")
    ap.add_argument("--limit", type=int, default=None, help="training images (default: all 50,000)")
    ap.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data", "cifar10", "train_jpeg.npz"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    images, labels = load_cifar10(a.data, "train", limit=a.limit)
    print(f"{len(images)} images, {a.threads} threads, sparsity {a.sparsity}, native threads: {_C.thread_runtime()}")
    for net in a.nets.split(","):
        for v in a.variants.split(","):
            s = epoch_seconds(net, a.sparsity, v, images, labels, a.threads)
            print(f"{net} {v}: {s:.1f} s/epoch ({len(images) / s:.0f} images/s)", flush=True)


if __name__ == "__main__":
    main()
