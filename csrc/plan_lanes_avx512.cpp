// AVX-512F lanes conv (csrc/plan_lanes.h): one zmm per lane vector, 8 output pixels in registers.
// Compiled with -mavx512f -mfma (CMakeLists.txt); picked only when isa_config() chose avx512.
#include "plan_lanes.h"

#if defined(PRUNECAL_HAVE_AVX2_TU)
#include <immintrin.h>
// (GCC 12's _mm512_max_ps starts from _mm512_undefined_ps: a false -Wmaybe-uninitialized)
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace prunecal {
namespace {

struct Vec {
  __m512 v;
  static Vec zero() { return {_mm512_setzero_ps()}; }
  static Vec set1(float a) { return {_mm512_set1_ps(a)}; }
  static Vec load(const float* p) { return {_mm512_loadu_ps(p)}; }
  void store(float* p) const { _mm512_storeu_ps(p, v); }
  static Vec fma(Vec w, Vec x, Vec a) { return {_mm512_fmadd_ps(w.v, x.v, a.v)}; }
  static Vec add(Vec a, Vec b) { return {_mm512_add_ps(a.v, b.v)}; }
  // max(0, v) returns its second operand when either is NaN: NaN stays NaN
  static Vec relu(Vec a) { return {_mm512_max_ps(_mm512_setzero_ps(), a.v)}; }
};
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
