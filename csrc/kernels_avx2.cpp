// AVX2 + FMA kernels. This file alone is compiled with -mavx2 -mfma (see CMakeLists.txt);
// it is only called after cpu_has_avx2_fma() said yes, so the module loads on any x86-64.
#include "common.h"

#if defined(PRUNECAL_HAVE_AVX2_TU)
#include <immintrin.h>

#include <cstring>

namespace prunecal {
namespace {

inline __m256i lane_mask(int n) {
  alignas(32) static const int32_t m[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(m + 8 - n));
}

inline void store(float* p, __m256 v, int n) {
  if (n == kLanes) _mm256_storeu_ps(p, v);
  else _mm256_maskstore_ps(p, lane_mask(n), v);
}

inline __m256 finish(__m256 v, __m256 b, bool relu) {
  v = _mm256_add_ps(v, b);
  // max(0, v) returns its second operand when either is NaN: NaN stays NaN, like torch.relu
  return relu ? _mm256_max_ps(_mm256_setzero_ps(), v) : v;
}

template <int NT>
inline void csr_tile(const ConvTask& t, int row, const Slot* sl) {
  __m256 acc[NT];
  const float* base[NT];
#pragma GCC unroll 8
  for (int i = 0; i < NT; ++i) {
    acc[i] = _mm256_setzero_ps();
    base[i] = t.in + sl[i].in_q;
  }
  const int32_t j1 = t.indptr[row + 1];
  for (int32_t j = t.indptr[row]; j < j1; ++j) {
    const __m256 w = _mm256_broadcast_ss(t.val + j);
    const int32_t o = t.off[j];
#pragma GCC unroll 8
    for (int i = 0; i < NT; ++i) acc[i] = _mm256_fmadd_ps(w, _mm256_loadu_ps(base[i] + o), acc[i]);
  }
  const __m256 b = _mm256_set1_ps(t.bias ? t.bias[row] : 0.f);
  float* out = t.out + row * t.out_stride;
#pragma GCC unroll 8
  for (int i = 0; i < NT; ++i) store(out + sl[i].out_q, finish(acc[i], b, t.relu), sl[i].n);
}

void csr_block(const ConvTask& t, int row0, int row1, int s0, int s1) {
  int s = s0;
  for (; s + 8 <= s1; s += 8)
    for (int r = row0; r < row1; ++r) csr_tile<8>(t, r, t.slots + s);
  if (s + 4 <= s1) {
    for (int r = row0; r < row1; ++r) csr_tile<4>(t, r, t.slots + s);
    s += 4;
  }
  for (; s < s1; ++s)
    for (int r = row0; r < row1; ++r) csr_tile<1>(t, r, t.slots + s);
}

// Rows in blocks of about kBlockNnz nonzeros, so that a block's weights stay in L1 while
// every slot tile of the image streams past them.
void csr_rows(const ConvTask& t, int row0, int row1, int s0, int s1) {
  while (row0 < row1) {
    int r = row0 + 1;
    while (r < row1 && t.indptr[r + 1] - t.indptr[row0] <= kBlockNnz) ++r;
    csr_block(t, row0, r, s0, s1);
    row0 = r;
  }
}

// R output channels x V slots: every input vector load is shared by R weights.
template <int R, int V>
inline void bsr_tile(const ConvTask& t, int brow, const Slot* sl) {
  __m256 acc[R][V];
  const float* base[V];
#pragma GCC unroll 8
  for (int v = 0; v < V; ++v) {
    base[v] = t.in + sl[v].in_q;
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) acc[i][v] = _mm256_setzero_ps();
  }
  const int32_t j1 = t.indptr[brow + 1];
  for (int32_t j = t.indptr[brow]; j < j1; ++j) {
    const int32_t o = t.off[j];
    const float* w = t.val + static_cast<int64_t>(j) * R;
    __m256 x[V];
#pragma GCC unroll 8
    for (int v = 0; v < V; ++v) x[v] = _mm256_loadu_ps(base[v] + o);
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) {
      const __m256 wi = _mm256_broadcast_ss(w + i);
#pragma GCC unroll 8
      for (int v = 0; v < V; ++v) acc[i][v] = _mm256_fmadd_ps(wi, x[v], acc[i][v]);
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < R; ++i) {
    const int row = brow * R + i;
    if (row >= t.valid_rows) break;
    const __m256 b = _mm256_set1_ps(t.bias ? t.bias[row] : 0.f);
    float* out = t.out + row * t.out_stride;
#pragma GCC unroll 8
    for (int v = 0; v < V; ++v) store(out + sl[v].out_q, finish(acc[i][v], b, t.relu), sl[v].n);
  }
}

template <int R, int V>
void bsr_rows_t(const ConvTask& t, int brow0, int brow1, int s0, int s1) {
  int s = s0;
  for (; s + V <= s1; s += V)
    for (int br = brow0; br < brow1; ++br) bsr_tile<R, V>(t, br, t.slots + s);
  for (; s < s1; ++s)
    for (int br = brow0; br < brow1; ++br) bsr_tile<R, 1>(t, br, t.slots + s);
}

void bsr_rows(const ConvTask& t, int r, int brow0, int brow1, int s0, int s1) {
  const int32_t limit = kBlockNnz / r;
  while (brow0 < brow1) {
    int b = brow0 + 1;
    while (b < brow1 && t.indptr[b + 1] - t.indptr[brow0] <= limit) ++b;
    if (r == 4) bsr_rows_t<4, 3>(t, brow0, b, s0, s1);
    else bsr_rows_t<8, 1>(t, brow0, b, s0, s1);
    brow0 = b;
  }
}

bool nonfinite(const float* x, int64_t n) {
  const __m256i e = _mm256_set1_epi32(0x7f800000);
  __m256i m = _mm256_setzero_si256();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256i u = _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i)), e);
    m = _mm256_or_si256(m, _mm256_cmpeq_epi32(u, e));
  }
  bool bad = !_mm256_testz_si256(m, m);
  for (; i < n; ++i) {
    uint32_t u;
    std::memcpy(&u, x + i, 4);
    bad |= (u & 0x7f800000u) == 0x7f800000u;
  }
  return bad;
}

}  // namespace

const KernelSet& avx2_kernels() {
  static const KernelSet k{"avx2", Isa::Avx2, csr_rows, bsr_rows, nonfinite};
  return k;
}

}  // namespace prunecal
#endif  // PRUNECAL_HAVE_AVX2_TU
