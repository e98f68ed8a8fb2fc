#!/usr/bin/env bash
# Wall time of one small fine-tuned study run three ways on this machine (docs/scale-out.md):
# one local process (1 thread), two local processes sharing one folder (1 thread each), and
# --executor ray with a local 2-CPU Ray (tasks of 1 thread). Usage: scripts/measure_scaleout.sh [DATA]
set -euo pipefail
data="${1:-../shared/data/cifar10/exact_subset.npz}"
tmp="$(mktemp -d)"
args=(--data "$data" --limit 400 --finetune-data "$data" --finetune-limit 600 --finetune-epochs 0,1
      --methods global_magnitude,l1_filter --sparsities 0,0.5,0.9
      --corruptions gaussian_noise,fog,contrast,motion_blur --severities 1-5
      --sparse-backend csr --threads 1 --n-bootstrap 0 --quiet --no-report)
# warm the corruption cache once, so every run below measures the same stages
python3 -m prunecal.eval.cli "${args[@]}" --finetune-epochs 0 --sparsities 0 --out "$tmp/warm" \
  --cache-dir "$tmp/corr" >/dev/null 2>&1
cp -r "$tmp/corr" "$tmp/c1"; cp -r "$tmp/corr" "$tmp/c2"; cp -r "$tmp/corr" "$tmp/c3"
t0=$(date +%s.%N)
python3 -m prunecal.eval.cli "${args[@]}" --out "$tmp/one" --cache-dir "$tmp/c1" 2>/dev/null
t1=$(date +%s.%N)
python3 -m prunecal.eval.cli "${args[@]}" --out "$tmp/two" --cache-dir "$tmp/c2" 2>/dev/null &
python3 -m prunecal.eval.cli "${args[@]}" --out "$tmp/two" --cache-dir "$tmp/c2" 2>/dev/null
wait
t2=$(date +%s.%N)
python3 -m prunecal.eval.cli "${args[@]}" --out "$tmp/ray" --cache-dir "$tmp/c3" --executor ray 2>/dev/null
t3=$(date +%s.%N)
python3 - "$tmp" "$t0" "$t1" "$t2" "$t3" <<'PY'
import sys
from prunecal.eval.store import Store
tmp, t0, t1, t2, t3 = sys.argv[1], *map(float, sys.argv[2:])
n = {k: Store(f"{tmp}/{k}/results.sqlite").count() for k in ("one", "two", "ray")}
one, two, ray = t1 - t0, t2 - t1, t3 - t2
print(f"units: {n}")
print(f"1 process, 1 thread:              {one:7.1f} s")
print(f"2 processes on one folder:        {two:7.1f} s  ({one / two:.2f}x)")
print(f"--executor ray, 2 worker CPUs:    {ray:7.1f} s  ({one / ray:.2f}x, Ray start-up included)")
PY
rm -rf "$tmp"
