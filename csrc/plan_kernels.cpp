// Plan-specific CSR conv kernels for the common CIFAR shapes: output rows of exactly SPR full
// 8-lane slots and input planes of width WQ known at compile time, so every slot of a tile is at
// a constant displacement from ONE base pointer. That frees the general kernel's per-slot base
// registers and allows 12-slot tiles (more FMAs per weight broadcast, more independent FMA
// chains). AVX2+FMA tiles, plus AVX-512F tiles (one zmm = two adjacent slots) picked at run time;
// the AVX-512 tiles also serve the plan's aligned layout (WQ 48 / 32) and write the shifted
// copies of their output from registers. Each tile applies the whole epilogue (bias, residual,
// ReLU, copies); slots left to the general kernel get it from op_epilogue.
// Compiled with function attributes; called only when the AVX2 kernel set is the active one (so
// the module still loads and runs on CPUs without AVX2).
#include "plan.h"

#include <algorithm>
#include <cstdint>
#include <cstdlib>

#ifndef ZM1
#define ZM1 16
#endif
#ifndef ZM2
#define ZM2 8
#endif
#ifndef ZA1
#define ZA1 8
#endif
#ifndef ZA2
#define ZA2 8
#endif

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#include <unistd.h>  // sysconf (the L1 data cache's size)

#define PLAN_AVX2 __attribute__((target("avx2,fma")))

