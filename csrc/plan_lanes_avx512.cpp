// AVX-512F lanes conv (csrc/plan_lanes.h): one zmm per lane vector, 8 output pixels in registers.
// Compiled with -mavx512f -mfma (CMakeLists.txt); picked only when isa_config() chose avx512.
#include "plan_lanes.h"

#if defined(PRUNECAL_HAVE_AVX2_TU)
#include <immintrin.h>

#include "simd_vec.h"
// (GCC 12's _mm512_max_ps starts from _mm512_undefined_ps: a false -Wmaybe-uninitialized)
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace prunecal {
namespace {

using Vec = VecZmm;
constexpr int kTile = 8;

}  // namespace
}  // namespace prunecal

#include "plan_lanes_impl.h"

namespace prunecal {
const LaneKernels& lane_kernels_avx512() {
  static const LaneKernels k{"avx512", lane_conv};
  return k;
}
}  // namespace prunecal
#endif  // PRUNECAL_HAVE_AVX2_TU
