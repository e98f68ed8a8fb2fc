// AArch64 Advanced SIMD (NEON) kernels: the CSR / BSR conv kernels (and through them the sparse
// linear's batched path) with 128-bit FMLA. Compiled only for AArch64 targets (empty elsewhere);
// NEON with FMA is part of the AArch64 baseline, so no compiler flag and no run-time check.
//
// A slot (8 output lanes, common.h) is two q registers. Per nonzero a tile of NT slots does one
// offset load, NT LD1 of two q registers (at base + offset) and 2 NT FMLA; weights come four at a
// time in one q register and feed FMLA by element (vfmaq_laneq_f32), so a weight costs a quarter
// of a load and no broadcast. BSR blocks of 4 rows: the block's 4 weights are one q register.
// See docs/performance.md, "ARM (AArch64 NEON)" for the instruction counts.
//
// Arithmetic per output: 0, one FMA per nonzero in CSR order, + bias, ReLU as v < 0 ? 0 : v
// (NaN stays NaN and -0 stays -0, as in the generic kernels).
#include "common.h"

#if defined(PRUNECAL_HAVE_NEON)
#include <arm_neon.h>

#include <cstring>

namespace prunecal {
namespace {

inline float32x4_t relu4(float32x4_t v) {
  // zero the lanes where v < 0 (FMAX would turn -0 into +0)
  return vreinterpretq_f32_u32(vbicq_u32(vreinterpretq_u32_f32(v), vcltzq_f32(v)));
}

inline float32x4_t finish(float32x4_t v, float32x4_t b, bool relu) {
  v = vaddq_f32(v, b);
  return relu ? relu4(v) : v;
}

// Stores the n valid lanes (1..8) of a slot (no masked store in NEON: whole q, d and s parts).
inline void store(float* p, float32x4_t lo, float32x4_t hi, int n) {
  if (n == kLanes) {
    vst1q_f32(p, lo);
    vst1q_f32(p + 4, hi);
    return;
  }
  if (n >= 4) {
    vst1q_f32(p, lo);
    p += 4, n -= 4, lo = hi;
  }
  if (n & 2) {
    vst1_f32(p, vget_low_f32(lo));
    p += 2, lo = vextq_f32(lo, lo, 2);
  }
  if (n & 1) vst1q_lane_f32(p, lo, 0);
}

// One nonzero (weight = lane L of w, input offset o) into NT slot accumulators.
template <int NT, int L>
inline void csr_step(float32x4_t (&lo)[NT], float32x4_t (&hi)[NT], const float* const* base, int32_t o, float32x4_t w) {
#pragma GCC unroll 16
  for (int i = 0; i < NT; ++i) {
    const float32x4x2_t x = vld1q_f32_x2(base[i] + o);  // one LD1 of two q registers
    lo[i] = vfmaq_laneq_f32(lo[i], x.val[0], w, L);
    hi[i] = vfmaq_laneq_f32(hi[i], x.val[1], w, L);
  }
}

template <int NT>
inline void csr_tile(const ConvTask& t, int row, const Slot* sl) {
  float32x4_t lo[NT], hi[NT];
  const float* base[NT];
#pragma GCC unroll 16
  for (int i = 0; i < NT; ++i) {
    lo[i] = hi[i] = vdupq_n_f32(0.f);
    base[i] = t.in + sl[i].in_q;
  }
  int32_t j = t.indptr[row];
  const int32_t j1 = t.indptr[row + 1];
  for (; j + 4 <= j1; j += 4) {  // four nonzeros: their weights in one q register
    const float32x4_t w = vld1q_f32(t.val + j);
    const int32_t* o = t.off + j;
    csr_step<NT, 0>(lo, hi, base, o[0], w);
    csr_step<NT, 1>(lo, hi, base, o[1], w);
    csr_step<NT, 2>(lo, hi, base, o[2], w);
    csr_step<NT, 3>(lo, hi, base, o[3], w);
  }
  for (; j < j1; ++j) csr_step<NT, 0>(lo, hi, base, t.off[j], vld1q_dup_f32(t.val + j));
  const float32x4_t b = vdupq_n_f32(t.bias ? t.bias[row] : 0.f);
  float* out = t.out + row * t.out_stride;
#pragma GCC unroll 16
  for (int i = 0; i < NT; ++i)
    store(out + sl[i].out_q, finish(lo[i], b, t.relu), finish(hi[i], b, t.relu), sl[i].n);
}

void csr_block(const ConvTask& t, int row0, int row1, int s0, int s1) {
  int s = s0;
  for (; s + 8 <= s1; s += 8)  // 16 accumulators of the 32 q registers
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

// R output channels x V slots: every input vector load is shared by R weights; the R weights
// of a block are R / 4 q registers, each weight an FMLA by element.
template <int R, int V>
inline void bsr_tile(const ConvTask& t, int brow, const Slot* sl) {
  static_assert(R % 4 == 0, "block rows come in q registers of 4");
  float32x4_t lo[R][V], hi[R][V];
  const float* base[V];
#pragma GCC unroll 8
  for (int v = 0; v < V; ++v) {
    base[v] = t.in + sl[v].in_q;
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) lo[i][v] = hi[i][v] = vdupq_n_f32(0.f);
  }
  const int32_t j1 = t.indptr[brow + 1];
  for (int32_t j = t.indptr[brow]; j < j1; ++j) {
    const int32_t o = t.off[j];
    const float* wp = t.val + static_cast<int64_t>(j) * R;
    float32x4_t xl[V], xh[V];
#pragma GCC unroll 8
    for (int v = 0; v < V; ++v) {
      const float32x4x2_t x = vld1q_f32_x2(base[v] + o);
      xl[v] = x.val[0];
      xh[v] = x.val[1];
    }
#pragma GCC unroll 2
    for (int q = 0; q < R / 4; ++q) {
      const float32x4_t w = vld1q_f32(wp + 4 * q);
#pragma GCC unroll 8
      for (int v = 0; v < V; ++v) {
        lo[4 * q + 0][v] = vfmaq_laneq_f32(lo[4 * q + 0][v], xl[v], w, 0);
        hi[4 * q + 0][v] = vfmaq_laneq_f32(hi[4 * q + 0][v], xh[v], w, 0);
        lo[4 * q + 1][v] = vfmaq_laneq_f32(lo[4 * q + 1][v], xl[v], w, 1);
        hi[4 * q + 1][v] = vfmaq_laneq_f32(hi[4 * q + 1][v], xh[v], w, 1);
        lo[4 * q + 2][v] = vfmaq_laneq_f32(lo[4 * q + 2][v], xl[v], w, 2);
        hi[4 * q + 2][v] = vfmaq_laneq_f32(hi[4 * q + 2][v], xh[v], w, 2);
        lo[4 * q + 3][v] = vfmaq_laneq_f32(lo[4 * q + 3][v], xl[v], w, 3);
        hi[4 * q + 3][v] = vfmaq_laneq_f32(hi[4 * q + 3][v], xh[v], w, 3);
      }
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < R; ++i) {
    const int row = brow * R + i;
    if (row >= t.valid_rows) break;
    const float32x4_t b = vdupq_n_f32(t.bias ? t.bias[row] : 0.f);
    float* out = t.out + row * t.out_stride;
#pragma GCC unroll 8
    for (int v = 0; v < V; ++v)
      store(out + sl[v].out_q, finish(lo[i][v], b, t.relu), finish(hi[i][v], b, t.relu), sl[v].n);
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
    // 4 rows x 3 slots: 24 accumulators + 6 inputs + 1 weight register; 8 rows x 1 slot: 16 + 2 + 2
    if (r == 4) bsr_rows_t<4, 3>(t, brow0, b, s0, s1);
    else bsr_rows_t<8, 1>(t, brow0, b, s0, s1);
    brow0 = b;
  }
}

bool nonfinite(const float* x, int64_t n) {
  const uint32x4_t e = vdupq_n_u32(0x7f800000u);
  uint32x4_t m = vdupq_n_u32(0);
  int64_t i = 0;
  for (; i + 4 <= n; i += 4)
    m = vorrq_u32(m, vceqq_u32(vandq_u32(vreinterpretq_u32_f32(vld1q_f32(x + i)), e), e));
  bool bad = vmaxvq_u32(m) != 0;
  for (; i < n; ++i) {
    uint32_t u;
    std::memcpy(&u, x + i, 4);
    bad |= (u & 0x7f800000u) == 0x7f800000u;
  }
  return bad;
}

}  // namespace

const KernelSet& neon_kernels() {
  static const KernelSet k{"neon", Isa::Neon, csr_rows, bsr_rows, nonfinite};
  return k;
}

}  // namespace prunecal
#endif  // PRUNECAL_HAVE_NEON
