// AVX-512F kernels of the sparse training conv (16 lanes; see train_kernels_impl.h). Compiled
// with -mavx512f -mfma (CMakeLists.txt); called only when the CPU has AVX-512F and
// PRUNECAL_NO_AVX512 is unset (select_train_kernels).
#include "train_conv.h"

#if defined(PRUNECAL_HAVE_AVX2_TU)
#include <immintrin.h>

#include "simd_vec.h"

#include <cstdint>

namespace prunecal {
namespace {

using Vec = VecZmm;
constexpr int kGatherTile = 8;
constexpr int kSddRows = 12;

}  // namespace
}  // namespace prunecal

#include "train_kernels_impl.h"
#include "train_transpose_avx.h"

namespace prunecal {
const TrainKernels& train_kernels_avx512() {
  static const TrainKernels k{"avx512", Vec::L, gather, sdd, transpose_avx};
  return k;
}
}  // namespace prunecal
#endif  // PRUNECAL_HAVE_AVX2_TU
