// Sparse conv2d driver: per-image zero-padded (phase-split for stride > 1) planes, work split
// over images (large batch) or over output-channel blocks x slot ranges (batch < 4 * threads).
#include <algorithm>
#include <cstring>
#include <stdexcept>

#if defined(__SSE2__) || defined(_M_X64)
#include <emmintrin.h>
#endif

#include "conv_exec.h"
#include "jit_conv.h"
#include "pack_fixed.h"
#include "packed_weight.h"
#include "plan.h"  // the fixed-shape CSR tiles (plan_csr_fast)
#include "thread_pool.h"

namespace prunecal {
namespace {

constexpr int64_t kMinSplitFmas = 16384;  // generated kernels: vector FMAs of one image worth a split

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

// dst[j] = src[s * j] for j < n (the phase-split copy of one row).
inline void gather_row(float* dst, const float* src, int n, int s) {
  int j = 0;
#if defined(__SSE2__) || defined(_M_X64)
  if (s == 2)  // loads src[2j .. 2j+3] and src[2j+3 .. 2j+6]: never reads past src[2 * (n - 1)]
    for (; j + 4 <= n; j += 4)
      _mm_storeu_ps(dst + j, _mm_shuffle_ps(_mm_loadu_ps(src + 2 * j), _mm_loadu_ps(src + 2 * j + 3),
                                            _MM_SHUFFLE(3, 1, 2, 0)));
#endif
  for (; j < n; ++j) dst[j] = src[int64_t(j) * s];
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

// Copy one image (C, H, W) into C x stride^2 phase planes of Hq x Wq with zero padding,
// followed by kSlack zeros. With zero_borders == false the padding positions of `buf` are
// known to be zero already (same layout as the previous image packed into it) and only the
// image itself is copied. Returns whether the image holds NaN or Inf.
bool pack_planes(const float* x, int C, int H, int W, const Geometry& g, float* buf, bool zero_borders,
                 const KernelSet& k) {
  const int s = g.stride, p = g.pad, Hq = g.Hq, Wq = g.Wq;
  NonfiniteScan scan;
  if (s > 2) scan.scalar = k.nonfinite(x, int64_t(C) * H * W);  // (the copy below skips nothing, but has no scan)
  if (zero_borders) std::memset(buf, 0, sizeof(float) * size_t(C * g.chan_floats + kSlack));
  const int fixed = pack_planes_fixed(x, C, H, W, g, buf);  // whole-row AVX-512 copies for the CIFAR shapes
  if (fixed >= 0) return fixed == 1;
  for (int c = 0; c < C; ++c) {
    const float* X = x + int64_t(c) * H * W;
    float* P0 = buf + c * g.chan_floats;
    if (s == 1) {
      for (int y = 0; y < H; ++y) copy_row(P0 + int64_t(y + p) * Wq + p, X + int64_t(y) * W, W, scan);
      continue;
    }
    if (s == 2) {  // one pass per input row: even columns to one phase, odd to the other
      const int pe = p & 1, je = p >> 1, jo = (p + 1) >> 1;  // phase / first column of x = 0 and x = 1
      for (int yy = 0; yy < H; ++yy) {
        const int py = (yy + p) & 1, i = (yy + p) >> 1;
        float* even = P0 + int64_t(py * 2 + pe) * Hq * Wq + int64_t(i) * Wq + je;
        float* odd = P0 + int64_t(py * 2 + (1 - pe)) * Hq * Wq + int64_t(i) * Wq + jo;
        deinterleave_row(X + int64_t(yy) * W, W, even, odd, scan);
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
          float* row = P + int64_t(i) * Wq;
          const float* xr = X + int64_t(yy) * W + (px - p);
          gather_row(row + j_lo, xr + int64_t(j_lo) * s, j_hi - j_lo, s);
        }
      }
  }
  return scan.any();
}

// Per-thread plane buffer, reused across calls; remembers the layout whose zero borders it holds.
struct PlaneBuffer {
  std::vector<float> data;
  const Geometry* layout = nullptr;
  std::shared_ptr<Geometry> keep;  // keeps `layout` alive so the pointer cannot be reused
  int C = 0;
};
thread_local PlaneBuffer t_planes;

// The calling thread's buffer for `n` floats; *zero_borders tells whether pack_planes must
// clear it first.
float* planes(int64_t n, const std::shared_ptr<Geometry>& g, int C, bool* zero_borders) {
  PlaneBuffer& b = t_planes;
  if (int64_t(b.data.size()) < n) {
    b.data.assign(size_t(n), 0.f);
    b.layout = nullptr;
  }
  *zero_borders = !(b.layout == g.get() && b.C == C);
  b.layout = g.get();
  b.keep = g;
  b.C = C;
  return b.data.data();
}

}  // namespace

void PackedWeight::conv2d(const float* x, int N, int C, int H, int W, float* y, const float* bias,
                          int stride, int pad, int dil, int groups, bool relu, int threads,
                          const KernelSet& k) {
  if (N <= 0) return;
  auto gp = geometry(H, W, stride, pad, dil);
  Geometry& g = *gp;
  const int Co = rows(), Cog = Co / groups, r = block_rows_;
  const bool use_bsr = kind_ == "bsr" && (groups == 1 || Cog % r == 0);
  const int64_t img_in = int64_t(C) * H * W, out_plane = int64_t(g.Ho) * g.Wo;
  const int64_t img_out = int64_t(Co) * out_plane, buf_floats = C * g.chan_floats + kSlack;
  const int S = int(g.slots.size());
  // fixed-shape tiles for the CIFAR shapes (AVX2 / NEON kernel sets; tiles start at an output row)
  const int fast = plan_fast_kernels(k) ? plan_fast_shape(g.Wo, g.Wq, stride, dil) : 0;
  const int spr = (g.Wo + kLanes - 1) / kLanes;

  const ConvRows stored = conv_rows(*this, g, use_bsr, false, groups, fast);
  // the rows an image reads: the stored ones, or the dense form when it holds NaN / Inf
  auto rows_for = [&](bool bad) { return bad ? conv_rows(*this, g, false, true, groups, 0) : stored; };
  auto compute = [&](const float* buf, float* yi, const ConvRows& rows_in, int grp, int u0, int u1, int s0, int s1) {
    ConvTask t;
    t.slots = g.slots.data();
    t.out = yi;
    t.out_stride = out_plane;
    t.bias = bias;
    t.relu = relu;
    t.valid_rows = Co;
    if (rows_in.fast && s0 % spr != 0) {  // (the fixed-shape tiles start at an output row)
      ConvRows plain = rows_in;
      plain.fast = 0;
      conv_units(k, plain, t, buf, grp, u0, u1, s0, s1);
    } else {
      conv_units(k, rows_in, t, buf, grp, u0, u1, s0, s1);
    }
  };
  // generated kernels (CSR, one group): one call per (channel group, tile of 8 / 16 outputs)
  const JitConv* jit = (!use_bsr && groups == 1 && k.isa == Isa::Avx2) ? this->jit(g) : nullptr;
  const int n_tiles = jit ? S / jit->slots_per_tile() : 0;
  auto compute_jit = [&](const float* buf, float* yi, int k0, int k1, int t0, int t1) {
    jit_tiles(*jit, buf, g.slots.data(), yi, bias, relu, nullptr, nullptr, k0, k1, t0, t1);
  };
  auto pack = [&](int64_t n, float* buf, bool zero_borders) {
    const bool bad = pack_planes(x + n * img_in, C, H, W, g, buf, zero_borders, k);  // (scans while copying)
    if (bad) ensure_dense(g);
    return bad;
  };

  if (threads <= 1 || N >= 4 * threads) {
    // whole images per worker, each in its own plane buffer
    parallel_for(threads, N, [&](int64_t n, int) {
      bool zero;
      float* buf = planes(buf_floats, gp, C, &zero);
      const bool bad = pack(n, buf, zero);
      if (jit && !bad) {
        compute_jit(buf, y + n * img_out, 0, jit->n_groups(), 0, n_tiles);
        return;
      }
      const ConvRows rows_n = rows_for(bad);
      for (int grp = 0; grp < groups; ++grp) compute(buf, y + n * img_out, rows_n, grp, 0, rows_n.units(), 0, S);
    });
    return;
  }
  // few images: split each over (group, unit block, slot range)
  bool zero;
  float* buf = planes(buf_floats, gp, C, &zero);
  for (int64_t n = 0; n < N; ++n) {
    const bool bad = pack(n, buf, zero);
    zero = false;
    if (jit && !bad) {  // tasks: (channel group, run of tiles)
      const int ng = jit->n_groups();
      float* yi = y + n * img_out;
      // little work (under ~16k vector FMAs, a few us): the caller alone, a split measured no
      // faster at batch 1 (CIFAR layers at 90 %: 0.2-1.4 us slower on 2 threads)
      if (nnz() * n_tiles < kMinSplitFmas) {
        compute_jit(buf, yi, 0, ng, 0, n_tiles);
        continue;
      }
      const int chunks = std::max(1, std::min(n_tiles, (4 * threads + ng - 1) / ng));
      parallel_for(threads, int64_t(ng) * chunks, [&](int64_t task, int) {
        const int kk = int(task / chunks), c = int(task % chunks);
        compute_jit(buf, yi, kk, kk + 1, int(int64_t(n_tiles) * c / chunks), int(int64_t(n_tiles) * (c + 1) / chunks));
      });
      continue;
    }
    const ConvRows rows_n = rows_for(bad);
    const GroupSplit sp = split_groups(groups, rows_n.units(), S, threads, rows_n.form == ConvRows::Form::Bsr);
    float* yi = y + n * img_out;
    parallel_for(threads, sp.tasks(groups), [&](int64_t task, int) {
      int grp, u0, u1, s0, s1;
      sp.task(task, &grp, &u0, &u1, &s0, &s1);
      compute(buf, yi, rows_n, grp, u0, u1, s0, s1);
    });
  }
}

}  // namespace prunecal
