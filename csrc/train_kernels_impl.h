// Kernel bodies of the sparse training conv (csrc/train_conv.h), written once over a vector type.
// Included by one translation unit per ISA (train_kernels_{generic,avx2,avx512}.cpp), each compiled
// with its own flags, after it defines `Vec` (L lanes: zero, set1, load, store, fma),
// kGatherTile and kSddRows inside prunecal::(anonymous): every instantiation stays internal to its
// unit, so units built for different ISAs never share a symbol.
#pragma once

namespace prunecal {
namespace {

constexpr int L = Vec::L;

// T vectors of one output row: sum over the row's nonzeros j of val[j] * in[off[j] + i * L ..].
template <int T>
inline void gather_tile(const float* in, const int32_t* off, const float* val, int32_t j0, int32_t j1,
                        float* out) {
  Vec acc[T];
#pragma GCC unroll 16
  for (int i = 0; i < T; ++i) acc[i] = Vec::zero();
  for (int32_t j = j0; j < j1; ++j) {
    const Vec w = Vec::set1(val[j]);
    const float* p = in + off[j];
#pragma GCC unroll 16
    for (int i = 0; i < T; ++i) acc[i] = Vec::fma(w, Vec::load(p + i * L), acc[i]);
  }
#pragma GCC unroll 16
  for (int i = 0; i < T; ++i) acc[i].store(out + i * L);
}

template <int T>
void gather_tiles(const float* in, const int32_t* indptr, const int32_t* off, const float* val, int r0, int r1, int v,
                  float* out, int64_t out_stride) {
  for (int r = r0; r < r1; ++r)
    gather_tile<T>(in + int64_t(v) * L, off, val, indptr[r], indptr[r + 1], out + r * out_stride + int64_t(v) * L);
}

// Tiles outside, rows inside: the input window of one tile stays in L1 for every row. The last
// tile takes the rest (1 .. T-1 vectors) in one pass, so small images (8x8: 5 vectors) load each
// weight once per row.
void gather(const float* in, const int32_t* indptr, const int32_t* off, const float* val, int r0, int r1,
            int v0, int v1, float* out, int64_t out_stride) {
  constexpr int T = kGatherTile;
  static_assert(T <= 8, "remainder switch below covers tiles of up to 8 vectors");
  int v = v0;
  for (; v + T <= v1; v += T) gather_tiles<T>(in, indptr, off, val, r0, r1, v, out, out_stride);
  switch (v1 - v) {
    case 7: gather_tiles<7>(in, indptr, off, val, r0, r1, v, out, out_stride); break;
    case 6: gather_tiles<6>(in, indptr, off, val, r0, r1, v, out, out_stride); break;
    case 5: gather_tiles<5>(in, indptr, off, val, r0, r1, v, out, out_stride); break;
    case 4: gather_tiles<4>(in, indptr, off, val, r0, r1, v, out, out_stride); break;
    case 3: gather_tiles<3>(in, indptr, off, val, r0, r1, v, out, out_stride); break;
    case 2: gather_tiles<2>(in, indptr, off, val, r0, r1, v, out, out_stride); break;
    case 1: gather_tiles<1>(in, indptr, off, val, r0, r1, v, out, out_stride); break;
    default: break;
  }
}

// R nonzeros of one row against nv vectors of its output gradient; accumulators in acc
// (16 floats per nonzero).
template <int R>
inline void sdd_block(const float* in, const float* dy, const int32_t* off, int nv, float* acc) {
  Vec a[R];
  const float* p[R];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
    a[r] = Vec::load(acc + r * 16);
    p[r] = in + off[r];
  }
  for (int v = 0; v < nv; ++v) {
    const Vec d = Vec::load(dy + int64_t(v) * L);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) a[r] = Vec::fma(d, Vec::load(p[r] + int64_t(v) * L), a[r]);
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) a[r].store(acc + r * 16);
}

void sdd(const float* in, const float* dy, int64_t dy_stride, const int32_t* indptr, const int32_t* off, int r0,
         int r1, int v0, int v1, float* acc) {
  constexpr int R = kSddRows;
  const int nv = v1 - v0;
  if (nv <= 0) return;
  for (int r = r0; r < r1; ++r) {
    const float* d = dy + r * dy_stride + int64_t(v0) * L;
    const float* i = in + int64_t(v0) * L;
    int32_t j = indptr[r];
    const int32_t j1 = indptr[r + 1];
    for (; j + R <= j1; j += R) sdd_block<R>(i, d, off + j, nv, acc + int64_t(j) * 16);
    if (j + R / 2 <= j1) {
      sdd_block<R / 2>(i, d, off + j, nv, acc + int64_t(j) * 16);
      j += R / 2;
    }
    if (j + 2 <= j1) {
      sdd_block<2>(i, d, off + j, nv, acc + int64_t(j) * 16);
      j += 2;
    }
    for (; j < j1; ++j) sdd_block<1>(i, d, off + j, nv, acc + int64_t(j) * 16);
  }
}

}  // namespace
}  // namespace prunecal