namespace prunecal {
namespace {

// One tile of NT slots for output row `row`, over the row's nonzeros [j, end) with off < lim
// (BANDED; all of them otherwise). A band after the first resumes from the partial sums it left
// in `out`, one before the last leaves them there: the same FMA chain as one pass, so the same
// bits. Returns where it stopped.
template <int NT, int SPR, int WQ, bool BANDED = false>
PLAN_AVX2 inline int32_t tile(const ConvTask& t, int row, const Slot* sl, int32_t j = -1, int64_t lim = 0,
                              bool first = true, bool last = true) {
  __m256 acc[NT];
  float* out = t.out + row * t.out_stride;
  if (first) {
#pragma GCC unroll 16
    for (int i = 0; i < NT; ++i) acc[i] = _mm256_setzero_ps();
  } else {
#pragma GCC unroll 16
    for (int i = 0; i < NT; ++i) acc[i] = _mm256_loadu_ps(out + sl[i].out_q);
  }
  const float* base = t.in + sl[0].in_q;
  const int32_t j1 = t.indptr[row + 1];
  if (!BANDED) j = t.indptr[row];
  for (; j < j1; ++j) {
    const int32_t o = t.off[j];
    if (BANDED && o >= lim) break;
    const __m256 w = _mm256_broadcast_ss(t.val + j);
    const float* p = base + o;
#pragma GCC unroll 16
    for (int i = 0; i < NT; ++i)
      acc[i] = _mm256_fmadd_ps(w, _mm256_loadu_ps(p + (i / SPR) * WQ + (i % SPR) * kLanes), acc[i]);
  }
  if (!last) {
#pragma GCC unroll 16
    for (int i = 0; i < NT; ++i) _mm256_storeu_ps(out + sl[i].out_q, acc[i]);
    return j;
  }
  const __m256 b = _mm256_set1_ps(t.bias ? t.bias[row] : 0.f);
  const float* res = t.res ? t.res + row * t.res_stride : nullptr;
  const int32_t* rq = res ? t.res_q + (sl - t.slots) : nullptr;
  const bool relu = res ? t.res_relu : t.relu;
  // (no shifted copies here: outputs with copies exist only where the AVX-512 tiles run)
#pragma GCC unroll 16
  for (int i = 0; i < NT; ++i) {
    __m256 v = _mm256_add_ps(acc[i], b);
    if (res) v = _mm256_add_ps(v, _mm256_loadu_ps(res + rq[i]));
    if (relu) v = _mm256_max_ps(_mm256_setzero_ps(), v);  // max(0, v) returns v when v is NaN, like torch.relu
    _mm256_storeu_ps(out + sl[i].out_q, v);
  }
  return j;
}

// Input-channel bands for the AVX2 fixed tiles: where one tile's input window (its output rows
// and the kernel's halo, in every phase plane, over all input channels) exceeds L1, the
// channels are taken in bands whose window fits in half of L1, so that every output row
// reads the band from L1. Measured on the AVX2 path (AMD Zen 5, 48 KiB L1, batch 64, one
// thread, `python scripts/conv_chain.py C H DENSITY`; docs/performance.md): 128 x 16x16 5-9 %
// faster, 128-256 x 8x8 0-9 %; 64 x 8x8 (a 25 KiB window) 4-5 % slower, hence the L1 condition.
// The L1 data cache's size is read once (sysconf; 32 KiB where unknown), bands are half of it;
// only the 48 KiB case is measured.
int64_t l1_data_bytes() {
  static const int64_t bytes = [] {
#if defined(_SC_LEVEL1_DCACHE_SIZE)
    const long b = sysconf(_SC_LEVEL1_DCACHE_SIZE);
    if (b >= (16 << 10) && b <= (4 << 20)) return int64_t(b);
#endif
    return int64_t(32) << 10;
  }();
  return bytes;
}

// The bands' width in input floats (channels x the channel pitch) for a tile of `rows_per_tile`
// output rows on planes WQ wide, `phases` planes a channel (4: stride-2 phase planes), and their
// number (1: no banding).
inline int64_t band_floats(const ConvTask& t, int rows_per_tile, int wq, int phases, int* nb) {
  *nb = 1;
  static const int64_t band_bytes = [] {  // PRUNECAL_BAND_KB: a measurement knob (0: off)
    const char* e = std::getenv("PRUNECAL_BAND_KB");
    return e && e[0] ? std::min<int64_t>(std::max<int64_t>(std::atoll(e), 0), 1 << 20) << 10 : l1_data_bytes() / 2;
  }();
  const int64_t cf = t.in_chan_floats, channels = t.in_channels;
  if (cf <= 0 || channels <= 0 || band_bytes <= 0) return 0;
  // the rows a tile reads in each plane of a channel (its rows and the 3x3 halo, at most)
  const int64_t window = std::min<int64_t>(cf, int64_t(rows_per_tile + 2) * wq * phases) * 4;  // bytes a channel
  if (channels * window <= l1_data_bytes()) return 0;
  const int64_t per_band = std::max<int64_t>(1, band_bytes / window);
  *nb = int((channels + per_band - 1) / per_band);
  return per_band * cf;
}

// Rows [row0, row1) on whole NT-slot tiles [s0, s1) (s1 - s0 a multiple of NT), the input
// channels in bands of `band` floats: per tile and band every row, so the band's window is read
// from L1 by all the rows (the weights stream in order, each row's nonzeros band by band).
template <int NT, int SPR, int WQ>
PLAN_AVX2 void banded_rows(const ConvTask& t, int row0, int row1, int s0, int s1, int64_t band, int nb) {
  constexpr int kChunk = 256;
  int32_t cur[kChunk];
  for (int c0 = row0; c0 < row1; c0 += kChunk) {
    const int c1 = std::min(row1, c0 + kChunk);
    for (int s = s0; s + NT <= s1; s += NT) {
      for (int q = c0; q < c1; ++q) cur[q - c0] = t.indptr[q];
      for (int b = 0; b < nb; ++b) {
        const bool last = b == nb - 1;
        const int64_t lim = last ? INT64_MAX : (b + 1) * band;
        for (int q = c0; q < c1; ++q)
          cur[q - c0] = tile<NT, SPR, WQ, true>(t, q, t.slots + s, cur[q - c0], lim, b == 0, last);
      }
    }
  }
}

template <int NT, int SPR, int WQ, int PHASES = 1>
PLAN_AVX2 void rows(const ConvTask& t, int row0, int row1, int s0, int s1, CsrFn rest) {
  if (t.copy_floats) {  // (never with the current layouts) the ymm tiles do not write copies
    rest(t, row0, row1, s0, s1);
    op_epilogue(t, row0, row1, s0, s1);
    return;
  }
  int nb = 1;
  const int64_t band = band_floats(t, NT / SPR, WQ, PHASES, &nb);
  if (nb > 1) {
    const int s_end = s0 + (s1 - s0) / NT * NT;
    banded_rows<NT, SPR, WQ>(t, row0, row1, s0, s_end, band, nb);
    if (s_end == s1) return;
    s0 = s_end;
  }
  // rows in blocks of about kBlockNnz nonzeros (weights stay in L1 across the slot tiles)
  while (row0 < row1) {
    int r = row0 + 1;
    while (r < row1 && t.indptr[r + 1] - t.indptr[row0] <= kBlockNnz) ++r;
    int s = s0;
    for (; s + NT <= s1; s += NT)
      for (int q = row0; q < r; ++q) tile<NT, SPR, WQ>(t, q, t.slots + s);
    // a remainder of whole rows that an 8-slot tile covers (16x16 outputs: 32 slots = 12 + 12 + 8;
    // 32x32: 128 = 10 x 12 + 8, where the generated kernels do not run)
    constexpr int NR = 8 / SPR * SPR;
    if constexpr (NR < NT && NR > 0)
      for (; s + NR <= s1; s += NR)
        for (int q = row0; q < r; ++q) tile<NR, SPR, WQ>(t, q, t.slots + s);
    if (s < s1) {
      rest(t, row0, r, s, s1);
      op_epilogue(t, row0, r, s, s1);
    }
    row0 = r;
  }
}

// AVX-512F variant (runtime-dispatched): one zmm covers the two adjacent 8-lane slots 2z, 2z+1
// of the same output row (SPR even), so NZ zmm accumulators hold 2*NZ slots with one load and
// one FMA per pair (ZM1/ZM2 zmm accumulators per tile, of the 32 registers).
#define PLAN_AVX512 __attribute__((target("avx512f,avx2,fma")))

template <int NZ, int SPR, int WQ>
PLAN_AVX512 inline void tile512(const ConvTask& t, int row, const Slot* sl) {
  static_assert(SPR % 2 == 0, "zmm tiles need an even number of slots per output row");
  __m512 acc[NZ];
#pragma GCC unroll 16
  for (int i = 0; i < NZ; ++i) acc[i] = _mm512_setzero_ps();
  const float* base = t.in + sl[0].in_q;
  const int32_t j1 = t.indptr[row + 1];
  for (int32_t j = t.indptr[row]; j < j1; ++j) {
    const __m512 w = _mm512_set1_ps(t.val[j]);
    const float* p = base + t.off[j];
#pragma GCC unroll 16
    for (int i = 0; i < NZ; ++i)
      acc[i] = _mm512_fmadd_ps(w, _mm512_loadu_ps(p + ((2 * i) / SPR) * WQ + ((2 * i) % SPR) * kLanes), acc[i]);
  }
  const __m512 b = _mm512_set1_ps(t.bias ? t.bias[row] : 0.f);
  float* out = t.out + row * t.out_stride;
  const float* res = t.res ? t.res + row * t.res_stride : nullptr;
  const int32_t* rq = res ? t.res_q + (sl - t.slots) : nullptr;
  const bool relu = res ? t.res_relu : t.relu;
  const int64_t cf = t.copy_floats;
  __m512 v[NZ];
#pragma GCC unroll 16
  for (int i = 0; i < NZ; ++i) {
    v[i] = _mm512_add_ps(acc[i], b);
    if (res) v[i] = _mm512_add_ps(v[i], _mm512_loadu_ps(res + rq[2 * i]));
    if (relu) v[i] = _mm512_max_ps(_mm512_setzero_ps(), v[i]);  // max(0, v) returns v when v is NaN
    _mm512_storeu_ps(out + sl[2 * i].out_q, v[i]);
  }
  if (cf) {
    // shifted copies, built in registers: a tile holds whole output rows of ZPR vectors, and
    // the zero padding lies just outside each row. Copy 0 (at -cf) holds x[q - 1] at q, copy 2
    // (at +cf) holds x[q + 1]; only the slot positions of the copies are ever read.
    constexpr int ZPR = SPR / 2;
    const __m512i z = _mm512_setzero_si512();
#pragma GCC unroll 16
    for (int i = 0; i < NZ; ++i) {
      const __m512i cur = _mm512_castps_si512(v[i]);
      const __m512i prev = i % ZPR ? _mm512_castps_si512(v[i - 1]) : z;
      const __m512i next = i % ZPR != ZPR - 1 ? _mm512_castps_si512(v[i + 1]) : z;
      float* o = out + sl[2 * i].out_q;
      _mm512_storeu_si512(o - cf, _mm512_alignr_epi32(cur, prev, 15));
      _mm512_storeu_si512(o + cf, _mm512_alignr_epi32(next, cur, 1));
    }
  }
}

template <int NZ, int SPR, int WQ>
PLAN_AVX512 void rows512(const ConvTask& t, int row0, int row1, int s0, int s1, CsrFn rest) {
  constexpr int NT = 2 * NZ;  // slots per tile
  while (row0 < row1) {
    int r = row0 + 1;
    while (r < row1 && t.indptr[r + 1] - t.indptr[row0] <= kBlockNnz) ++r;
    int s = s0;
    for (; s + NT <= s1; s += NT)
      for (int q = row0; q < r; ++q) tile512<NZ, SPR, WQ>(t, q, t.slots + s);
    if (s < s1) {
      rest(t, row0, r, s, s1);
      op_epilogue(t, row0, r, s, s1);
    }
    row0 = r;
  }
}

bool has_avx512() { return isa_config().isa == Isa::Avx512; }

}  // namespace

bool plan_avx512_active() { return has_avx512(); }

bool plan_fast_kernels(const KernelSet& k) { return k.x86(); }

int plan_fast_shape(int Wo, int Wq, int stride, int dil) {
  if (stride == 1 && Wo == 32 && Wq == 34) return 1;  // CIFAR stage 1 (pad 1)
  if (stride == 1 && Wo == 16 && Wq == 18) return 2;  // stage 2
  if (stride == 1 && Wo == 8 && Wq == 10) return 3;   // stage 3
  if (stride == 2 && Wo == 16 && Wq == 17) return 4;  // 32x32 -> 16x16 (phase planes 17 wide)
  if (stride == 2 && Wo == 8 && Wq == 9) return 5;    // 16x16 -> 8x8
  // aligned layout (plan.h; only with the AVX-512 tiles): rows of 48 / 32 floats, aligned loads
  if (stride == 1 && Wo == 32 && Wq == 48) return 6;
  if (stride == 1 && Wo == 16 && Wq == 32) return 7;
  return 0;
}

void plan_csr_fast(int shape, const ConvTask& t, int row0, int row1, int s0, int s1, CsrFn rest) {
  if (has_avx512()) {
    switch (shape) {
      case 1: rows512<ZM1, 4, 34>(t, row0, row1, s0, s1, rest); return;
      case 2:
        if ((s1 - s0) % (4 * ZM2) == 0) rows512<2 * ZM2, 2, 18>(t, row0, row1, s0, s1, rest);
        else rows512<ZM2, 2, 18>(t, row0, row1, s0, s1, rest);
        return;
      case 4:
        if ((s1 - s0) % (4 * ZM2) == 0) rows512<2 * ZM2, 2, 17>(t, row0, row1, s0, s1, rest);
        else rows512<ZM2, 2, 17>(t, row0, row1, s0, s1, rest);
        return;
      case 6: rows512<ZA1, 4, 48>(t, row0, row1, s0, s1, rest); return;
      case 7: rows512<ZA2, 2, 32>(t, row0, row1, s0, s1, rest); return;
      default: break;
    }
  }
  switch (shape) {
    case 1: rows<12, 4, 34>(t, row0, row1, s0, s1, rest); break;
    case 2: rows<12, 2, 18>(t, row0, row1, s0, s1, rest); break;
    case 3: rows<8, 1, 10>(t, row0, row1, s0, s1, rest); break;
    case 4: rows<12, 2, 17, 4>(t, row0, row1, s0, s1, rest); break;  // (stride 2: four phase planes)
    case 5: rows<8, 1, 9, 4>(t, row0, row1, s0, s1, rest); break;
    default:
      rest(t, row0, row1, s0, s1);
      op_epilogue(t, row0, row1, s0, s1);
  }
}

}  // namespace prunecal

#elif !defined(PRUNECAL_HAVE_NEON)  // no AVX2 path on this compiler / architecture (AArch64: plan_kernels_neon.cpp)

namespace prunecal {
bool plan_avx512_active() { return false; }
bool plan_fast_kernels(const KernelSet&) { return false; }
int plan_fast_shape(int, int, int, int) { return 0; }
void plan_csr_fast(int, const ConvTask& t, int row0, int row1, int s0, int s1, CsrFn rest) {
  rest(t, row0, row1, s0, s1);
  op_epilogue(t, row0, row1, s0, s1);
}
}  // namespace prunecal

#endif
