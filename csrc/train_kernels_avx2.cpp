// AVX2 + FMA kernels of the sparse training conv (8 lanes; see train_kernels_impl.h). Compiled
// with -mavx2 -mfma (CMakeLists.txt); called only after cpu_has_avx2_fma() said yes.
#include "train_conv.h"

#if defined(PRUNECAL_HAVE_AVX2_TU)
#include <immintrin.h>

#include <cstdint>

namespace prunecal {
namespace {

struct Vec {
  static constexpr int L = 8;
  __m256 v;
  static Vec zero() { return {_mm256_setzero_ps()}; }
  static Vec set1(float a) { return {_mm256_set1_ps(a)}; }
  static Vec load(const float* p) { return {_mm256_loadu_ps(p)}; }
  void store(float* p) const { _mm256_storeu_ps(p, v); }
  static Vec fma(Vec a, Vec b, Vec c) { return {_mm256_fmadd_ps(a.v, b.v, c.v)}; }
};
constexpr int kGatherTile = 8;
constexpr int kSddRows = 8;

}  // namespace
}  // namespace prunecal

#include "train_kernels_impl.h"
#include "train_transpose_avx.h"

namespace prunecal {
const TrainKernels& train_kernels_avx2() {
  static const TrainKernels k{"avx2", Vec::L, gather, sdd, transpose_avx};
  return k;
}
}  // namespace prunecal
#endif  // PRUNECAL_HAVE_AVX2_TU
