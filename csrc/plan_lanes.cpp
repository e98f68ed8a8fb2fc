// The lanes section's portable conv kernel, its element-wise ops and the kernel choice
// (csrc/plan_lanes.h). The portable vector (simd_vec.h) spells the per-image generic kernel's
// arithmetic (w * x + acc), so the two give the same bits with the same compiler flags.
#include "plan_lanes.h"

#include <algorithm>
#include <limits>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "simd_vec.h"

namespace prunecal {
namespace {

constexpr int L = kBatchLanes;

using Vec = VecN<kBatchLanes>;
constexpr int kTile = 4;

}  // namespace
}  // namespace prunecal

#include "plan_lanes_impl.h"

namespace prunecal {

const LaneKernels& lane_kernels_generic() {
  static const LaneKernels k{"generic", lane_conv};
  return k;
}

const LaneKernels& lane_kernels_for(const KernelSet& k) {
#if defined(PRUNECAL_HAVE_AVX2_TU)
  if (k.x86()) return isa_config().isa == Isa::Avx512 ? lane_kernels_avx512() : lane_kernels_avx2();
#endif
  // generic, and NEON: its per-image kernels use FMA, which the compiler makes of acc += w * x
  // on AArch64 (floating-point contraction, on by default there) for the generic Vec too
  return lane_kernels_generic();
}

namespace {
inline float* lane_at(float* p, const LaneSpec& s, int c, int y, int x) { return p + c * s.plane() + s.pos(y, x); }
inline const float* lane_at(const float* p, const LaneSpec& s, int c, int y, int x) {
  return p + c * s.plane() + s.pos(y, x);
}
// m[l] = max(m[l], v[l]) for every lane as op_maxpool takes it: a NaN already in m stays, a NaN
// in v replaces a number (the first NaN of a window wins). SSE2 where the baseline has it (the
// scalar form compiles to a branch per lane).
inline void max_keep_nan(float* m, const float* v) {
  static_assert(L % 4 == 0, "the SSE2 form takes the lanes four at a time");
#if defined(__SSE2__)
  for (int l = 0; l < L; l += 4) {
    const __m128 a = _mm_loadu_ps(m + l), b = _mm_loadu_ps(v + l);
    const __m128 take = _mm_or_ps(_mm_cmpgt_ps(b, a), _mm_cmpunord_ps(b, b));
    const __m128 sel = _mm_andnot_ps(_mm_cmpunord_ps(a, a), take);
    _mm_storeu_ps(m + l, _mm_or_ps(_mm_and_ps(sel, b), _mm_andnot_ps(sel, a)));
  }
#else
  for (int l = 0; l < L; ++l) m[l] = (m[l] != m[l]) ? m[l] : ((v[l] > m[l] || v[l] != v[l]) ? v[l] : m[l]);
#endif
}
}  // namespace

void lanes_maxpool(const float* x, const LaneSpec& sx, float* y, const LaneSpec& sy, int k, int stride, int pad) {
  for (int c = 0; c < sy.C; ++c)
    for (int oy = 0; oy < sy.H; ++oy)
      for (int ox = 0; ox < sy.W; ++ox) {
        const int y0 = std::max(0, oy * stride - pad), y1 = std::min(sx.H, oy * stride - pad + k);
        const int x0 = std::max(0, ox * stride - pad), x1 = std::min(sx.W, ox * stride - pad + k);
        float m[L];
        for (int l = 0; l < L; ++l) m[l] = -std::numeric_limits<float>::infinity();
        for (int r = y0; r < y1; ++r)
          for (int q = x0; q < x1; ++q) {
            const float* v = lane_at(x, sx, c, r, q);
            max_keep_nan(m, v);
          }
        float* o = lane_at(y, sy, c, oy, ox);
        for (int l = 0; l < L; ++l) o[l] = m[l];
      }
}

template <class F>
static void lanes_map(const float* x, const LaneSpec& sx, float* y, const LaneSpec& sy, F f) {
  for (int c = 0; c < sy.C; ++c)
    for (int r = 0; r < sy.H; ++r) {
      const float* px = lane_at(x, sx, c, r, 0);
      float* py = lane_at(y, sy, c, r, 0);
      for (int i = 0; i < sy.W * L; ++i) py[i] = f(px[i]);
    }
}

void lanes_relu(const float* x, const LaneSpec& sx, float* y, const LaneSpec& sy) {
  lanes_map(x, sx, y, sy, [](float v) { return v < 0.f ? 0.f : v; });
}

void lanes_clamp(const float* x, const LaneSpec& sx, float* y, const LaneSpec& sy, float lo, float hi) {
  lanes_map(x, sx, y, sy, [lo, hi](float v) { return v < lo ? lo : (v > hi ? hi : v); });
}

void lanes_add(const float* a, const LaneSpec& sa, const float* b, const LaneSpec& sb, float* y,
               const LaneSpec& sy, bool relu) {
  for (int c = 0; c < sy.C; ++c)
    for (int r = 0; r < sy.H; ++r) {
      const float *pa = lane_at(a, sa, c, r, 0), *pb = lane_at(b, sb, c, r, 0);
      float* py = lane_at(y, sy, c, r, 0);
      for (int i = 0; i < sy.W * L; ++i) {
        const float v = pa[i] + pb[i];
        py[i] = relu && v < 0.f ? 0.f : v;
      }
    }
}

}  // namespace prunecal
