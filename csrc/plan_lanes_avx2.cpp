// AVX2+FMA lanes conv (csrc/plan_lanes.h): a 16-float lane vector as two ymm registers, 6 output
// pixels in registers (12 accumulators). Compiled with -mavx2 -mfma (CMakeLists.txt); picked
// only with the avx2 kernel set, whose per-image kernels it matches bit for bit.
#include "plan_lanes.h"

#if defined(PRUNECAL_HAVE_AVX2_TU)
#include <immintrin.h>

namespace prunecal {
namespace {

struct Vec {
  __m256 lo, hi;
  static Vec zero() { return {_mm256_setzero_ps(), _mm256_setzero_ps()}; }
  static Vec set1(float a) { return {_mm256_set1_ps(a), _mm256_set1_ps(a)}; }
  static Vec load(const float* p) { return {_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)}; }
  void store(float* p) const { _mm256_storeu_ps(p, lo), _mm256_storeu_ps(p + 8, hi); }
  static Vec fma(Vec w, Vec x, Vec a) { return {_mm256_fmadd_ps(w.lo, x.lo, a.lo), _mm256_fmadd_ps(w.hi, x.hi, a.hi)}; }
  static Vec add(Vec a, Vec b) { return {_mm256_add_ps(a.lo, b.lo), _mm256_add_ps(a.hi, b.hi)}; }
  // max(0, v) returns its second operand when either is NaN: NaN stays NaN
  static Vec relu(Vec a) { return {_mm256_max_ps(_mm256_setzero_ps(), a.lo), _mm256_max_ps(_mm256_setzero_ps(), a.hi)}; }
};
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
