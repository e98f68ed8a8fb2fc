// Kernel body of the lanes conv (csrc/plan_lanes.h), written once over a vector type. Included
// by one translation unit per ISA (plan_lanes.cpp: generic; plan_lanes_avx2.cpp,
// plan_lanes_avx512.cpp), each after it defines, inside prunecal::(anonymous), `Vec` (kBatchLanes
// floats: zero, set1, load, store, fma(w, x, acc), add, relu) and kTile (output pixels whose
// accumulators stay in registers).
#pragma once

namespace prunecal {
namespace {

// NP output pixels of one row, nonzeros [j0, j1): acc[p] (0 in the first pass, else the partial
// sum in the output) += val * in[in_base[p] + off]; the last pass adds the bias (and ReLU).
template <int NP>
inline void lane_tile(const LaneConvTask& t, int row, int p0, int32_t j0, int32_t j1, bool first, bool last) {
  Vec acc[NP];
  const float* base[NP];
  float* out = t.out + int64_t(row) * t.out_plane;
#pragma GCC unroll 8
  for (int p = 0; p < NP; ++p) {
    acc[p] = first ? Vec::zero() : Vec::load(out + t.out_pos[p0 + p]);
    base[p] = t.in + t.in_base[p0 + p];
  }
  for (int32_t j = j0; j < j1; ++j) {
    const Vec w = Vec::set1(t.val[j]);
    const int32_t o = t.off[j];
#pragma GCC unroll 8
    for (int p = 0; p < NP; ++p) acc[p] = Vec::fma(w, Vec::load(base[p] + o), acc[p]);
  }
  if (last) {
    const Vec b = Vec::set1(t.bias ? t.bias[row] : 0.f);
#pragma GCC unroll 8
    for (int p = 0; p < NP; ++p) {
      acc[p] = Vec::add(acc[p], b);
      if (t.relu) acc[p] = Vec::relu(acc[p]);
    }
  }
#pragma GCC unroll 8
  for (int p = 0; p < NP; ++p) acc[p].store(out + t.out_pos[p0 + p]);
}

template <int NP>
inline void lane_rest(const LaneConvTask& t, int row, int p0, int n, int32_t j0, int32_t j1, bool first, bool last) {
  if constexpr (NP > 1) {
    if (n == NP) return lane_tile<NP>(t, row, p0, j0, j1, first, last);
    return lane_rest<NP - 1>(t, row, p0, n, j0, j1, first, last);
  } else {
    lane_tile<1>(t, row, p0, j0, j1, first, last);
  }
}

// Bands outside, rows, then pixel tiles inside: a band's input planes stay in L2 for every row,
// a row's nonzeros in L1 across its tiles.
void lane_conv(const LaneConvTask& t, int r0, int r1) {
  for (int b = 0; b < t.nblk; ++b) {
    const bool first = b == 0, last = b == t.nblk - 1;
    for (int r = r0; r < r1; ++r) {
      const int32_t* bp = t.bptr + int64_t(r) * (t.nblk + 1) + b;
      const int32_t j0 = bp[0], j1 = bp[1];
      if (j0 == j1 && !first && !last) continue;  // nothing of this band: the partial sums stay
      int p = 0;
      for (; p + kTile <= t.n_pix; p += kTile) lane_tile<kTile>(t, r, p, j0, j1, first, last);
      if (p < t.n_pix) lane_rest<kTile - 1>(t, r, p, t.n_pix - p, j0, j1, first, last);
    }
  }
}

}  // namespace
}  // namespace prunecal
