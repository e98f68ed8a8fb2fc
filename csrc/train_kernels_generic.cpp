// Portable kernels of the sparse training conv (8 lanes of plain C++; see train_kernels_impl.h).
#include <cstdint>

#include "train_conv.h"

namespace prunecal {
namespace {

struct Vec {
  static constexpr int L = 8;
  float v[L];
  static Vec zero() {
    Vec r;
    for (int l = 0; l < L; ++l) r.v[l] = 0.f;
    return r;
  }
  static Vec set1(float a) {
    Vec r;
    for (int l = 0; l < L; ++l) r.v[l] = a;
    return r;
  }
  static Vec load(const float* p) {
    Vec r;
    for (int l = 0; l < L; ++l) r.v[l] = p[l];
    return r;
  }
  void store(float* p) const {
    for (int l = 0; l < L; ++l) p[l] = v[l];
  }
  static Vec fma(const Vec& a, const Vec& b, const Vec& c) {
    Vec r;
    for (int l = 0; l < L; ++l) r.v[l] = a.v[l] * b.v[l] + c.v[l];
    return r;
  }
};
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
