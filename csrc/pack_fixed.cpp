// Fixed-shape AVX-512F image packing (see pack_fixed.h). A NaN or Inf v gives v * 0 = NaN, so
// OR-ing v * 0 of every vector into one accumulator and testing it once checks the image.
#include "pack_fixed.h"

#include "plan.h"  // plan_avx512_active

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

namespace prunecal {
namespace {

#define PACK_AVX512 __attribute__((target("avx512f")))

PACK_AVX512 inline void scan(__m512& acc, __m512 v) {
  acc = _mm512_castsi512_ps(
      _mm512_or_epi32(_mm512_castps_si512(acc), _mm512_castps_si512(_mm512_mul_ps(v, _mm512_setzero_ps()))));
}
PACK_AVX512 inline __m256 high_half(__m512 v) {
  return _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
}

// Stride 1, padding 1: row y of channel c goes to (y + 1) * WQ + 1 of its plane (WQ = W + 2).
template <int W>
PACK_AVX512 bool pack_s1(const float* x, int C, int H, int64_t chan, float* buf) {
  constexpr int WQ = W + 2;
  __m512 acc = _mm512_setzero_ps();
  for (int c = 0; c < C; ++c) {
    const float* X = x + int64_t(c) * H * W;
    float* P = buf + c * chan + WQ + 1;
    if constexpr (W == 8) {
      int y = 0;
      for (; y + 2 <= H; y += 2) {  // one zmm = two rows
        const __m512 v = _mm512_loadu_ps(X + y * 8);
        scan(acc, v);
        _mm256_storeu_ps(P + y * WQ, _mm512_castps512_ps256(v));
        _mm256_storeu_ps(P + (y + 1) * WQ, high_half(v));
      }
      if (y < H) {
        const __m512 v = _mm512_maskz_loadu_ps(0xFF, X + y * 8);
        scan(acc, v);
        _mm256_storeu_ps(P + y * WQ, _mm512_castps512_ps256(v));
      }
    } else {
      for (int y = 0; y < H; ++y)
#pragma GCC unroll 2
        for (int i = 0; i < W; i += 16) {
          const __m512 v = _mm512_loadu_ps(X + y * W + i);
          scan(acc, v);
          _mm512_storeu_ps(P + y * WQ + i, v);
        }
    }
  }
  return _mm512_cmp_ps_mask(acc, acc, _CMP_UNORD_Q) != 0;
}

// Stride 2, padding 1 (H, W even): padded row yy + 1 has phase row py = (yy + 1) & 1, index
// i = (yy + 1) >> 1; its even columns x = 2k go to phase (py, 1) at column k, its odd columns to
// phase (py, 0) at column k + 1 (column 0 of that phase is the left padding). So input row 2k
// goes to row k of phases (1, 1) / (1, 0), input row 2k + 1 to row k + 1 of phases (0, 1) / (0, 0).
template <int W>
PACK_AVX512 inline void split_row(const float* r, float* even, float* odd, __m512& acc) {
  if constexpr (W == 32) {
    const __m512i ie = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i io = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    const __m512 a = _mm512_loadu_ps(r), b = _mm512_loadu_ps(r + 16);
    scan(acc, a);
    scan(acc, b);
    _mm512_storeu_ps(even, _mm512_permutex2var_ps(a, ie, b));
    _mm512_storeu_ps(odd, _mm512_permutex2var_ps(a, io, b));
  } else {  // W == 16
    const __m512i split = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
    const __m512 a = _mm512_loadu_ps(r);
    scan(acc, a);
    const __m512 v = _mm512_permutexvar_ps(split, a);
    _mm256_storeu_ps(even, _mm512_castps512_ps256(v));
    _mm256_storeu_ps(odd, high_half(v));
  }
}

template <int W>
PACK_AVX512 bool pack_s2(const float* x, int C, int H, int Hq, int Wq, int64_t chan, float* buf) {
  const int64_t phase = int64_t(Hq) * Wq;
  __m512 acc = _mm512_setzero_ps();
  for (int c = 0; c < C; ++c) {
    const float* r = x + int64_t(c) * H * W;
    float* P = buf + c * chan;
    float *e1 = P + 3 * phase, *o1 = P + 2 * phase + 1;    // phases (1, 1), (1, 0), row 0
    float *e0 = P + phase + Wq, *o0 = P + Wq + 1;          // phases (0, 1), (0, 0), row 1
    for (int k = 0; k < H / 2; ++k, r += 2 * W, e1 += Wq, o1 += Wq, e0 += Wq, o0 += Wq) {
      split_row<W>(r, e1, o1, acc);
      split_row<W>(r + W, e0, o0, acc);
    }
  }
  return _mm512_cmp_ps_mask(acc, acc, _CMP_UNORD_Q) != 0;
}

}  // namespace

int pack_planes_fixed(const float* x, int C, int H, int W, const Geometry& g, float* buf) {
  if (!plan_avx512_active() || g.pad != 1 || g.dil != 1 || H < 1) return -1;
  if (g.stride == 1 && g.Wq == W + 2) {
    switch (W) {
      case 8: return pack_s1<8>(x, C, H, g.chan_floats, buf);
      case 16: return pack_s1<16>(x, C, H, g.chan_floats, buf);
      case 32: return pack_s1<32>(x, C, H, g.chan_floats, buf);
      default: return -1;
    }
  }
  if (g.stride == 2 && H % 2 == 0 && g.Wq == W / 2 + 1 && g.Hq == H / 2 + 1) {
    switch (W) {
      case 16: return pack_s2<16>(x, C, H, g.Hq, g.Wq, g.chan_floats, buf);
      case 32: return pack_s2<32>(x, C, H, g.Hq, g.Wq, g.chan_floats, buf);
      default: return -1;
    }
  }
  return -1;
}

}  // namespace prunecal

#else

namespace prunecal {
int pack_planes_fixed(const float*, int, int, int, const Geometry&, float*) { return -1; }
}  // namespace prunecal

#endif
