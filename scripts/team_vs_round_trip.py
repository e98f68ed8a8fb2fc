"""Batch 1 on two threads against the distance between the two cores, sampled over time.

Each round: the median call time of ResNet-56 @90 % as a 2-thread team (``compile_plan(...,
threads=2, mode="op")``: both threads share every image, one step per op), the FMA rate of two
single-thread FMA loops run at once (do the two CPUs share execution units?), the round trip of
one cache line between two threads (how far apart are they?), and the team again. On this
project's VM the team ran at two speeds that followed the round trip (docs/performance.md).

    python scripts/team_vs_round_trip.py [ROUNDS]      # default 12; needs g++

Compiles scripts/core_round_trip.cpp and scripts/fma_peak.cpp into a temporary directory.
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
import peers  # noqa: E402
from deepsparse_runner import measure  # noqa: E402
from prunecal.sparse.plan import compile_plan  # noqa: E402


def build(tmp: Path) -> tuple[str, str]:
    rt, fma = str(tmp / "core_round_trip"), str(tmp / "fma_peak")
    subprocess.run(["g++", "-O2", "-pthread", str(ROOT / "scripts/core_round_trip.cpp"), "-o", rt], check=True)
    subprocess.run(["g++", "-O2", "-mavx2", "-mfma", str(ROOT / "scripts/fma_peak.cpp"), "-o", fma], check=True)
    return rt, fma


def main(rounds: int = 12) -> None:
    with tempfile.TemporaryDirectory() as d:
        rt_bin, fma_bin = build(Path(d))
        pm = compile_plan(peers.pruned_model("resnet56", 0.9), "csr", threads=2, mode="op")
        x = peers.sample_input(1)

        def team_us(calls: int = 2000) -> float:  # median call, exactly `calls` timed calls
            with torch.inference_mode():
                return measure(lambda: pm(x), 1, 1.0, min_rounds=calls, max_rounds=calls)["median_s"] * 1e6

        def fma_pair() -> list[float]:
            ps = [subprocess.Popen([fma_bin], stdout=subprocess.PIPE, text=True) for _ in range(2)]
            return [float(p.communicate()[0].split(":")[1].split()[0]) for p in ps]

        def round_trip_ns() -> float:
            out = subprocess.run([rt_bin, "1"], capture_output=True, text=True, check=True).stdout
            return float(out.split(":")[1].split()[0])

        team_us(100)
        print("| time | team us / image | FMA GMAC/s of two loops at once | round trip ns | team us / image |")
        print("|---|---|---|---|---|")
        for _ in range(rounds):
            a, pair, rt, b = team_us(), fma_pair(), round_trip_ns(), team_us()
            print(f"| {time.strftime('%H:%M:%S')} | {a:.0f} | {pair[0]:.1f}, {pair[1]:.1f} | {rt:.0f} | {b:.0f} |", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 12)
