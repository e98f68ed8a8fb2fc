// Fixed-shape CSR conv tiles for AArch64 NEON (the AArch64 counterpart of csrc/plan_kernels.cpp;
// compiled only for AArch64 targets, empty elsewhere). Same contract as the AVX2 tiles: output
// rows of exactly SPR full 8-lane slots and input planes of width WQ known at compile time, so
// every slot of a tile sits at a constant displacement from ONE base pointer: per nonzero one
// address add, then per slot two q loads at immediate offsets from it and two FMLA by element
// (weights four at a time in one q register): one load per FMLA and no other per-slot
// instruction. 12-slot tiles use 24 of the 32 q registers for accumulators (GCC: built with
// -fno-schedule-insns, see CMakeLists.txt, or its scheduler spills them). Each tile applies the whole epilogue (bias, residual, ReLU); slots left to the
// general kernel get it from op_epilogue. Used when the NEON kernel set is the active one.
#include "plan.h"

#if defined(PRUNECAL_HAVE_NEON)
#include <arm_neon.h>


namespace prunecal {
namespace {

inline float32x4_t relu4(float32x4_t v) {  // v < 0 ? 0 : v (NaN and -0 pass), as the generic kernels
  return vreinterpretq_f32_u32(vbicq_u32(vreinterpretq_u32_f32(v), vcltzq_f32(v)));
}

template <int NT, int SPR, int WQ, int L>
inline void step(float32x4_t (&lo)[NT], float32x4_t (&hi)[NT], const float* p, float32x4_t w) {
#pragma GCC unroll 16
  for (int i = 0; i < NT; ++i) {
    const float* q = p + (i / SPR) * WQ + (i % SPR) * kLanes;  // constant displacement: LDR q, [p, #imm]
    lo[i] = vfmaq_laneq_f32(lo[i], vld1q_f32(q), w, L);
    hi[i] = vfmaq_laneq_f32(hi[i], vld1q_f32(q + 4), w, L);
  }
}

template <int NT, int SPR, int WQ>
inline void tile(const ConvTask& t, int row, const Slot* sl) {
  float32x4_t lo[NT], hi[NT];
#pragma GCC unroll 16
  for (int i = 0; i < NT; ++i) lo[i] = hi[i] = vdupq_n_f32(0.f);
  const float* base = t.in + sl[0].in_q;
  int32_t j = t.indptr[row];
  const int32_t j1 = t.indptr[row + 1];
  for (; j + 4 <= j1; j += 4) {
    const float32x4_t w = vld1q_f32(t.val + j);
    const int32_t* o = t.off + j;
    step<NT, SPR, WQ, 0>(lo, hi, base + o[0], w);
    step<NT, SPR, WQ, 1>(lo, hi, base + o[1], w);
    step<NT, SPR, WQ, 2>(lo, hi, base + o[2], w);
    step<NT, SPR, WQ, 3>(lo, hi, base + o[3], w);
  }
  for (; j < j1; ++j) step<NT, SPR, WQ, 0>(lo, hi, base + t.off[j], vld1q_dup_f32(t.val + j));
  const float32x4_t b = vdupq_n_f32(t.bias ? t.bias[row] : 0.f);
  float* out = t.out + row * t.out_stride;
  const float* res = t.res ? t.res + row * t.res_stride : nullptr;
  const int32_t* rq = res ? t.res_q + (sl - t.slots) : nullptr;
  const bool relu = res ? t.res_relu : t.relu;
#pragma GCC unroll 16
  for (int i = 0; i < NT; ++i) {
    float32x4_t a = vaddq_f32(lo[i], b), c = vaddq_f32(hi[i], b);
    if (res) {
      a = vaddq_f32(a, vld1q_f32(res + rq[i]));
      c = vaddq_f32(c, vld1q_f32(res + rq[i] + 4));
    }
    if (relu) a = relu4(a), c = relu4(c);
    vst1q_f32(out + sl[i].out_q, a);
    vst1q_f32(out + sl[i].out_q + 4, c);
  }
}

template <int NT, int SPR, int WQ>
void rows(const ConvTask& t, int row0, int row1, int s0, int s1, CsrFn rest) {
  if (t.copy_floats) {  // (the aligned layout exists only with the AVX-512 tiles) no copies here
    rest(t, row0, row1, s0, s1);
    op_epilogue(t, row0, row1, s0, s1);
    return;
  }
  // rows in blocks of about kBlockNnz nonzeros (weights stay in L1 across the slot tiles)
  while (row0 < row1) {
    int r = row0 + 1;
    while (r < row1 && t.indptr[r + 1] - t.indptr[row0] <= kBlockNnz) ++r;
    int s = s0;
    for (; s + NT <= s1; s += NT)
      for (int q = row0; q < r; ++q) tile<NT, SPR, WQ>(t, q, t.slots + s);
    if (s < s1) {
      rest(t, row0, r, s, s1);
      op_epilogue(t, row0, r, s, s1);
    }
    row0 = r;
  }
}

}  // namespace

bool plan_avx512_active() { return false; }

bool plan_fast_kernels(const KernelSet& k) { return k.isa == Isa::Neon; }

// The shape ids of plan_kernels.cpp (same numbering; 6 and 7 arise only with the aligned layout,
// which needs the AVX-512 tiles, and are left to the general kernel here).
int plan_fast_shape(int Wo, int Wq, int stride, int dil) {
  if (stride == 1 && Wo == 32 && Wq == 34) return 1;  // CIFAR stage 1 (pad 1)
  if (stride == 1 && Wo == 16 && Wq == 18) return 2;  // stage 2
  if (stride == 1 && Wo == 8 && Wq == 10) return 3;   // stage 3
  if (stride == 2 && Wo == 16 && Wq == 17) return 4;  // 32x32 -> 16x16 (phase planes 17 wide)
  if (stride == 2 && Wo == 8 && Wq == 9) return 5;    // 16x16 -> 8x8
  return 0;
}

void plan_csr_fast(int shape, const ConvTask& t, int row0, int row1, int s0, int s1, CsrFn rest) {
  switch (shape) {  // 12 slots: 24 accumulators; 8 slots (8-wide outputs): one slot per row
    case 1: rows<12, 4, 34>(t, row0, row1, s0, s1, rest); break;
    case 2: rows<12, 2, 18>(t, row0, row1, s0, s1, rest); break;
    case 3: rows<8, 1, 10>(t, row0, row1, s0, s1, rest); break;
    case 4: rows<12, 2, 17>(t, row0, row1, s0, s1, rest); break;
    case 5: rows<8, 1, 9>(t, row0, row1, s0, s1, rest); break;
    default:
      rest(t, row0, row1, s0, s1);
      op_epilogue(t, row0, row1, s0, s1);
  }
}

}  // namespace prunecal

#endif  // PRUNECAL_HAVE_NEON
