#!/usr/bin/env bash
# Run a command as if this AVX-512 CPU were an AVX2-only one (AVX2 + FMA, the common laptop /
# cloud case), for every runtime a benchmark compares:
#   prunecal    PRUNECAL_ISA=avx2           (the AVX2 kernel set and generated kernels)
#   torch       ATEN_CPU_CAPABILITY=avx2    (ATen's vectorised kernels)
#               ONEDNN_MAX_CPU_ISA=AVX2     (oneDNN's convolutions)
#               MKL_ENABLE_INSTRUCTIONS=AVX2 (MKL's BLAS: the linear layers)
#   DeepSparse  PRUNECAL_DEEPSPARSE_ISA=avx2 (benchmarks/deepsparse_runner.py --isa avx2: the engine
#               is given its own CPU topology with isa=avx2, and JIT-compiles AVX2 code)
# Caches and clocks stay this CPU's, so the figures estimate, not reproduce, an AVX2-only machine.
#
# Usage: scripts/as_avx2_machine.sh python benchmarks/bench_plan.py --compare --net resnet56
set -euo pipefail
if [ "$#" -eq 0 ]; then
  echo "usage: $0 COMMAND [ARGS...]" >&2
  exit 2
fi
export PRUNECAL_ISA=avx2 ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 \
  PRUNECAL_DEEPSPARSE_ISA=avx2
exec "$@"
