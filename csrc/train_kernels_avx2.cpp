// AVX2 + FMA kernels of the sparse training conv (8 lanes; see train_kernels_impl.h). Compiled
// with -mavx2 -mfma (CMakeLists.txt); called only after cpu_has_avx2_fma() said yes.
#include "train_conv.h"

#if defined(PRUNECAL_HAVE_AVX2_TU)
#include <immintrin.h>

#include "simd_vec.h"

#include <cstdint>

namespace prunecal {
namespace {

using Vec = VecYmm;
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
