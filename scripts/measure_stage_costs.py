import time, numpy as np, torch
from prunecal import models, prune
from prunecal.data import load_cifar10
from prunecal.train import train
from prunecal.eval.evaluate import compile_backend, forward_logits
"""Per-stage costs for docs/scale-out.md: fine-tuning and evaluation throughput of ResNet-20/56 at 50 %
global magnitude, 2 threads.  PYTHONPATH=. python scripts/measure_stage_costs.py"""
torch.set_num_threads(2)
x, y = load_cifar10("../shared/data/cifar10/exact_subset.npz", split="train", limit=1024)
sp = models.spec("resnet20")
for name in ("resnet20", "resnet56"):
    w = {"resnet20": "../shared/data/weights/resnet20-12fca82f.th", "resnet56": "../shared/data/weights/resnet56-4bfd9763.th"}[name]
    net = prune.prune(models.create(name, weights=w), "global_magnitude", 0.5, keep_first_conv=True)
    t0 = time.perf_counter(); train(net, x, y, epochs=1, lr=0.001, batch_size=128, mean=sp.mean, std=sp.std, progress=False, schedule="constant"); t1 = time.perf_counter()
    m, _, _ = compile_backend(net.eval(), "csr", 2)
    forward_logits(m, x[:256], sp.mean, sp.std, 256)
    t2 = time.perf_counter(); forward_logits(m, x, sp.mean, sp.std, 256); t3 = time.perf_counter()
    print(f"{name}: fine-tune {len(y) / (t1 - t0):.0f} images/s, evaluate (csr plan, 50 %) {len(y) / (t3 - t2):.0f} images/s")
