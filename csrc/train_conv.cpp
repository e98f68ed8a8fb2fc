// Driver of the sparse training conv (layouts: train_conv.h): geometry, packing, threading,
// and the ISA choice of its kernels. Work is split over images; a batch smaller than the thread
// count splits the forward pass of each image over output channels instead.
#include "train_conv.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

#include "common.h"  // cpu_has_avx2_fma
#include "plan.h"    // plan_avx512_active (CPU has AVX-512F, PRUNECAL_NO_AVX512 unset)
#include "thread_pool.h"

// The copy loops below run once per layer call over every input / gradient value: built for
// AVX-512F, AVX2 and the baseline ISA, the loader picks one for the CPU (GCC/Clang on x86-64 Linux).
#if defined(__x86_64__) && defined(__linux__) && (defined(__GNUC__) || defined(__clang__))
#define PRUNECAL_TRAIN_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#define PRUNECAL_TRAIN_INLINE inline __attribute__((always_inline))
#else
#define PRUNECAL_TRAIN_CLONES
#define PRUNECAL_TRAIN_INLINE inline
#endif

namespace prunecal {
namespace train_detail {

constexpr uint32_t kExp = 0x7f800000u;  // NaN / Inf: all exponent bits set

// d[i] = s[i] for i < n (bit copies); returns whether any value was NaN / Inf.
PRUNECAL_TRAIN_INLINE bool copy_check(uint32_t* __restrict d, const uint32_t* __restrict s, int n) {
  uint32_t m = 0;
  for (int i = 0; i < n; ++i) {
    const uint32_t u = s[i];
    d[i] = u;
    m |= uint32_t((u & kExp) == kExp);
  }
  return m != 0;
}

// d[j] = s[j * st] for j < n (bit copies); returns whether any value was NaN / Inf.
PRUNECAL_TRAIN_INLINE bool gather_check(uint32_t* __restrict d, const uint32_t* __restrict s, int n, int st) {
  uint32_t m = 0;
  for (int j = 0; j < n; ++j) {
    const uint32_t u = s[int64_t(j) * st];
    d[j] = u;
    m |= uint32_t((u & kExp) == kExp);
  }
  return m != 0;
}

// a[k] = s[2k], b[k] = s[2k + 1] for k < n (bit copies); returns whether any value was NaN / Inf.
PRUNECAL_TRAIN_INLINE bool deinterleave_check(uint32_t* __restrict a, uint32_t* __restrict b,
                                              const uint32_t* __restrict s, int n) {
  uint32_t m = 0;
  for (int k = 0; k < n; ++k) {
    const uint32_t u = s[2 * k], v = s[2 * k + 1];
    a[k] = u;
    b[k] = v;
    m |= uint32_t((u & kExp) == kExp) | uint32_t((v & kExp) == kExp);
  }
  return m != 0;
}

// d[j * st] = s[j] for j < n; returns whether any value was NaN / Inf.
PRUNECAL_TRAIN_INLINE bool scatter_check(uint32_t* __restrict d, const uint32_t* __restrict s, int n, int st) {
  uint32_t m = 0;
  for (int j = 0; j < n; ++j) {
    const uint32_t u = s[j];
    d[int64_t(j) * st] = u;
    m |= uint32_t((u & kExp) == kExp);
  }
  return m != 0;
}

PRUNECAL_TRAIN_CLONES bool any_nonfinite(const uint32_t* s, int64_t n) {
  uint32_t m = 0;
  for (int64_t i = 0; i < n; ++i) m |= uint32_t((s[i] & kExp) == kExp);
  return m != 0;
}

PRUNECAL_TRAIN_INLINE void copy_rows(float* __restrict d, int64_t d_pitch, const float* __restrict s, int64_t s_pitch,
                                     int rows, int n) {
  for (int r = 0; r < rows; ++r)
    for (int i = 0; i < n; ++i) d[r * d_pitch + i] = s[r * s_pitch + i];
}

inline const uint32_t* bits(const float* p) { return reinterpret_cast<const uint32_t*>(p); }
inline uint32_t* bits(float* p) { return reinterpret_cast<uint32_t*>(p); }

// One image (C, H, W) into its zero-padded phase planes (train_conv.h); `zero`: clear the
// buffer first (else its padding is known to be zero). Returns whether x holds NaN / Inf.
PRUNECAL_TRAIN_CLONES bool pack_x(const float* img, int C, const TrainGeom& g, float* planes, bool zero) {
  if (zero) std::memset(planes, 0, sizeof(float) * size_t(g.x_floats));
  const int s = g.stride, p = g.pad, H = g.H, W = g.W, Hq = g.Hq, Wq = g.Wq;
  bool bad = false;
  for (int c = 0; c < C; ++c) {
    const float* X = img + int64_t(c) * H * W;
    float* P0 = planes + c * g.chan;
    for (int y = 0; y < H; ++y) {
      const int Y = y + p, py = Y % s, i = Y / s;
      if (i >= Hq) continue;
      const float* src = X + int64_t(y) * W;
      if (s == 1) {
        const int n = std::min(W, Wq - p);
        if (n > 0) bad |= copy_check(bits(P0 + int64_t(i) * Wq + p), bits(src), n);
        continue;
      }
      if (s == 2) {  // one pass: x = 2k + e goes to phase (e + p) % 2, column (2k + e + p) / 2
        const int e0 = 0, e1 = 1;
        float* r0 = P0 + int64_t(py * 2 + ((e0 + p) & 1)) * g.pq + int64_t(i) * Wq + (e0 + p) / 2;
        float* r1 = P0 + int64_t(py * 2 + ((e1 + p) & 1)) * g.pq + int64_t(i) * Wq + (e1 + p) / 2;
        const int n0 = std::min((W + 1) / 2, Wq - (e0 + p) / 2), n1 = std::min(W / 2, Wq - (e1 + p) / 2);
        const int both = std::max(0, std::min(n0, n1));
        if (both) bad |= deinterleave_check(bits(r0), bits(r1), bits(src), both);
        if (n0 > both) bad |= gather_check(bits(r0 + both), bits(src + 2 * both), n0 - both, 2);
        if (n1 > both) bad |= gather_check(bits(r1 + both), bits(src + 2 * both + 1), n1 - both, 2);
        continue;
      }
      for (int px = 0; px < s; ++px) {
        float* row = P0 + int64_t(py * s + px) * g.pq + int64_t(i) * Wq;
        // columns j with x = j * s + px - p in [0, W)
        const int j_lo = p > px ? (p - px + s - 1) / s : 0;
        const int last = W - 1 + p - px;
        const int j_hi = last < 0 ? j_lo : std::min(Wq, last / s + 1);
        if (j_hi > j_lo) bad |= gather_check(bits(row + j_lo), bits(src + j_lo * s + px - p), j_hi - j_lo, s);
      }
    }
  }
  return bad;
}

// dy (C_out, Ho, Wo) of one image into wide rows of pw (zeros off the output grid); `zero` as in
// pack_x. Returns whether dy holds NaN / Inf.
PRUNECAL_TRAIN_CLONES bool pack_dy_wide(const float* dy, int Co, const TrainGeom& g, float* out, bool zero) {
  if (zero) std::memset(out, 0, sizeof(float) * size_t(Co * g.pw));
  bool bad = false;
  for (int co = 0; co < Co; ++co)
    for (int oy = 0; oy < g.Ho; ++oy)
      bad |= copy_check(bits(out + co * g.pw + int64_t(oy) * g.Wq), bits(dy + (int64_t(co) * g.Ho + oy) * g.Wo), g.Wo);
  return bad;
}

// dy (C_out, Ho, Wo) of one image zero-inserted and padded into planes of Hb x Wb; `zero` as in
// pack_x. Returns whether the values it placed hold NaN / Inf (all of dy when padding < kh, kw).
PRUNECAL_TRAIN_CLONES bool pack_dy_planes(const float* dy, int Co, int kh, int kw, const TrainGeom& g, float* out, bool zero) {
  if (zero) std::memset(out, 0, sizeof(float) * size_t(g.dy_floats));
  const int s = g.stride, Py = kh - 1 - g.pad, Px = kw - 1 - g.pad;
  // output columns ox with X = Px + ox * s in [0, Wb)
  const int o_lo = Px < 0 ? (-Px + s - 1) / s : 0;
  const int o_hi = std::min(g.Wo, (g.Wb - 1 - Px) < 0 ? 0 : (g.Wb - 1 - Px) / s + 1);
  if (o_hi <= o_lo) return false;
  bool bad = false;
  for (int co = 0; co < Co; ++co) {
    float* P = out + co * g.pqb;
    for (int oy = 0; oy < g.Ho; ++oy) {
      const int Y = Py + oy * s;
      if (Y < 0 || Y >= g.Hb) continue;
      const float* src = dy + (int64_t(co) * g.Ho + oy) * g.Wo + o_lo;
      float* row = P + int64_t(Y) * g.Wb + Px + o_lo * s;
      if (s == 1) bad |= copy_check(bits(row), bits(src), o_hi - o_lo);
      else bad |= scatter_check(bits(row), bits(src), o_hi - o_lo, s);
    }
  }
  return bad;
}

// Rows [r0, r1) of wide rows (pitch pw, row width wq) into (rows, ho, wo) planes.
PRUNECAL_TRAIN_CLONES void extract(const float* wide, int64_t pw, int wq, int r0, int r1, int ho, int wo, float* out) {
  for (int r = r0; r < r1; ++r)
    copy_rows(out + int64_t(r) * ho * wo, wo, wide + r * pw, wq, ho, wo);
}

}  // namespace train_detail

namespace {

using namespace train_detail;

int64_t round16(int64_t n) { return (n + 15) / 16 * 16; }

// The calling thread's scratch buffer number `i` (at least n floats). With `g`, *fresh tells
// whether the buffer may hold anything but a previous packing of the same geometry (so that
// its zero borders must be cleared).
float* scratch(int i, int64_t n, const std::shared_ptr<const TrainGeom>& g = nullptr, bool* fresh = nullptr) {
  struct Buf {
    std::vector<float> data;
    std::shared_ptr<const TrainGeom> layout;  // kept alive: the pointer cannot be reused
  };
  thread_local Buf bufs[6];
  Buf& b = bufs[i];
  if (int64_t(b.data.size()) < n) {
    b.data.assign(size_t(n), 0.f);
    b.layout = nullptr;
  }
  if (fresh) {
    *fresh = b.layout != g;
    b.layout = g;
  }
  return b.data.data();
}

// An NHWC image (H, W, C) straight into the zero-padded planes of a stride-1 geometry, one
// transpose per image row (no NCHW copy); `zero` as in pack_x.
void pack_x_nhwc_s1(const float* img, int C, const TrainGeom& g, float* planes, bool zero, const TrainKernels& k) {
  if (zero) std::memset(planes, 0, sizeof(float) * size_t(g.x_floats));
  const int n = std::min(g.W, g.Wq - g.pad);
  if (n <= 0) return;
  for (int y = 0; y < g.H && y + g.pad < g.Hq; ++y)
    k.transpose(img + int64_t(y) * g.W * C, C, planes + int64_t(y + g.pad) * g.Wq + g.pad, g.chan, n, C);
}

// Wide rows (channel pitch pw, row width wq) of one image straight into an NHWC (ho, wo, rows)
// output, one transpose per output row.
void extract_nhwc(const float* wide, int64_t pw, int wq, int rows, int ho, int wo, float* out, const TrainKernels& k) {
  for (int y = 0; y < ho; ++y)
    k.transpose(wide + int64_t(y) * wq, pw, out + int64_t(y) * wo * rows, rows, rows, wo);
}

}  // namespace

const TrainKernels& select_train_kernels(const char* isa) {
  const std::string s = isa ? isa : "auto";
#if defined(PRUNECAL_HAVE_AVX2_TU)
  if ((s == "auto" || s == "avx512") && plan_avx512_active()) return train_kernels_avx512();
  if (s == "avx512")
    throw std::invalid_argument("isa: 'avx512' is not supported by this CPU (or PRUNECAL_NO_AVX512 / PRUNECAL_ISA is set)");
  if (s == "auto" && (isa_config().isa == Isa::Avx2 || isa_config().isa == Isa::Avx512))
    return train_kernels_avx2();
  if (s == "avx2" && cpu_has_avx2_fma()) return train_kernels_avx2();
#endif
  if (s == "auto" || s == "generic") return train_kernels_generic();
  if (s == "avx2" || s == "avx512")
    throw std::invalid_argument("isa: '" + s + "' is not supported by this CPU or build");
  throw std::invalid_argument("isa: expected 'auto', 'avx512', 'avx2' or 'generic', got '" + s + "'");
}

TrainConv::TrainConv(std::vector<int32_t> indptr, std::vector<int32_t> indices, std::array<int, 4> shape,
                     int groups)
    : shape_(shape), groups_(groups), indptr_(std::move(indptr)), indices_(std::move(indices)) {
  const int Co = shape[0], Cg = shape[1], kh = shape[2], kw = shape[3];
  if (Co < 1 || Cg < 1 || kh < 1 || kw < 1 || int64_t(Cg) * kh * kw >= (int64_t(1) << 31))
    throw std::invalid_argument("shape: expected positive (C_out, C_in/groups, kh, kw)");
  if (groups < 1 || Co % groups)
    throw std::invalid_argument("groups: " + std::to_string(groups) + " must be >= 1 and divide C_out=" +
                                std::to_string(Co));
  const int32_t K = Cg * kh * kw;
  if (int64_t(indptr_.size()) != int64_t(Co) + 1 || indptr_[0] != 0 || indptr_[Co] != int32_t(indices_.size()))
    throw std::invalid_argument("indptr: expected C_out + 1 row pointers from 0 to nnz");
  for (int r = 0; r < Co; ++r) {
    if (indptr_[r + 1] < indptr_[r]) throw std::invalid_argument("indptr: must be non-decreasing");
    for (int32_t j = indptr_[r]; j < indptr_[r + 1]; ++j) {
      if (indices_[j] < 0 || indices_[j] >= K)
        throw std::invalid_argument("indices: column out of range [0, " + std::to_string(K) + ")");
      if (j > indptr_[r] && indices_[j] <= indices_[j - 1])
        throw std::invalid_argument("indices: must be strictly increasing within a row");
    }
  }
  // transposed pattern: rows = input channels (group base included), entries ordered by (co, tap)
  const int C = Cg * groups, Cog = Co / groups, taps = kh * kw;
  t_indptr_.assign(size_t(C) + 1, 0);
  for (int r = 0; r < Co; ++r)
    for (int32_t j = indptr_[r]; j < indptr_[r + 1]; ++j) ++t_indptr_[size_t((r / Cog) * Cg + indices_[j] / taps) + 1];
  for (int c = 0; c < C; ++c) t_indptr_[c + 1] += t_indptr_[c];
  std::vector<int32_t> fill(t_indptr_.begin(), t_indptr_.end() - 1);
  t_perm_.resize(indices_.size());
  t_co_.resize(indices_.size());
  t_tap_.resize(indices_.size());
  for (int r = 0; r < Co; ++r)
    for (int32_t j = indptr_[r]; j < indptr_[r + 1]; ++j) {
      const int ci = (r / Cog) * Cg + indices_[j] / taps;
      const int32_t pos = fill[ci]++;
      t_perm_[pos] = j;
      t_co_[pos] = r;
      t_tap_[pos] = indices_[j] % taps;
    }
}

std::shared_ptr<const TrainGeom> TrainConv::geometry(int H, int W, int s, int p) {
  const auto key = std::make_tuple(H, W, s, p);
  std::lock_guard<std::mutex> lk(mutex_);
  auto it = geoms_.find(key);
  if (it != geoms_.end()) return it->second;
  const int Co = shape_[0], Cg = shape_[1], kh = shape_[2], kw = shape_[3], C = cin(), Cog = Co / groups_;
  if (s < 1 || s > 64) throw std::invalid_argument("stride: expected 1..64, got " + std::to_string(s));
  if (p < 0 || p > 1024) throw std::invalid_argument("padding: expected 0..1024, got " + std::to_string(p));
  if (H < 1 || W < 1 || H >= (1 << 20) || W >= (1 << 20)) throw std::invalid_argument("x: bad spatial size");
  if (H + 2 * p < kh || W + 2 * p < kw)
    throw std::invalid_argument("x: input (" + std::to_string(H) + "x" + std::to_string(W) + ", padding " +
                                std::to_string(p) + ") smaller than the kernel");
  auto gp = std::make_shared<TrainGeom>();
  TrainGeom& g = *gp;
  g.H = H, g.W = W, g.stride = s, g.pad = p;
  g.Ho = (H + 2 * p - kh) / s + 1, g.Wo = (W + 2 * p - kw) / s + 1;
  g.Hq = g.Ho + (kh - 1) / s, g.Wq = g.Wo + (kw - 1) / s;
  g.pq = int64_t(g.Hq) * g.Wq, g.chan = int64_t(s) * s * g.pq;
  g.pw = round16(int64_t(g.Ho) * g.Wq);
  g.x_floats = C * g.chan + 64 + kw;
  g.Hb = H + kh - 1, g.Wb = W + kw - 1;
  g.pqb = int64_t(g.Hb) * g.Wb, g.pwb = round16(int64_t(H) * g.Wb);
  g.dy_floats = Co * g.pqb + 64 + kw;
  const int64_t lim = (int64_t(1) << 31) - 1;
  if (g.x_floats >= lim || g.dy_floats >= lim || int64_t(Co) * g.pw >= lim || int64_t(C) * g.pwb >= lim)
    throw std::invalid_argument("x: image too large for 32-bit offsets");
  g.off.resize(indices_.size());
  for (int r = 0; r < Co; ++r)
    for (int32_t j = indptr_[r]; j < indptr_[r + 1]; ++j) {
      const int ci = (r / Cog) * Cg + indices_[j] / (kh * kw), tap = indices_[j] % (kh * kw);
      const int ky = tap / kw, kx = tap % kw;
      g.off[j] = int32_t(ci * g.chan + ((ky % s) * s + kx % s) * g.pq + (ky / s) * g.Wq + kx / s);
    }
  g.toff.resize(indices_.size());
  for (size_t e = 0; e < indices_.size(); ++e) {
    const int ky = t_tap_[e] / kw, kx = t_tap_[e] % kw;
    g.toff[e] = int32_t(t_co_[e] * g.pqb + (kh - 1 - ky) * g.Wb + (kw - 1 - kx));
  }
  geoms_.emplace(key, gp);
  return gp;
}

void TrainConv::forward(const float* x, int N, int H, int W, const float* val, float* y, int stride, int pad,
                        int threads, const TrainKernels& k, bool nhwc) {
  auto gp = geometry(H, W, stride, pad);
  const TrainGeom& g = *gp;
  if (N <= 0) return;
  const int C = cin(), Co = rows(), nv = int(g.pw / k.lanes);
  const int64_t img_in = int64_t(C) * H * W, img_out = int64_t(Co) * g.Ho * g.Wo, hw_out = int64_t(g.Ho) * g.Wo;
  std::atomic<bool> bad{false};
  // image n as (C, H, W): x itself, or its NHWC copy transposed into scratch buffer 4
  auto image = [&](int64_t n) {
    if (!nhwc) return x + n * img_in;
    float* t = scratch(4, img_in);
    k.transpose(x + n * img_in, C, t, int64_t(H) * W, H * W, C);
    return static_cast<const float*>(t);
  };
  if (threads <= 1 || N >= threads) {
    parallel_for(threads, N, [&](int64_t n, int) {
      bool fresh;
      float* planes = scratch(0, g.x_floats, gp, &fresh);
      float* wide = scratch(1, Co * g.pw);
      if (nhwc && stride == 1) {
        if (any_nonfinite(bits(x + n * img_in), img_in)) bad.store(true);
        pack_x_nhwc_s1(x + n * img_in, C, g, planes, fresh, k);
      } else if (pack_x(image(n), C, g, planes, fresh)) {
        bad.store(true);
      }
      k.gather(planes, indptr_.data(), g.off.data(), val, 0, Co, 0, nv, wide, g.pw);
      if (nhwc) extract_nhwc(wide, g.pw, g.Wq, Co, g.Ho, g.Wo, y + n * img_out, k);
      else extract(wide, g.pw, g.Wq, 0, Co, g.Ho, g.Wo, y + n * img_out);
    });
  } else {
    std::vector<float> planes(size_t(g.x_floats)), wide(size_t(Co * g.pw)), out(nhwc ? size_t(img_out) : 0);
    const int chunks = std::min(Co, 4 * threads);
    for (int64_t n = 0; n < N; ++n) {
      if (pack_x(image(n), C, g, planes.data(), false)) bad.store(true);
      float* yi = nhwc ? out.data() : y + n * img_out;
      parallel_for(threads, chunks, [&](int64_t t, int) {
        const int r0 = int(int64_t(Co) * t / chunks), r1 = int(int64_t(Co) * (t + 1) / chunks);
        k.gather(planes.data(), indptr_.data(), g.off.data(), val, r0, r1, 0, nv, wide.data(), g.pw);
        extract(wide.data(), g.pw, g.Wq, r0, r1, g.Ho, g.Wo, yi);
      });
      if (nhwc) k.transpose(out.data(), hw_out, y + n * img_out, Co, Co, int(hw_out));
    }
  }
  if (bad.load()) throw std::domain_error("x: holds NaN or Inf");
}

void TrainConv::backward(const float* x, const float* dy, int N, int H, int W, const float* val, float* dx,
                         float* dval, int stride, int pad, int threads, const TrainKernels& k, bool nhwc) {
  auto gp = geometry(H, W, stride, pad);
  const TrainGeom& g = *gp;
  const int C = cin(), Co = rows(), kh = shape_[2], kw = shape_[3];
  const int64_t nz = nnz();
  if (dval) std::fill(dval, dval + nz, 0.f);
  if (N <= 0) return;
  const int nvx = int(g.pw / k.lanes), nvb = int(g.pwb / k.lanes);
  const int cv = std::max(1, 512 / k.lanes);  // vectors per weight-gradient chunk (input window in L1)
  const int64_t img_in = int64_t(C) * H * W, img_out = int64_t(Co) * g.Ho * g.Wo;
  std::vector<float> tval;
  if (dx) {
    tval.resize(size_t(nz));
    for (int64_t e = 0; e < nz; ++e) tval[size_t(e)] = val[t_perm_[size_t(e)]];
  }
  const int workers = std::max(1, std::min<int>(threads, N));
  std::vector<float> acc(dval ? size_t(workers) * size_t(nz) * 16 : 0, 0.f);
  std::atomic<bool> bad{false};
  const int64_t hw_in = int64_t(H) * W, hw_out = int64_t(g.Ho) * g.Wo;
  // stride 1, "same" padding: the input gradient's dy planes, read from (pad, pad), are the weight
  // gradient's wide rows too (padding columns = zero junk columns), when the reads past a plane's
  // last row stay in zeros (the next plane's top padding rows, or the slack after the last)
  const int P = kh - 1 - pad;
  const bool shared = dx && stride == 1 && 2 * pad == kh - 1 && 2 * pad == kw - 1 && P + 16 <= 2 * P * g.Wb;
  // NHWC: the gradient goes straight into those planes when nothing else needs it as (C_out, Ho, Wo)
  const bool direct = nhwc && shared;
  // images in `workers` fixed runs, run t summing into accumulator t: the weight gradient's
  // order of additions depends on the thread count only, not on which thread ran what
  auto image = [&](int64_t n, float* a) {
    const float* dyi = dy + n * img_out;
    if (nhwc && !direct) {  // (C_out, Ho, Wo) copy of the gradient in scratch buffer 4
      float* t = scratch(4, img_out);
      k.transpose(dyi, Co, t, hw_out, int(hw_out), Co);
      dyi = t;
    }
    bool checked = false;
    float* dyp = nullptr;
    if (dx) {
      bool fresh;
      dyp = scratch(3, g.dy_floats, gp, &fresh);
      if (direct) {
        if (fresh) std::memset(dyp, 0, sizeof(float) * size_t(g.dy_floats));
        for (int oy = 0; oy < g.Ho; ++oy)
          k.transpose(dyi + int64_t(oy) * g.Wo * Co, Co, dyp + int64_t(P + oy) * g.Wb + P, g.pqb, g.Wo, Co);
      } else if (pack_dy_planes(dyi, Co, kh, kw, g, dyp, fresh)) {
        bad.store(true);
      }
      checked = !direct && pad <= kh - 1 && pad <= kw - 1;  // every value of dy was placed (and checked)
    }
    if (dval && nz) {
      bool fresh_x;
      float* planes = scratch(0, g.x_floats, gp, &fresh_x);
      const float* xi = x + n * img_in;  // (checked by the forward pass)
      if (nhwc && stride == 1) {
        pack_x_nhwc_s1(xi, C, g, planes, fresh_x, k);
      } else {
        if (nhwc) {
          float* t = scratch(5, img_in);
          k.transpose(xi, C, t, hw_in, int(hw_in), C);
          xi = t;
        }
        pack_x(xi, C, g, planes, fresh_x);
      }
      const float* dyw;
      int64_t dyw_stride;
      if (shared) {
        dyw = dyp + int64_t(P) * g.Wb + P;
        dyw_stride = g.pqb;
      } else {
        bool fresh_dy;
        float* buf = scratch(2, Co * g.pw, gp, &fresh_dy);
        if (pack_dy_wide(dyi, Co, g, buf, fresh_dy)) bad.store(true);
        checked = true;
        dyw = buf;
        dyw_stride = g.pw;
      }
      for (int v0 = 0; v0 < nvx; v0 += cv)
        k.sdd(planes, dyw, dyw_stride, indptr_.data(), g.off.data(), 0, Co, v0, std::min(nvx, v0 + cv), a);
    }
    if (!checked && any_nonfinite(bits(dyi), img_out)) bad.store(true);  // (the NHWC gradient when direct)
    if (dx) {
      float* wide = scratch(1, C * g.pwb);
      k.gather(dyp, t_indptr_.data(), g.toff.data(), tval.data(), 0, C, 0, nvb, wide, g.pwb);
      if (nhwc) extract_nhwc(wide, g.pwb, g.Wb, C, H, W, dx + n * img_in, k);
      else extract(wide, g.pwb, g.Wb, 0, C, H, W, dx + n * img_in);
    }
  };
  parallel_for(workers, workers, [&](int64_t t, int) {
    float* a = dval ? acc.data() + size_t(t) * size_t(nz) * 16 : nullptr;
    for (int64_t n = N * t / workers; n < N * (t + 1) / workers; ++n) image(n, a);
  });
  if (bad.load()) throw std::domain_error("grad_output: holds NaN or Inf");
  if (dval)
    for (int64_t j = 0; j < nz; ++j) {
      float s = 0.f;
      for (int w = 0; w < workers; ++w) {
        const float* a = acc.data() + (size_t(w) * size_t(nz) + size_t(j)) * 16;
        for (int l = 0; l < 16; ++l) s += a[l];
      }
      dval[j] = s;
    }
}

}  // namespace prunecal
