#include "phase_planes.h"

#include <algorithm>
#include <cstring>

#if defined(__SSE2__) || defined(_M_X64)
#include <emmintrin.h>
#endif

#include "common.h"
#include "pack_fixed.h"
#include "packed_weight.h"

namespace prunecal {
namespace {

// Whether any value passed through was NaN or +-Inf (v * 0 is NaN exactly for those): lets the
// packing copy, which reads every input value once, replace a separate scan of the image.
struct NonfiniteScan {
#if defined(__SSE2__) || defined(_M_X64)
  __m128 acc = _mm_setzero_ps();
  void add4(__m128 v) { acc = _mm_or_ps(acc, _mm_mul_ps(v, _mm_setzero_ps())); }
#endif
  bool scalar = false;
  void add(float v) { scalar = scalar || !(v - v == 0.f); }
  bool any() const {
#if defined(__SSE2__) || defined(_M_X64)
    if (_mm_movemask_ps(_mm_cmpunord_ps(acc, acc))) return true;
#endif
    return scalar;
  }
};

inline void copy_row(float* d, const float* s, int n, NonfiniteScan& scan) {
  int i = 0;
#if defined(__SSE2__) || defined(_M_X64)
  for (; i + 4 <= n; i += 4) {
    const __m128 v = _mm_loadu_ps(s + i);
    scan.add4(v);
    _mm_storeu_ps(d + i, v);
  }
#endif
  for (; i < n; ++i) scan.add(d[i] = s[i]);
}

// dst[j] = src[s * j] for j < n (the phase-split copy of one row, stride > 2).
inline void gather_row(float* dst, const float* src, int n, int s, NonfiniteScan& scan) {
  for (int j = 0; j < n; ++j) scan.add(dst[j] = src[int64_t(j) * s]);
}

// even[k] = x[2k], odd[k] = x[2k + 1] for the n values of x.
inline void deinterleave_row(const float* x, int n, float* even, float* odd, NonfiniteScan& scan) {
  int k = 0;
#if defined(__SSE2__) || defined(_M_X64)
  for (; 2 * k + 8 <= n; k += 4) {
    const __m128 a = _mm_loadu_ps(x + 2 * k), b = _mm_loadu_ps(x + 2 * k + 4);
    scan.add4(a);
    scan.add4(b);
    _mm_storeu_ps(even + k, _mm_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0)));
    _mm_storeu_ps(odd + k, _mm_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1)));
  }
#endif
  for (; 2 * k < n; ++k) {
    scan.add(even[k] = x[2 * k]);
    if (2 * k + 1 < n) scan.add(odd[k] = x[2 * k + 1]);
  }
}

}  // namespace

bool copy_phase_planes(const PlaneSource& src, const Geometry& g, float* planes, int c0, int c1, bool zeros) {
  const int s = g.stride, p = g.pad, Hq = g.Hq, Wq = g.Wq, H = src.H, W = src.W;
  if (zeros) {
    std::memset(planes + c0 * g.chan_floats, 0, sizeof(float) * size_t((c1 - c0) * g.chan_floats));
  }
  if (c1 == src.C) std::memset(planes + src.C * g.chan_floats, 0, sizeof(float) * size_t(kSlack));
  if (c0 == 0 && c1 == src.C && src.chan_stride == int64_t(H) * W && src.row_stride == W) {
    const int fixed = pack_planes_fixed(src.x, src.C, H, W, g, planes);  // whole-row AVX-512 copies, CIFAR shapes
    if (fixed >= 0) return fixed == 1;
  }
  NonfiniteScan scan;
  for (int c = c0; c < c1; ++c) {
    const float* X = src.x + c * src.chan_stride;
    float* P0 = planes + c * g.chan_floats;
    if (s == 1) {
      for (int y = 0; y < H; ++y) copy_row(P0 + int64_t(y + p) * Wq + p, X + y * src.row_stride, W, scan);
      continue;
    }
    if (s == 2) {  // one pass per input row: even columns to one phase, odd to the other
      const int pe = p & 1, je = p >> 1, jo = (p + 1) >> 1;  // phase / first column of x = 0 and x = 1
      for (int yy = 0; yy < H; ++yy) {
        const int py = (yy + p) & 1, i = (yy + p) >> 1;
        float* even = P0 + int64_t(py * 2 + pe) * Hq * Wq + int64_t(i) * Wq + je;
        float* odd = P0 + int64_t(py * 2 + (1 - pe)) * Hq * Wq + int64_t(i) * Wq + jo;
        deinterleave_row(X + yy * src.row_stride, W, even, odd, scan);
      }
      continue;
    }
    for (int py = 0; py < s; ++py)
      for (int px = 0; px < s; ++px) {
        float* P = P0 + int64_t(py * s + px) * Hq * Wq;
        // columns j with 0 <= j*s + px - p < W
        const int j_lo = std::min(Wq, (std::max(0, p - px) + s - 1) / s);
        const int last = W - 1 + p - px;  // j*s <= last
        const int j_hi = last < 0 ? j_lo : std::max(j_lo, std::min(Wq, last / s + 1));
        for (int i = 0; i < Hq; ++i) {
          const int yy = i * s + py - p;
          if (yy < 0 || yy >= H) continue;
          const float* xr = X + yy * src.row_stride + (px - p);
          gather_row(P + int64_t(i) * Wq + j_lo, xr + int64_t(j_lo) * s, j_hi - j_lo, s, scan);
        }
      }
  }
  return scan.any();
}

}  // namespace prunecal
