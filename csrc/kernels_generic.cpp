// Portable kernels (plain C++; the compiler vectorises the 8-lane loops with the baseline ISA).
#include <cstring>

#include "common.h"

namespace prunecal {
namespace {

inline float finish(float v, float b, bool relu) {
  v += b;
  return (relu && v < 0.f) ? 0.f : v;  // NaN stays NaN, like torch.relu
}

template <int NT>
inline void csr_tile(const ConvTask& t, int row, const Slot* sl) {
  float acc[NT][kLanes] = {};
  const float* base[NT];
  for (int i = 0; i < NT; ++i) base[i] = t.in + sl[i].in_q;
  for (int32_t j = t.indptr[row]; j < t.indptr[row + 1]; ++j) {
    const float w = t.val[j];
    const int32_t o = t.off[j];
    for (int i = 0; i < NT; ++i)
      for (int l = 0; l < kLanes; ++l) acc[i][l] += w * base[i][o + l];
  }
  const float b = t.bias ? t.bias[row] : 0.f;
  float* out = t.out + row * t.out_stride;
  for (int i = 0; i < NT; ++i)
    for (int l = 0; l < sl[i].n; ++l) out[sl[i].out_q + l] = finish(acc[i][l], b, t.relu);
}

void csr_rows(const ConvTask& t, int row0, int row1, int s0, int s1) {
  int s = s0;
  for (; s + 4 <= s1; s += 4)
    for (int r = row0; r < row1; ++r) csr_tile<4>(t, r, t.slots + s);
  for (; s < s1; ++s)
    for (int r = row0; r < row1; ++r) csr_tile<1>(t, r, t.slots + s);
}

template <int R>
inline void bsr_tile(const ConvTask& t, int brow, const Slot* sl) {
  float acc[R][kLanes] = {};
  const float* base = t.in + sl->in_q;
  for (int32_t j = t.indptr[brow]; j < t.indptr[brow + 1]; ++j) {
    const float* x = base + t.off[j];
    const float* w = t.val + static_cast<int64_t>(j) * R;
    for (int i = 0; i < R; ++i)
      for (int l = 0; l < kLanes; ++l) acc[i][l] += w[i] * x[l];
  }
  for (int i = 0; i < R; ++i) {
    const int row = brow * R + i;
    if (row >= t.valid_rows) break;
    const float b = t.bias ? t.bias[row] : 0.f;
    float* out = t.out + row * t.out_stride + sl->out_q;
    for (int l = 0; l < sl->n; ++l) out[l] = finish(acc[i][l], b, t.relu);
  }
}

void bsr_rows(const ConvTask& t, int r, int brow0, int brow1, int s0, int s1) {
  for (int s = s0; s < s1; ++s)
    for (int br = brow0; br < brow1; ++br) {
      if (r == 4) bsr_tile<4>(t, br, t.slots + s);
      else bsr_tile<8>(t, br, t.slots + s);
    }
}

bool nonfinite(const float* x, int64_t n) {
  uint32_t m = 0;
  for (int64_t i = 0; i < n; ++i) {
    uint32_t u;
    std::memcpy(&u, x + i, 4);
    m |= static_cast<uint32_t>((u & 0x7f800000u) == 0x7f800000u);
  }
  return m != 0;
}

}  // namespace

const KernelSet& generic_kernels() {
  static const KernelSet k{"generic", Isa::Generic, csr_rows, bsr_rows, nonfinite};
  return k;
}

}  // namespace prunecal
