// Portable kernels of the sparse training conv (8 lanes of plain C++; see train_kernels_impl.h).
#include <cstdint>

#include "simd_vec.h"
#include "train_conv.h"

namespace prunecal {
namespace {

using Vec = VecN<8>;
constexpr int kGatherTile = 4;
constexpr int kSddRows = 4;

}  // namespace
}  // namespace prunecal

#include "train_kernels_impl.h"

namespace prunecal {
namespace {
void transpose_generic(const float* src, int64_t src_stride, float* dst, int64_t dst_stride, int rows, int cols) {
  for (int r0 = 0; r0 < rows; r0 += 8)
    for (int c = 0; c < cols; ++c)
      for (int r = r0; r < rows && r < r0 + 8; ++r) dst[int64_t(c) * dst_stride + r] = src[int64_t(r) * src_stride + c];
}
}  // namespace

const TrainKernels& train_kernels_generic() {
  static const TrainKernels k{"generic", Vec::L, gather, sdd, transpose_generic};
  return k;
}
}  // namespace prunecal
