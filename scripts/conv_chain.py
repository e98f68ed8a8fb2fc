"""Three C x C 3x3 convs (+ ReLU) on H x H maps, each weight kept with probability DENSITY, as one
plan at batch 64 on one thread: microseconds per image and GMAC/s with the lanes section off
(PRUNECAL_PLAN_LANES=0) and with limits of 16 and 64 pixels, two rounds interleaved, each about
1 s of the benchmarks' timing loop (``deepsparse_runner.measure``: the median call).

    python scripts/conv_chain.py C H DENSITY        # e.g. 512 4 0.08 (VGG's 4x4 layers)

``PRUNECAL_ISA`` / ``PRUNECAL_PLAN_LANE_BAND_KB`` apply as usual.
"""
import os
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from deepsparse_runner import measure  # noqa: E402
from prunecal.sparse.plan import compile_plan  # noqa: E402

torch.manual_seed(0)
C, H, dens = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
layers = []
for i in range(3):
    c = nn.Conv2d(C, C, 3, padding=1)
    with torch.no_grad():
        c.weight.mul_((torch.rand_like(c.weight) < dens).float())
    layers += [c, nn.ReLU()]
m = nn.Sequential(*layers).eval()
pl = compile_plan(m, "csr", threads=1, input_size=(C, H, H))
x = torch.randn(64, C, H, H)
torch.set_num_threads(1)
macs = sum(int((l.weight != 0).sum()) for l in m if isinstance(l, nn.Conv2d)) * H * H
for px in ["0", "16", "64"] * 2:
    os.environ["PRUNECAL_PLAN_LANES"] = px
    with torch.no_grad():
        dt = 1.0 / measure(lambda: pl(x), 64, 1.0)["images_per_s"]  # seconds per image, median call
    print(f"C{C} {H}x{H} d{dens} lanes<={px}: {dt*1e6:.1f} us/img  {macs/dt/1e9:.2f} GMAC/s")
