// Element-wise and data-movement ops of a Plan, on one image in padded-plane layout
// (see plan.h). ReLU keeps NaN (v < 0 ? 0 : v), like torch.relu.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "plan.h"

namespace prunecal {
namespace {

inline float relu_f(float v) { return v < 0.f ? 0.f : v; }

inline const float* interior(const float* p, const BufSpec& s, int c, int y) { return p + c * s.plane() + s.pos(y, 0); }
inline float* interior(float* p, const BufSpec& s, int c, int y) { return p + c * s.plane() + s.pos(y, 0); }

}  // namespace

void op_add(const float* a, const BufSpec& sa, const float* b, const BufSpec& sb, float* y,
            const BufSpec& sy, bool relu) {
  if (sa.same_layout(sy) && sb.same_layout(sy)) {  // same layout: one flat pass (borders: 0 + 0 = 0)
    const int64_t n = sy.floats();
    if (relu)
      for (int64_t i = 0; i < n; ++i) y[i] = relu_f(a[i] + b[i]);
    else
      for (int64_t i = 0; i < n; ++i) y[i] = a[i] + b[i];
    return;
  }
  for (int c = 0; c < sy.C; ++c)
    for (int r = 0; r < sy.H; ++r) {
      const float *pa = interior(a, sa, c, r), *pb = interior(b, sb, c, r);
      float* py = interior(y, sy, c, r);
      for (int x = 0; x < sy.W; ++x) py[x] = relu ? relu_f(pa[x] + pb[x]) : pa[x] + pb[x];
    }
}

void op_relu(const float* a, const BufSpec& sa, float* y, const BufSpec& sy) {
  if (sa.same_layout(sy)) {
    const int64_t n = sy.floats();
    for (int64_t i = 0; i < n; ++i) y[i] = relu_f(a[i]);
    return;
  }
  for (int c = 0; c < sy.C; ++c)
    for (int r = 0; r < sy.H; ++r) {
      const float* pa = interior(a, sa, c, r);
      float* py = interior(y, sy, c, r);
      for (int x = 0; x < sy.W; ++x) py[x] = relu_f(pa[x]);
    }
}

void op_shortcut(const float* x, const BufSpec& sx, float* y, const BufSpec& sy, int stride, int left, int c0,
                 int c1) {
  for (int c = c0; c < c1; ++c) {
    const int ci = c - left;
    for (int r = 0; r < sy.H; ++r) {
      float* py = interior(y, sy, c, r);
      if (ci < 0 || ci >= sx.C) {
        std::memset(py, 0, sizeof(float) * size_t(sy.W));
        continue;
      }
      const float* px = interior(x, sx, ci, r * stride);
      if (stride == 1) std::memcpy(py, px, sizeof(float) * size_t(sy.W));
      else
        for (int q = 0; q < sy.W; ++q) py[q] = px[int64_t(q) * stride];
    }
  }
}

void op_avgpool(const float* x, const BufSpec& sx, float* y, const BufSpec& sy) {
  const float inv = 1.f / float(int64_t(sx.H) * sx.W);
  for (int c = 0; c < sx.C; ++c) {
    float s = 0.f;
    for (int r = 0; r < sx.H; ++r) {
      const float* p = interior(x, sx, c, r);
      for (int q = 0; q < sx.W; ++q) s += p[q];
    }
    *interior(y, sy, c, 0) = s * inv;
  }
}

namespace {
// The larger of a and b, NaN when either is (branch-free: vectorisable).
inline float max_nan(float a, float b) { return (a > b || a != a) ? a : b; }
}  // namespace

void op_maxpool(const float* x, const BufSpec& sx, float* y, const BufSpec& sy, int k, int stride, int pad) {
  if (k == 2 && stride == 2 && pad == 0) {  // VGG's pool: branch-free rows (the loop below: ~13 ns an output)
    for (int c = 0; c < sy.C; ++c)
      for (int oy = 0; oy < sy.H; ++oy) {
        const float *r0 = interior(x, sx, c, 2 * oy), *r1 = interior(x, sx, c, 2 * oy + 1);
        float* py = interior(y, sy, c, oy);
        for (int ox = 0; ox < sy.W; ++ox)
          py[ox] = max_nan(max_nan(r0[2 * ox], r0[2 * ox + 1]), max_nan(r1[2 * ox], r1[2 * ox + 1]));
      }
    return;
  }
  for (int c = 0; c < sy.C; ++c)
    for (int oy = 0; oy < sy.H; ++oy) {
      float* py = interior(y, sy, c, oy);
      const int y0 = std::max(0, oy * stride - pad), y1 = std::min(sx.H, oy * stride - pad + k);
      for (int ox = 0; ox < sy.W; ++ox) {
        const int x0 = std::max(0, ox * stride - pad), x1 = std::min(sx.W, ox * stride - pad + k);
        float m = -std::numeric_limits<float>::infinity();
        for (int r = y0; r < y1; ++r) {
          const float* px = interior(x, sx, c, r);
          for (int q = x0; q < x1; ++q) {
            const float v = px[q];
            if (v > m || v != v) m = v;
            if (m != m) break;
          }
        }
        py[ox] = m;
      }
    }
}

void op_clamp(const float* x, const BufSpec& sx, float* y, const BufSpec& sy, float lo, float hi) {
  for (int c = 0; c < sy.C; ++c)
    for (int r = 0; r < sy.H; ++r) {
      const float* px = interior(x, sx, c, r);
      float* py = interior(y, sy, c, r);
      for (int q = 0; q < sy.W; ++q) {
        const float v = px[q];
        py[q] = v < lo ? lo : (v > hi ? hi : v);
      }
    }
}

void op_residual(float* out, int64_t out_plane, const float* res, int64_t res_plane, const Slot* slots,
                 const int32_t* res_q, int r0, int r1, int s0, int s1, bool relu) {
  for (int r = r0; r < r1; ++r) {
    float* o = out + r * out_plane;
    const float* q = res + r * res_plane;
    for (int s = s0; s < s1; ++s) {
      float* __restrict oo = o + slots[s].out_q;
      const float* __restrict qq = q + res_q[s];
      const int n = slots[s].n;
      if (n == kLanes) {
#if defined(__SSE2__)
        // explicit SSE (baseline x86-64): GCC leaves this 8-lane loop scalar
        __m128 a = _mm_add_ps(_mm_loadu_ps(oo), _mm_loadu_ps(qq));
        __m128 b = _mm_add_ps(_mm_loadu_ps(oo + 4), _mm_loadu_ps(qq + 4));
        if (relu) {  // max(0, v) returns v when v is NaN
          a = _mm_max_ps(_mm_setzero_ps(), a);
          b = _mm_max_ps(_mm_setzero_ps(), b);
        }
        _mm_storeu_ps(oo, a);
        _mm_storeu_ps(oo + 4, b);
#else
        for (int l = 0; l < kLanes; ++l) oo[l] = relu ? relu_f(oo[l] + qq[l]) : oo[l] + qq[l];
#endif
      } else {
        for (int l = 0; l < n; ++l) oo[l] = relu ? relu_f(oo[l] + qq[l]) : oo[l] + qq[l];
      }
    }
  }
}

void op_epilogue(const ConvTask& t, int r0, int r1, int s0, int s1) {
  if (t.res) op_residual(t.out, t.out_stride, t.res, t.res_stride, t.slots, t.res_q, r0, r1, s0, s1, t.res_relu);
  if (!t.copy_floats) return;
  for (int r = r0; r < r1; ++r) {
    float* o = t.out + r * t.out_stride;
    for (int s = s0; s < s1; ++s) {
      const float* src = o + t.slots[s].out_q;
      const size_t bytes = sizeof(float) * size_t(t.slots[s].n);
      std::memcpy(o + t.slots[s].out_q - t.copy_floats + 1, src, bytes);
      std::memcpy(o + t.slots[s].out_q + t.copy_floats - 1, src, bytes);
    }
  }
}

void op_prefetch_rows(const float* x, const BufSpec& sx, int y0, int y1) {
  y0 = std::max(y0, 0), y1 = std::min(y1, sx.H);
  if (y0 >= y1) return;
  const int64_t cf = sx.copy_floats();
  for (int d = sx.copies == 3 ? -1 : 0; d <= (sx.copies == 3 ? 1 : 0); ++d)
    for (int c = 0; c < sx.C; ++c) {
      const char* p = reinterpret_cast<const char*>(x + d * cf + c * sx.plane() + sx.pos(y0, 0));
      const char* e = reinterpret_cast<const char*>(x + d * cf + c * sx.plane() + sx.pos(y1 - 1, sx.W));
      for (p = reinterpret_cast<const char*>(reinterpret_cast<uintptr_t>(p) & ~uintptr_t(63)); p < e; p += 64)
        __builtin_prefetch(p, 0, 3);
    }
}

void op_replicate(float* x, const BufSpec& sx, int c0, int c1) {
  if (sx.copies != 3 || c0 >= c1) return;
  const int64_t cf = sx.copy_floats(), i0 = c0 * sx.plane(), i1 = c1 * sx.plane();
  float* lo = x - cf;  // lo[i + 1] = x[i]
  float* hi = x + cf;  // hi[i - 1] = x[i]
  // positions i0 + 1 .. i1 of lo and i0 - 1 .. i1 - 2 of hi (position -1 of hi does not exist)
  std::memcpy(lo + i0 + 1, x + i0, sizeof(float) * size_t(i1 - i0));
  if (i0 == 0) {
    lo[0] = 0.f;
    std::memcpy(hi, x + 1, sizeof(float) * size_t(i1 - 1));
  } else {
    std::memcpy(hi + i0 - 1, x + i0, sizeof(float) * size_t(i1 - i0));
  }
}

void op_load(const float* img, float* y, const BufSpec& sy) {
  for (int c = 0; c < sy.C; ++c)
    for (int r = 0; r < sy.H; ++r)
      std::memcpy(interior(y, sy, c, r), img + (int64_t(c) * sy.H + r) * sy.W, sizeof(float) * size_t(sy.W));
}

void op_store(const float* x, const BufSpec& sx, float* img) {
  for (int c = 0; c < sx.C; ++c)
    for (int r = 0; r < sx.H; ++r)
      std::memcpy(img + (int64_t(c) * sx.H + r) * sx.W, interior(x, sx, c, r), sizeof(float) * size_t(sx.W));
}

}  // namespace prunecal
