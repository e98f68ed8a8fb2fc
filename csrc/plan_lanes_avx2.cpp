// AVX2+FMA lanes conv (csrc/plan_lanes.h): a 16-float lane vector as two ymm registers, 6 output
// pixels in registers (12 accumulators). Compiled with -mavx2 -mfma (CMakeLists.txt); picked
// only with the avx2 kernel set, whose per-image kernels it matches bit for bit.
#include "plan_lanes.h"

#if defined(PRUNECAL_HAVE_AVX2_TU)
#include <immintrin.h>

#include "simd_vec.h"

namespace prunecal {
namespace {

using Vec = VecYmm2;
constexpr int kTile = 6;

}  // namespace
}  // namespace prunecal

#include "plan_lanes_impl.h"

namespace prunecal {
const LaneKernels& lane_kernels_avx2() {
  static const LaneKernels k{"avx2", lane_conv};
  return k;
}
}  // namespace prunecal
#endif  // PRUNECAL_HAVE_AVX2_TU
