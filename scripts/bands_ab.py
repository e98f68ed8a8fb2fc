"""A/B of the AVX2 tiles' input-channel bands on one network: a process with the bands off
(PRUNECAL_BAND_KB=0) and one with the default, alternating, ROUNDS each (images/s from the
median call of about 3 s a process: the benchmarks' timing loop, ``deepsparse_runner.measure``),
checking that both give the same bits. The setting is read once per process,
hence one process per measurement. The bands are the AVX2 tiles' (``PRUNECAL_ISA=avx2`` or
``scripts/as_avx2_machine.sh``); on the AVX-512 path the generated AVX-512 kernels run the convs,
and the AVX2 tiles only with them off (``PRUNECAL_NO_JIT=1``), for the shapes without AVX-512
tiles (8x8).

    python scripts/bands_ab.py NET BATCH THREADS [ROUNDS]      # e.g. vgg16_bn 64 2 3

NET: a prunecal model name, pruned to 90 % by global magnitude (every conv but the stem), as
``peers.pruned_model`` of benchmarks/peers.py makes it for the benchmarks.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def one_process(name: str, batch: int, threads: int, out: str) -> None:
    """One process's measurement: prints images/s, saves the output of a fixed input to `out`."""
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import numpy as np
    import torch

    import peers
    from deepsparse_runner import measure
    from prunecal.sparse.plan import compile_plan

    torch.set_num_threads(threads)
    plan = compile_plan(peers.pruned_model(name, 0.9), "csr", threads=threads)
    x = peers.sample_input(batch)
    with torch.no_grad():
        np.save(out, plan(x).numpy())
        rate = measure(lambda: plan(x), batch, 3.0)["images_per_s"]
    print(f"{rate:.0f}")


def main(argv: list[str]) -> None:
    if argv[:1] == ["--measure"]:
        one_process(argv[1], int(argv[2]), int(argv[3]), argv[4])
        return
    if len(argv) not in (3, 4):
        sys.exit(__doc__)
    import numpy as np

    name, batch, threads = argv[0], int(argv[1]), int(argv[2])
    rounds = int(argv[3]) if len(argv) == 4 else 3
    rates: dict[str, list[str]] = {"0": [], "default": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            for kb in rates:
                env = dict(os.environ)
                env.pop("PRUNECAL_BAND_KB", None)
                if kb != "default":
                    env["PRUNECAL_BAND_KB"] = kb
                out = os.path.join(tmp, f"{kb}_{r}.npy")
                done = subprocess.run([sys.executable, __file__, "--measure", name, str(batch), str(threads), out],
                                      env=env, capture_output=True, text=True, check=True)
                rates[kb].append(done.stdout.strip().splitlines()[-1])
        ref = np.load(os.path.join(tmp, "0_0.npy"))
        for f in sorted(os.listdir(tmp)):
            if not np.array_equal(np.load(os.path.join(tmp, f)), ref):
                sys.exit(f"{f}: different bits from the bands-off run")
    for kb, r in rates.items():
        label = "bands off (PRUNECAL_BAND_KB=0)" if kb == "0" else "bands (default)"
        print(f"{name} batch {batch} threads {threads} {label}: {', '.join(r)} img/s")


if __name__ == "__main__":
    main(sys.argv[1:])
