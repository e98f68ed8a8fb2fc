"""Side-by-side table: torch eager vs ONNX Runtime vs DeepSparse on the pruned CIFAR ResNet-56.

One run times every case with one loop (:func:`deepsparse_runner.measure`: warm-up, about
``--seconds`` of calls, per-call times), torch and ONNX Runtime in this process and
DeepSparse in its venv's process (``benchmarks/deepsparse_runner.py``). The whole sweep is
repeated ``--repeats`` times, cases interleaved, and each cell keeps its best sweep, so that
a burst of load from other jobs hits one sweep, not one runtime. Missing peers are left out.

Usage::

    python benchmarks/run_peers.py [--net resnet56] [--seconds 2] [--repeats 2] [--json out.json]

Prints markdown: images/s from the median call (x torch eager dense at the same batch and
threads) and, second table, from the fastest call (what the runtime does when the machine
leaves it alone), plus ``uptime`` before and after.
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peers  # noqa: E402

CASES = [("torch", 0.0), ("onnxruntime", 0.0), ("onnxruntime", 0.9), ("onnxruntime", 0.95),
         ("deepsparse", 0.0), ("deepsparse", 0.9), ("deepsparse", 0.95)]
CONFIGS = [(1, 2), (64, 2), (1, 1)]  # (batch, threads)


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "?"


def run(net: str, seconds: float, repeats: int, cases=CASES, configs=CONFIGS) -> dict:
    """Measure every available (case, config) ``repeats`` times; returns the raw results."""
    avail = {"torch": True, "onnxruntime": peers.onnxruntime_available(),
             "deepsparse": peers.deepsparse_python() is not None}
    cases = [c for c in cases if avail[c[0]]]
    _, origin = peers.build_model(net)
    results: dict[str, dict] = {}
    for rep in range(repeats):
        for batch, threads in configs:
            for runtime, sparsity in cases:
                model = peers.pruned_model(net, sparsity)
                if runtime == "torch":
                    r = peers.time_torch(model, batch, threads, seconds)
                elif runtime == "onnxruntime":
                    r = peers.time_onnxruntime(model, batch, threads, seconds)
                else:
                    r = peers.run_deepsparse(model, batch, threads, seconds)
                key = f"{runtime}|{sparsity}|{batch}|{threads}"
                prev = results.get(key)
                r = {**r, "sparsity": sparsity, "best_call_images_per_s": batch / r["min_s"]}
                if prev is None:
                    results[key] = r
                else:  # keep the best sweep for each statistic
                    results[key] = max(prev, r, key=lambda d: d["images_per_s"])
                    results[key]["best_call_images_per_s"] = max(prev["best_call_images_per_s"],
                                                                 r["best_call_images_per_s"])
                print(f"[{rep + 1}/{repeats}] {runtime:11s} s={sparsity:.2f} b={batch:2d} t={threads}: "
                      f"{r['images_per_s']:9.1f} img/s (median of {r['rounds']})", file=sys.stderr)
    return {"net": net, "weights": origin, "seconds": seconds, "repeats": repeats,
            "conv_sparsity": {str(s): peers.conv_sparsity(peers.pruned_model(net, s))
                              for s in sorted({c[1] for c in cases})},
            "available": avail, "results": results}


def table(data: dict, stat: str = "images_per_s") -> str:
    res = data["results"]
    cases = [c for c in CASES if any(k.startswith(f"{c[0]}|{c[1]}|") for k in res)]
    out = ["| batch | threads | " + " | ".join(f"{r} {int(s * 100)} %" for r, s in cases) + " |",
           "|---|---|" + "---|" * len(cases)]
    for batch, threads in CONFIGS:
        get = lambda r, s: res.get(f"{r}|{s}|{batch}|{threads}", {}).get(stat)  # noqa: E731
        base = get("torch", 0.0)
        if base is None and all(get(r, s) is None for r, s in cases):
            continue
        cells = []
        for r, s in cases:
            v = get(r, s)
            cells.append("-" if v is None else f"{v:,.0f}" if (r, s) == ("torch", 0.0) or base is None
                         else f"{v:,.0f} ({v / base:.2f}x)")
        out.append(f"| {batch} | {threads} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--net", default="resnet56", choices=sorted(peers.DEPTHS))
    ap.add_argument("--seconds", type=float, default=2.0, help="timed seconds per case (default 2)")
    ap.add_argument("--repeats", type=int, default=2, help="sweeps, best kept per cell (default 2)")
    ap.add_argument("--json", help="also write the raw results here")
    a = ap.parse_args(argv)
    if a.seconds <= 0 or a.repeats < 1:
        ap.error("--seconds must be > 0 and --repeats >= 1")
    before = _uptime()
    t0 = time.time()
    data = run(a.net, a.seconds, a.repeats)
    data.update(uptime_before=before, uptime_after=_uptime(), wall_s=time.time() - t0,
                machine=platform.processor() or platform.machine(), torch=torch.__version__)
    if a.json:
        Path(a.json).write_text(json.dumps(data, indent=1))
    vers = sorted({f"{r['runtime']} {r['version']}" for r in data["results"].values()})
    print(f"{a.net} ({data['weights']} weights), conv sparsity {data['conv_sparsity']}; "
          f"{', '.join(vers)}; missing: {[k for k, v in data['available'].items() if not v] or 'none'}\n")
    print("images/s, median call (x torch eager dense):\n")
    print(table(data))
    print("\nimages/s, fastest call (x torch eager dense):\n")
    print(table(data, "best_call_images_per_s"))
    print(f"\nuptime before: {before}\nuptime after:  {data['uptime_after']}\nwall: {data['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
