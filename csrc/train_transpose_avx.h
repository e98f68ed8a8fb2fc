// 8 x 8 float transposes with AVX (256-bit) shuffles for the sparse training conv's NHWC <-> NCHW
// copies; included by train_kernels_avx2.cpp and train_kernels_avx512.cpp (each compiled with its
// own ISA flags; the function stays internal to each unit).
#pragma once
#include <immintrin.h>

#include <cstdint>

namespace prunecal {
namespace {

// dst[c * dst_stride + r] = src[r * src_stride + c] for r < rows, c < cols.
void transpose_avx(const float* src, int64_t src_stride, float* dst, int64_t dst_stride, int rows, int cols) {
  int r0 = 0;
  for (; r0 + 8 <= rows; r0 += 8) {
    int c0 = 0;
    for (; c0 + 8 <= cols; c0 += 8) {
      const float* s = src + r0 * src_stride + c0;
      __m256 a0 = _mm256_loadu_ps(s), a1 = _mm256_loadu_ps(s + src_stride), a2 = _mm256_loadu_ps(s + 2 * src_stride),
             a3 = _mm256_loadu_ps(s + 3 * src_stride), a4 = _mm256_loadu_ps(s + 4 * src_stride),
             a5 = _mm256_loadu_ps(s + 5 * src_stride), a6 = _mm256_loadu_ps(s + 6 * src_stride),
             a7 = _mm256_loadu_ps(s + 7 * src_stride);
      const __m256 t0 = _mm256_unpacklo_ps(a0, a1), t1 = _mm256_unpackhi_ps(a0, a1), t2 = _mm256_unpacklo_ps(a2, a3),
                   t3 = _mm256_unpackhi_ps(a2, a3), t4 = _mm256_unpacklo_ps(a4, a5), t5 = _mm256_unpackhi_ps(a4, a5),
                   t6 = _mm256_unpacklo_ps(a6, a7), t7 = _mm256_unpackhi_ps(a6, a7);
      const __m256 u0 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0)),
                   u1 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2)),
                   u2 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0)),
                   u3 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2)),
                   u4 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(1, 0, 1, 0)),
                   u5 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(3, 2, 3, 2)),
                   u6 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(1, 0, 1, 0)),
                   u7 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(3, 2, 3, 2));
      float* d = dst + int64_t(c0) * dst_stride + r0;
      _mm256_storeu_ps(d, _mm256_permute2f128_ps(u0, u4, 0x20));
      _mm256_storeu_ps(d + dst_stride, _mm256_permute2f128_ps(u1, u5, 0x20));
      _mm256_storeu_ps(d + 2 * dst_stride, _mm256_permute2f128_ps(u2, u6, 0x20));
      _mm256_storeu_ps(d + 3 * dst_stride, _mm256_permute2f128_ps(u3, u7, 0x20));
      _mm256_storeu_ps(d + 4 * dst_stride, _mm256_permute2f128_ps(u0, u4, 0x31));
      _mm256_storeu_ps(d + 5 * dst_stride, _mm256_permute2f128_ps(u1, u5, 0x31));
      _mm256_storeu_ps(d + 6 * dst_stride, _mm256_permute2f128_ps(u2, u6, 0x31));
      _mm256_storeu_ps(d + 7 * dst_stride, _mm256_permute2f128_ps(u3, u7, 0x31));
    }
    for (int r = r0; r < r0 + 8; ++r)
      for (int c = c0; c < cols; ++c) dst[int64_t(c) * dst_stride + r] = src[int64_t(r) * src_stride + c];
  }
  for (int r = r0; r < rows; ++r)
    for (int c = 0; c < cols; ++c) dst[int64_t(c) * dst_stride + r] = src[int64_t(r) * src_stride + c];
}

}  // namespace
}  // namespace prunecal
