// Plan-specific AVX2 CSR conv kernel for the common CIFAR shapes: output rows of exactly
// SPR full 8-lane slots and input planes of width WQ known at compile time, so every slot of a
// tile is at a constant displacement from ONE base pointer. That frees the general kernel's
// per-slot base registers and allows 12-slot tiles (12 accumulators: more FMAs per weight
// broadcast and per offset load, and more independent FMA chains).
// Compiled for AVX2+FMA with a function attribute; called only when the AVX2 kernel set is the
// active one (so the module still loads and runs on CPUs without AVX2).
#include "plan.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

#define PLAN_AVX2 __attribute__((target("avx2,fma")))

namespace prunecal {
namespace {

template <int NT, int SPR, int WQ>
PLAN_AVX2 inline void tile(const ConvTask& t, int row, const Slot* sl) {
  __m256 acc[NT];
#pragma GCC unroll 16
  for (int i = 0; i < NT; ++i) acc[i] = _mm256_setzero_ps();
  const float* base = t.in + sl[0].in_q;
  const int32_t j1 = t.indptr[row + 1];
  for (int32_t j = t.indptr[row]; j < j1; ++j) {
    const __m256 w = _mm256_broadcast_ss(t.val + j);
    const float* p = base + t.off[j];
#pragma GCC unroll 16
    for (int i = 0; i < NT; ++i)
      acc[i] = _mm256_fmadd_ps(w, _mm256_loadu_ps(p + (i / SPR) * WQ + (i % SPR) * kLanes), acc[i]);
  }
  const __m256 b = _mm256_set1_ps(t.bias ? t.bias[row] : 0.f);
  float* out = t.out + row * t.out_stride;
  if (t.relu) {
#pragma GCC unroll 16
    for (int i = 0; i < NT; ++i)  // max(0, v) returns v when v is NaN, like torch.relu
      _mm256_storeu_ps(out + sl[i].out_q, _mm256_max_ps(_mm256_setzero_ps(), _mm256_add_ps(acc[i], b)));
  } else {
#pragma GCC unroll 16
    for (int i = 0; i < NT; ++i) _mm256_storeu_ps(out + sl[i].out_q, _mm256_add_ps(acc[i], b));
  }
}

template <int NT, int SPR, int WQ>
PLAN_AVX2 void rows(const ConvTask& t, int row0, int row1, int s0, int s1, CsrFn rest) {
  // rows in blocks of about kBlockNnz nonzeros (weights stay in L1 across the slot tiles)
  while (row0 < row1) {
    int r = row0 + 1;
    while (r < row1 && t.indptr[r + 1] - t.indptr[row0] <= kBlockNnz) ++r;
    int s = s0;
    for (; s + NT <= s1; s += NT)
      for (int q = row0; q < r; ++q) tile<NT, SPR, WQ>(t, q, t.slots + s);
    if (s < s1) rest(t, row0, r, s, s1);
    row0 = r;
  }
}

}  // namespace

int plan_fast_shape(int Wo, int Wq, int stride, int dil) {
  if (stride == 1 && Wo == 32 && Wq == 34) return 1;  // CIFAR stage 1 (pad 1)
  if (stride == 1 && Wo == 16 && Wq == 18) return 2;  // stage 2
  if (stride == 1 && Wo == 8 && Wq == 10) return 3;   // stage 3
  if (stride == 2 && Wo == 16 && Wq == 17) return 4;  // 32x32 -> 16x16 (phase planes 17 wide)
  if (stride == 2 && Wo == 8 && Wq == 9) return 5;    // 16x16 -> 8x8
  return 0;
}

void plan_csr_fast(int shape, const ConvTask& t, int row0, int row1, int s0, int s1, CsrFn rest) {
  switch (shape) {
    case 1: rows<12, 4, 34>(t, row0, row1, s0, s1, rest); break;
    case 2: rows<12, 2, 18>(t, row0, row1, s0, s1, rest); break;
    case 3: rows<8, 1, 10>(t, row0, row1, s0, s1, rest); break;
    case 4: rows<12, 2, 17>(t, row0, row1, s0, s1, rest); break;
    case 5: rows<8, 1, 9>(t, row0, row1, s0, s1, rest); break;
    default: rest(t, row0, row1, s0, s1);
  }
}

}  // namespace prunecal

#else  // no AVX2 path on this compiler / architecture

namespace prunecal {
int plan_fast_shape(int, int, int, int) { return 0; }
void plan_csr_fast(int, const ConvTask& t, int row0, int row1, int s0, int s1, CsrFn rest) {
  rest(t, row0, row1, s0, s1);
}
}  // namespace prunecal

#endif
