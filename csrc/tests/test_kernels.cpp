// Native test of the sparse kernels (no Python, no pybind11): every kernel set this build and CPU
// offer ("generic", "avx2" on x86-64 with AVX2+FMA, "neon" on AArch64) against an independent
// scalar reference (dense convolution in double) over random shapes: stride 1 / 2 / 3, padding,
// dilation, groups, sparsity 0 to 0.99 (empty rows included), batch 1 and 8, 1 and 2 threads,
// CSR and BSR (4 and 8 rows), bias, ReLU, NaN / Inf inputs; the sparse linear; bad input (must
// throw std::invalid_argument, never crash); and the whole-network Plan on a small CIFAR ResNet
// (fixed-shape tiles, fused residuals, option-A shortcuts, stride-2 gathers, a grouped conv, an
// add, global pooling, linear) for CSR and BSR weights, every run mode.
//
// Variants chosen once per process by the environment (PRUNECAL_NO_JIT, PRUNECAL_NO_AVX512) are
// covered by running the program once per setting (tests/test_native_kernels.py does).
//
// Build: cmake -S . -B build/native -DPRUNECAL_EXTENSION=OFF -DPRUNECAL_NATIVE_TESTS=ON &&
//        cmake --build build/native && build/native/test_kernels [--seed N] [--cases N]
// Exit status 0 when every check passed, 1 otherwise (the first failures are printed).
#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "common.h"
#include "jit_conv.h"
#include "packed_weight.h"
#include "plan.h"
#include "plan_lanes.h"

using namespace prunecal;

namespace {

int g_failures = 0;
int64_t g_checks = 0;

void fail(const std::string& what) {
  if (++g_failures <= 20) std::printf("FAIL %s\n", what.c_str());
}

using Rng = std::mt19937_64;

float uniform(Rng& r, float lo, float hi) { return std::uniform_real_distribution<float>(lo, hi)(r); }
int irange(Rng& r, int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(r); }  // inclusive
template <class T>
T pick(Rng& r, std::initializer_list<T> v) {
  return *(v.begin() + irange(r, 0, int(v.size()) - 1));
}

// ---------------------------------------------------------------- weights

// Dense weight (rows x cols) with each entry zero with probability `sparsity`; a few rows forced
// empty at high sparsity. Values scaled by `scale`.
std::vector<float> random_weight(Rng& r, int rows, int64_t cols, double sparsity, float scale) {
  std::vector<float> w(size_t(rows * cols));
  std::bernoulli_distribution zero(sparsity);
  for (auto& v : w) v = zero(r) ? 0.f : uniform(r, -scale, scale);
  return w;
}

struct Sparse {
  std::string kind;
  int block_rows = 1;
  std::vector<float> values;
  std::vector<int32_t> indptr, indices;
};

Sparse to_csr(const std::vector<float>& w, int rows, int64_t cols) {
  Sparse s;
  s.kind = "csr";
  s.indptr.push_back(0);
  for (int i = 0; i < rows; ++i) {
    for (int64_t c = 0; c < cols; ++c)
      if (w[size_t(i * cols + c)] != 0.f) {
        s.values.push_back(w[size_t(i * cols + c)]);
        s.indices.push_back(int32_t(c));
      }
    s.indptr.push_back(int32_t(s.indices.size()));
  }
  return s;
}

// Blocks of `r` consecutive rows x 1 column; a block is stored when any of its rows is nonzero.
Sparse to_bsr(const std::vector<float>& w, int rows, int64_t cols, int r) {
  Sparse s;
  s.kind = "bsr";
  s.block_rows = r;
  s.indptr.push_back(0);
  for (int br = 0; br * r < rows; ++br) {
    for (int64_t c = 0; c < cols; ++c) {
      bool any = false;
      for (int i = 0; i < r && br * r + i < rows; ++i) any = any || w[size_t((br * r + i) * cols + c)] != 0.f;
      if (!any) continue;
      for (int i = 0; i < r; ++i) s.values.push_back(br * r + i < rows ? w[size_t((br * r + i) * cols + c)] : 0.f);
      s.indices.push_back(int32_t(c));
    }
    s.indptr.push_back(int32_t(s.indices.size()));
  }
  return s;
}

Sparse pack(const std::vector<float>& w, int rows, int64_t cols, const std::string& kind) {
  if (kind == "bsr4") return to_bsr(w, rows, cols, 4);
  if (kind == "bsr8") return to_bsr(w, rows, cols, 8);
  return to_csr(w, rows, cols);
}

// ---------------------------------------------------------------- reference (double)

struct ConvSpec {
  int N = 1, C = 1, H = 1, W = 1, Co = 1, kh = 1, kw = 1, stride = 1, pad = 0, dil = 1, groups = 1;
  bool relu = false, bias = false;
  int Ho() const { return (H + 2 * pad - dil * (kh - 1) - 1) / stride + 1; }
  int Wo() const { return (W + 2 * pad - dil * (kw - 1) - 1) / stride + 1; }
  int64_t K() const { return int64_t(C / groups) * kh * kw; }
  std::string str() const {
    char b[256];
    std::snprintf(b, sizeof b, "N%d C%d %dx%d -> Co%d k%dx%d s%d p%d d%d g%d%s%s", N, C, H, W, Co, kh, kw, stride, pad,
                  dil, groups, relu ? " relu" : "", bias ? " bias" : "");
    return b;
  }
};

// y and sum |w x| (for the tolerance) per output, for input values of type T (float images, or
// the double activations of the network reference). Zero weights are skipped only for images
// without NaN / Inf: there every weight enters, so NaN * 0 = NaN as in torch's dense convolution.
template <class T>
void ref_conv(const ConvSpec& s, const T* x, const std::vector<float>& w, const float* bias, std::vector<double>& y,
              std::vector<double>& mag) {
  const int Ho = s.Ho(), Wo = s.Wo(), Cg = s.C / s.groups, Cog = s.Co / s.groups;
  const int64_t K = s.K(), img = int64_t(s.C) * s.H * s.W, plane = int64_t(Ho) * Wo;
  y.assign(size_t(s.N) * s.Co * plane, 0.0);
  mag.assign(y.size(), 0.0);
  for (int n = 0; n < s.N; ++n) {
    const T* xn = x + n * img;
    bool finite = true;
    for (int64_t i = 0; i < img; ++i) finite = finite && std::isfinite(double(xn[i]));
    for (int co = 0; co < s.Co; ++co) {
      double* yo = y.data() + (int64_t(n) * s.Co + co) * plane;
      double* mo = mag.data() + (int64_t(n) * s.Co + co) * plane;
      const T* xg = xn + int64_t(co / Cog) * Cg * s.H * s.W;
      for (int ci = 0; ci < Cg; ++ci)
        for (int ky = 0; ky < s.kh; ++ky)
          for (int kx = 0; kx < s.kw; ++kx) {
            const double wv = w[size_t(co * K + (ci * s.kh + ky) * s.kw + kx)];
            if (wv == 0.0 && finite) continue;
            for (int oy = 0; oy < Ho; ++oy) {
              const int iy = oy * s.stride - s.pad + ky * s.dil;
              if (iy < 0 || iy >= s.H) continue;
              const T* xr = xg + (int64_t(ci) * s.H + iy) * s.W;
              for (int ox = 0; ox < Wo; ++ox) {
                const int ix = ox * s.stride - s.pad + kx * s.dil;
                if (ix < 0 || ix >= s.W) continue;
                const double t = wv * double(xr[ix]);
                yo[oy * Wo + ox] += t;
                mo[oy * Wo + ox] += std::fabs(t);
              }
            }
          }
      const double b = bias ? bias[co] : 0.0;
      for (int64_t q = 0; q < plane; ++q) {
        yo[q] += b;
        mo[q] += std::fabs(b);
        if (s.relu && yo[q] < 0) yo[q] = 0;  // (NaN stays NaN)
      }
    }
  }
}

// got vs reference: NaN exactly where the reference is NaN, infinities equal, finite values
// within float rounding of a sum of that magnitude.
bool close(float got, double want, double mag, double rel = 2e-5) {
  if (std::isnan(want)) return std::isnan(got);
  if (std::isinf(want)) return double(got) == want;
  if (!std::isfinite(got)) return false;
  return std::fabs(double(got) - want) <= rel * mag + 1e-6;
}

bool check_outputs(const std::string& what, const std::vector<float>& got, const std::vector<double>& want,
                   const std::vector<double>& mag, double rel = 2e-5) {
  ++g_checks;
  for (size_t i = 0; i < got.size(); ++i)
    if (!close(got[i], want[i], mag[i], rel)) {
      char b[160];
      std::snprintf(b, sizeof b, " [output %zu of %zu: got %.9g, want %.9g (|w x| sum %.3g)]", i, got.size(),
                    double(got[i]), want[i], mag[i]);
      fail(what + b);
      return false;
    }
  return true;
}

// ---------------------------------------------------------------- kernel sets

std::vector<const KernelSet*> kernel_sets() {
  std::vector<const KernelSet*> out;
  for (const char* name : {"generic", "avx2", "neon"}) {
    try {
      out.push_back(&select_kernels(name));
    } catch (const std::invalid_argument&) {
      std::printf("kernel set %-7s: not available on this CPU / build\n", name);
    }
  }
  return out;
}

// ---------------------------------------------------------------- conv

void run_conv_case(Rng& r, const ConvSpec& s, double sparsity, const std::string& kind, int threads, bool nonfinite,
                   const std::vector<const KernelSet*>& sets) {
  const int Cg = s.C / s.groups;
  const float scale = 1.f / std::sqrt(float(std::max<int64_t>(1, s.K())));
  std::vector<float> w = random_weight(r, s.Co, s.K(), sparsity, 3.f * scale);
  std::vector<float> bias(size_t(s.Co));
  for (auto& b : bias) b = uniform(r, -0.5f, 0.5f);
  std::vector<float> x(size_t(s.N) * s.C * s.H * s.W);
  for (auto& v : x) v = uniform(r, -1.f, 1.f);
  if (nonfinite) {  // one NaN or Inf in image 0 (others stay finite: per-image fallback)
    const float bad = pick(r, {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                               -std::numeric_limits<float>::infinity()});
    x[size_t(irange(r, 0, s.C * s.H * s.W - 1))] = bad;
  }
  std::vector<double> want, mag;
  ref_conv(s, x.data(), w, s.bias ? bias.data() : nullptr, want, mag);
  const Sparse sp = pack(w, s.Co, s.K(), kind);
  PackedWeight pw(sp.kind, sp.values, sp.indptr, sp.indices, {s.Co, Cg, s.kh, s.kw}, sp.block_rows);
  std::vector<float> y(want.size());
  for (const KernelSet* k : sets) {
    std::fill(y.begin(), y.end(), -12345.f);
    pw.conv2d(x.data(), s.N, s.C, s.H, s.W, y.data(), s.bias ? bias.data() : nullptr, s.stride, s.pad, s.dil, s.groups,
              s.relu, threads, *k);
    char b[128];
    std::snprintf(b, sizeof b, " %s sparsity %.2f threads %d%s", kind.c_str(), sparsity, threads,
                  nonfinite ? " nonfinite" : "");
    check_outputs(std::string("conv ") + k->name + " " + s.str() + b, y, want, mag);
  }
}

int test_conv(Rng& r, int cases, const std::vector<const KernelSet*>& sets) {
  int n = 0;
  // the CIFAR ResNet shapes (fixed-shape tiles): 3x3, pad 1, stride 1 on 32/16/8, stride 2 32->16, 16->8
  const std::array<std::array<int, 5>, 6> cifar{{{16, 16, 32, 1, 0}, {32, 32, 16, 1, 0}, {64, 64, 8, 1, 0},
                                                 {16, 32, 32, 2, 0}, {32, 64, 16, 2, 0}, {3, 16, 32, 1, 0}}};
  for (const auto& c : cifar)
    for (double sp : {0.0, 0.9})
      for (int N : {1, 8}) {
        ConvSpec s;
        s.N = N, s.C = c[0], s.Co = c[1], s.H = s.W = c[2], s.stride = c[3], s.kh = s.kw = 3, s.pad = 1;
        s.relu = N == 8, s.bias = true;
        for (const char* kind : {"csr", "bsr4"}) {
          run_conv_case(r, s, sp, kind, N == 8 ? 2 : 1, false, sets);
          ++n;
        }
      }
  for (int i = 0; i < cases; ++i) {
    ConvSpec s;
    s.groups = pick(r, {1, 1, 1, 2, 3, 4});
    const int cg = irange(r, 1, 9), cog = pick(r, {1, 2, 3, 4, 5, 7, 8, 12, 16});
    s.C = cg * s.groups, s.Co = cog * s.groups;
    if (irange(r, 0, 9) == 0) s.groups = s.C = s.Co = irange(r, 2, 12);  // depthwise
    s.kh = pick(r, {1, 2, 3, 3, 3, 5}), s.kw = irange(r, 0, 3) ? s.kh : pick(r, {1, 3});
    s.stride = pick(r, {1, 1, 2, 2, 3});
    s.dil = irange(r, 0, 5) ? 1 : 2;
    s.pad = irange(r, 0, std::max(s.kh, s.kw) / 2 * s.dil + 1);
    s.H = irange(r, 1, 21), s.W = irange(r, 1, 21);
    s.N = pick(r, {1, 1, 8, 8, 3});
    s.relu = irange(r, 0, 1), s.bias = irange(r, 0, 1);
    if (s.H + 2 * s.pad < s.dil * (s.kh - 1) + 1 || s.W + 2 * s.pad < s.dil * (s.kw - 1) + 1) {
      --i;  // no output: redraw (too small inputs are a bad-input check below)
      continue;
    }
    const double sp = pick(r, {0.0, 0.3, 0.5, 0.7, 0.9, 0.95, 0.99, double(uniform(r, 0.f, 1.f))});
    const std::string kind = pick(r, {std::string("csr"), std::string("csr"), std::string("bsr4"), std::string("bsr8")});
    run_conv_case(r, s, sp, kind, pick(r, {1, 2}), irange(r, 0, 7) == 0, sets);
    ++n;
  }
  return n;
}

// ---------------------------------------------------------------- linear

int test_linear(Rng& r, int cases, const std::vector<const KernelSet*>& sets) {
  int n = 0;
  for (int i = 0; i < cases; ++i) {
    const int N = pick(r, {1, 2, 8, 13, 64}), K = irange(r, 1, 300), O = irange(r, 1, 70);
    const double sp = pick(r, {0.0, 0.5, 0.9, 0.99});
    const std::string kind = pick(r, {std::string("csr"), std::string("bsr4"), std::string("bsr8")});
    const bool relu = irange(r, 0, 1), has_bias = irange(r, 0, 1), nonfin = irange(r, 0, 5) == 0;
    std::vector<float> w = random_weight(r, O, K, sp, 1.f);
    std::vector<float> bias(static_cast<size_t>(O)), x(static_cast<size_t>(N) * K);
    for (auto& v : bias) v = uniform(r, -1.f, 1.f);
    for (auto& v : x) v = uniform(r, -1.f, 1.f);
    if (nonfin) x[size_t(irange(r, 0, K - 1))] = std::numeric_limits<float>::quiet_NaN();  // sample 0
    std::vector<double> want(size_t(N) * O), mag(want.size());
    for (int s = 0; s < N; ++s)
      for (int o = 0; o < O; ++o) {
        double acc = has_bias ? bias[size_t(o)] : 0.0, m = std::fabs(acc);
        for (int c = 0; c < K; ++c) {
          const double t = double(w[size_t(o) * K + c]) * x[size_t(s) * K + c];
          acc += t;
          m += std::fabs(t);
        }
        if (relu && acc < 0) acc = 0;
        want[size_t(s) * O + o] = acc, mag[size_t(s) * O + o] = m;
      }
    const Sparse spw = pack(w, O, K, kind);
    PackedWeight pw(spw.kind, spw.values, spw.indptr, spw.indices, {O, K, 1, 1}, spw.block_rows);
    std::vector<float> y(want.size());
    for (const KernelSet* k : sets)
      for (int threads : {1, 2}) {
        pw.linear(x.data(), N, y.data(), has_bias ? bias.data() : nullptr, relu, threads, *k);
        char b[160];
        std::snprintf(b, sizeof b, "linear %s %s N%d %d->%d sparsity %.2f threads %d%s%s%s", k->name, kind.c_str(), N, K,
                      O, sp, threads, relu ? " relu" : "", has_bias ? " bias" : "", nonfin ? " nan" : "");
        check_outputs(b, y, want, mag);
      }
    ++n;
  }
  return n;
}

// ---------------------------------------------------------------- bad input

int test_bad_input() {
  int n = 0;
  auto expect_throw = [&](const char* what, const std::function<void()>& fn) {
    ++n, ++g_checks;
    try {
      fn();
    } catch (const std::invalid_argument&) {
      return;
    } catch (const std::exception& e) {
      fail(std::string("bad input '") + what + "': threw " + e.what() + ", not std::invalid_argument");
      return;
    }
    fail(std::string("bad input '") + what + "': accepted");
  };
  using V = std::vector<float>;
  using I = std::vector<int32_t>;
  const std::array<int, 4> sh{2, 1, 3, 3};
  expect_throw("unknown kind", [&] { PackedWeight("coo", V{}, I{0, 0, 0}, I{}, sh, 1); });
  expect_throw("indptr length", [&] { PackedWeight("csr", V{}, I{0, 0}, I{}, sh, 1); });
  expect_throw("indptr start", [&] { PackedWeight("csr", V{1}, I{1, 1, 1}, I{0}, sh, 1); });
  expect_throw("indptr end", [&] { PackedWeight("csr", V{1}, I{0, 0, 2}, I{0}, sh, 1); });
  expect_throw("indptr decreasing", [&] { PackedWeight("csr", V{1, 2}, I{0, 2, 1}, I{0, 1}, sh, 1); });
  expect_throw("column out of range", [&] { PackedWeight("csr", V{1}, I{0, 1, 1}, I{9}, sh, 1); });
  expect_throw("negative column", [&] { PackedWeight("csr", V{1}, I{0, 1, 1}, I{-1}, sh, 1); });
  expect_throw("unsorted columns", [&] { PackedWeight("csr", V{1, 2}, I{0, 2, 2}, I{3, 1}, sh, 1); });
  expect_throw("values / indices lengths", [&] { PackedWeight("csr", V{1, 2}, I{0, 1, 1}, I{0}, sh, 1); });
  expect_throw("zero dimension", [&] { PackedWeight("csr", V{}, I{0}, I{}, {0, 1, 3, 3}, 1); });
  expect_throw("negative dimension", [&] { PackedWeight("csr", V{}, I{0, 0, 0}, I{}, {2, -1, 3, 3}, 1); });
  expect_throw("block rows 3", [&] { PackedWeight("bsr", V{}, I{0, 0}, I{}, sh, 3); });
  expect_throw("bsr values length", [&] { PackedWeight("bsr", V{1, 2, 3}, I{0, 1}, I{0}, sh, 4); });
  expect_throw("bsr padding rows", [&] { PackedWeight("bsr", V{1, 1, 1, 1}, I{0, 1}, I{0}, sh, 4); });
  expect_throw("kernel larger than the padded input", [&] {
    PackedWeight pw("csr", V{}, I{0, 0, 0}, I{}, sh, 1);
    pw.geometry(2, 2, 1, 0, 1);
  });
  expect_throw("isa name", [&] { select_kernels("sse9"); });
#if !defined(PRUNECAL_HAVE_NEON)
  expect_throw("isa neon off AArch64", [&] { select_kernels("neon"); });
#endif
#if !defined(PRUNECAL_HAVE_AVX2_TU)
  expect_throw("isa avx2 off x86-64", [&] { select_kernels("avx2"); });
#endif
  expect_throw("plan conv channels", [&] {
    Plan p;
    const int a = p.add_buffer(3, 8, 8, 1), b = p.add_buffer(4, 8, 8, 1);
    p.add_conv("c", WeightArgs{"csr", V{}, I{0, 0, 0, 0, 0}, I{}, {4, 2, 3, 3}, 1, {}}, ConvArgs{1, 1, 1, 1, false, -1}, a, b);
  });
  expect_throw("plan conv output shape", [&] {
    Plan p;
    const int a = p.add_buffer(3, 8, 8, 1), b = p.add_buffer(4, 7, 8, 1);
    p.add_conv("c", WeightArgs{"csr", V{}, I{0, 0, 0, 0, 0}, I{}, {4, 3, 3, 3}, 1, {}}, ConvArgs{1, 1, 1, 1, false, -1}, a, b);
  });
  expect_throw("plan buffer index", [&] {
    Plan p;
    p.add_buffer(3, 8, 8, 1);
    p.set_io(0, 5);
  });
  expect_throw("plan buffer size", [&] { Plan().add_buffer(3, 0, 8, 1); });
  expect_throw("plan run without io", [&] {
    Plan p;
    p.add_buffer(3, 8, 8, 1);
    float x[1] = {0}, y[1];
    p.run(x, 1, y, 1, 0, select_kernels("auto"));
  });
  return n;
}

// ---------------------------------------------------------------- plan: a small CIFAR ResNet

struct Net {
  struct Layer {  // a conv or linear of the reference
    ConvSpec s;
    std::vector<float> w, b;
  };
  std::vector<Layer> layers;
};

std::vector<double> ref_conv_layer(const Net::Layer& L, const std::vector<double>& x, int N) {
  ConvSpec s = L.s;
  s.N = N, s.relu = false;
  std::vector<double> y, mag;
  ref_conv(s, x.data(), L.w, L.b.empty() ? nullptr : L.b.data(), y, mag);
  return y;
}

void relu_(std::vector<double>& v) {
  for (auto& a : v)
    if (a < 0) a = 0;  // NaN stays NaN
}

// option-A shortcut: y[c] = x[c - left][::2, ::2], zero channels around
std::vector<double> ref_shortcut(const std::vector<double>& x, int N, int C, int H, int W, int Co, int left) {
  const int Ho = (H + 1) / 2, Wo = (W + 1) / 2;
  std::vector<double> y(size_t(N) * Co * Ho * Wo, 0.0);
  for (int n = 0; n < N; ++n)
    for (int c = 0; c < C; ++c)
      for (int i = 0; i < Ho; ++i)
        for (int j = 0; j < Wo; ++j)
          y[((size_t(n) * Co + c + left) * Ho + i) * Wo + j] = x[((size_t(n) * C + c) * H + 2 * i) * W + 2 * j];
  return y;
}

int test_plan(Rng& r, const std::vector<const KernelSet*>& sets) {
  int runs = 0;
  for (const std::string kind : {"csr", "bsr4"})
    for (double sparsity : {0.5, 0.95}) {
      // weights: conv layers in the order the plan adds them
      Net net;
      auto conv = [&](int C, int Co, int HW, int stride, int groups) {
        Net::Layer L;
        L.s.C = C, L.s.Co = Co, L.s.H = L.s.W = HW, L.s.kh = L.s.kw = 3, L.s.stride = stride, L.s.pad = 1;
        L.s.groups = groups;
        const float a = std::sqrt(6.f / float(L.s.K() * (1.0 - sparsity) + 1.0));
        L.w = random_weight(r, Co, L.s.K(), sparsity, a);
        L.b.resize(size_t(Co));
        for (auto& v : L.b) v = uniform(r, -0.2f, 0.2f);
        net.layers.push_back(std::move(L));
      };
      conv(3, 16, 32, 1, 1);    // 0 stem
      conv(16, 16, 32, 1, 1);   // 1 block 1
      conv(16, 16, 32, 1, 1);   // 2          + residual
      conv(16, 32, 32, 2, 1);   // 3 block 2 (stride 2)
      conv(32, 32, 16, 1, 1);   // 4          + shortcut
      conv(32, 64, 16, 2, 1);   // 5 block 3 (stride 2)
      conv(64, 64, 8, 1, 1);    // 6          + shortcut
      conv(64, 64, 8, 1, 2);    // 7 block 4 (grouped)
      conv(64, 64, 8, 1, 1);    // 8          then an add
      Net::Layer fc;
      fc.w = random_weight(r, 10, 64, 0.5, 0.5f);
      fc.b.resize(10);
      for (auto& v : fc.b) v = uniform(r, -0.2f, 0.2f);

      // reference forward (double) for a batch
      auto forward = [&](const std::vector<float>& xin, int N) {
        std::vector<double> x(xin.begin(), xin.end());
        auto c = [&](int i, const std::vector<double>& in) { return ref_conv_layer(net.layers[size_t(i)], in, N); };
        auto add = [](std::vector<double> a, const std::vector<double>& b) {
          for (size_t i = 0; i < a.size(); ++i) a[i] += b[i];
          return a;
        };
        std::vector<double> a0 = c(0, x);
        relu_(a0);
        std::vector<double> t = c(1, a0);
        relu_(t);
        std::vector<double> a1 = add(c(2, t), a0);
        relu_(a1);
        t = c(3, a1);
        relu_(t);
        std::vector<double> a2 = add(c(4, t), ref_shortcut(a1, N, 16, 32, 32, 32, 8));
        relu_(a2);
        t = c(5, a2);
        relu_(t);
        std::vector<double> a3 = add(c(6, t), ref_shortcut(a2, N, 32, 16, 16, 64, 16));
        relu_(a3);
        t = c(7, a3);
        relu_(t);
        std::vector<double> a4 = add(c(8, t), a3);
        relu_(a4);
        std::vector<double> out(size_t(N) * 10), mag(out.size());
        for (int n = 0; n < N; ++n) {
          double pooled[64];
          for (int ch = 0; ch < 64; ++ch) {
            double s = 0;
            for (int q = 0; q < 64; ++q) s += a4[(size_t(n) * 64 + ch) * 64 + q];
            pooled[ch] = s / 64;
          }
          for (int o = 0; o < 10; ++o) {
            double acc = fc.b[size_t(o)], m = std::fabs(acc);
            for (int ch = 0; ch < 64; ++ch) {
              acc += double(fc.w[size_t(o) * 64 + ch]) * pooled[ch];
              m += std::fabs(double(fc.w[size_t(o) * 64 + ch]) * pooled[ch]);
            }
            out[size_t(n) * 10 + o] = acc, mag[size_t(n) * 10 + o] = m;
          }
        }
        return std::make_pair(out, mag);
      };

      // batches of 1 and 8 images (image 5 of 8 holds a NaN: the dense-weight path) and their
      // references, shared by every plan variant below
      std::vector<std::vector<float>> xs;
      std::vector<std::pair<std::vector<double>, std::vector<double>>> refs;
      for (int N : {1, 8}) {
        std::vector<float> x(size_t(N) * 3 * 32 * 32);
        for (auto& v : x) v = uniform(r, -1.f, 1.f);
        if (N == 8) x[size_t(5) * 3 * 32 * 32 + 700] = std::numeric_limits<float>::quiet_NaN();
        refs.push_back(forward(x, N));
        xs.push_back(std::move(x));
      }

      for (bool jit : {false, true}) {
        if (jit && !JitConv::available()) continue;  // (the same plan as jit = false then)
        Plan p(jit);
        const int in = p.add_buffer(3, 32, 32, 1);
        const int b1 = p.add_buffer(16, 32, 32, 1), t1 = p.add_buffer(16, 32, 32, 1), b2 = p.add_buffer(16, 32, 32, 1);
        const int t2 = p.add_buffer(32, 16, 16, 1), s2 = p.add_buffer(32, 16, 16, 1), b3 = p.add_buffer(32, 16, 16, 1);
        const int t3 = p.add_buffer(64, 8, 8, 1), s3 = p.add_buffer(64, 8, 8, 1), b4 = p.add_buffer(64, 8, 8, 1);
        const int t4 = p.add_buffer(64, 8, 8, 1), u4 = p.add_buffer(64, 8, 8, 1), b5 = p.add_buffer(64, 8, 8, 1);
        const int pool = p.add_buffer(64, 1, 1, 0), out = p.add_buffer(10, 1, 1, 0);
        p.set_io(in, out);
        auto add_conv = [&](int i, int a, int b, bool relu, int res) {
          const Net::Layer& L = net.layers[size_t(i)];
          // grouped BSR blocks must not straddle groups: 32 rows per group, blocks of 4 do not
          const Sparse s = pack(L.w, L.s.Co, L.s.K(), kind);
          p.add_conv("conv" + std::to_string(i),
                     WeightArgs{s.kind, s.values, s.indptr, s.indices, {L.s.Co, L.s.C / L.s.groups, 3, 3}, s.block_rows, L.b},
                     ConvArgs{L.s.stride, 1, 1, L.s.groups, relu, res}, a, b);
        };
        add_conv(0, in, b1, true, -1);
        add_conv(1, b1, t1, true, -1);
        add_conv(2, t1, b2, true, b1);
        add_conv(3, b2, t2, true, -1);
        p.add_shortcut("sc2", b2, s2, 2, 8);
        add_conv(4, t2, b3, true, s2);
        add_conv(5, b3, t3, true, -1);
        p.add_shortcut("sc3", b3, s3, 2, 16);
        add_conv(6, t3, b4, true, s3);
        add_conv(7, b4, t4, true, -1);
        add_conv(8, t4, u4, false, -1);
        p.add_add("add4", u4, b4, b5, true);
        p.add_avgpool("pool", b5, pool);
        const Sparse f = to_csr(fc.w, 10, 64);
        p.add_linear("fc", WeightArgs{"csr", f.values, f.indptr, f.indices, {10, 64, 1, 1}, 1, fc.b}, false, pool, out);

        for (size_t bi = 0; bi < xs.size(); ++bi) {
          const std::vector<float>& x = xs[bi];
          const auto& ref = refs[bi];
          const int N = int(x.size() / (3 * 32 * 32));
          std::vector<float> y(size_t(N) * 10);
          for (const KernelSet* k : sets)
            for (auto [threads, mode] : {std::pair<int, int>{1, 0}, {2, 1}, {2, 2}}) {
              std::fill(y.begin(), y.end(), -12345.f);
              p.run(x.data(), N, y.data(), threads, mode, *k);
              char b[160];
              std::snprintf(b, sizeof b, "plan %s %s sparsity %.2f jit %d N%d threads %d mode %d", k->name, kind.c_str(),
                            sparsity, int(jit), N, threads, mode);
              // through nine layers: float rounding grows, a wrong kernel is off by O(1)
              check_outputs(b, y, ref.first, ref.second, 1e-4);
              ++runs;
            }
        }
      }
    }
  return runs;
}

// The lanes layout's max-pool against a scalar reference of op_maxpool's rule, lane by lane: the
// window's first NaN (its own bits: each NaN here carries a different payload) when it holds one,
// else its maximum, the first of equal values (+0 / -0); +-Inf and the zero border included. (The
// per-image op_maxpool's 2x2 fast path keeps the later of +0 / -0; plan values never tie that
// way in practice: not checked here.)
int test_lanes_maxpool(Rng& r) {
  int cases = 0;
  for (auto [H, k, s, pad] : {std::array<int, 4>{4, 2, 2, 0}, {2, 2, 2, 0}, {5, 3, 2, 1}, {4, 3, 1, 1}}) {
    const LaneSpec sx{3, H, H, 1}, sy{3, (H + 2 * pad - k) / s + 1, (H + 2 * pad - k) / s + 1, 1};
    std::vector<float> x(size_t(sx.floats()), 0.f), y(size_t(sy.floats()), 0.f);
    uint32_t payload = 1;
    for (int c = 0; c < sx.C; ++c)
      for (int i = 0; i < H; ++i)
        for (int j = 0; j < H; ++j)
          for (int l = 0; l < kBatchLanes; ++l) {
            float v = uniform(r, -2.f, 2.f);
            const int u = irange(r, 0, 11);
            if (u == 0) v = std::numeric_limits<float>::infinity();
            if (u == 1) v = -std::numeric_limits<float>::infinity();
            if (u == 2 || u == 3) {  // quiet NaNs of both signs, each with its own payload
              const uint32_t bits = (u == 3 ? 0xffc00000u : 0x7fc00000u) | payload++;
              std::memcpy(&v, &bits, 4);
            }
            if (u == 4) v = 0.f;
            if (u == 5) v = -0.f;  // ties of +0 / -0: the first one stays
            x[size_t(c * sx.plane() + sx.pos(i, j) + l)] = v;
          }
    lanes_maxpool(x.data(), sx, y.data(), sy, k, s, pad);
    for (int c = 0; c < sy.C; ++c)
      for (int oy = 0; oy < sy.H; ++oy)
        for (int ox = 0; ox < sy.W; ++ox)
          for (int l = 0; l < kBatchLanes; ++l) {
            float want = -std::numeric_limits<float>::infinity();
            bool nan = false;
            for (int i = oy * s - pad; i < oy * s - pad + k && !nan; ++i)
              for (int j = ox * s - pad; j < ox * s - pad + k && !nan; ++j) {
                if (i < 0 || j < 0 || i >= H || j >= H) continue;
                const float v = x[size_t(c * sx.plane() + sx.pos(i, j) + l)];
                if (std::isnan(v)) want = v, nan = true;
                else want = std::max(want, v);
              }
            const float got = y[size_t(c * sy.plane() + sy.pos(oy, ox) + l)];
            ++g_checks;
            if (std::memcmp(&got, &want, 4) != 0) {
              char b[160];
              std::snprintf(b, sizeof b, "lanes maxpool H %d k %d s %d p %d: (%d, %d, %d) lane %d: got %g, want %g", H, k,
                            s, pad, c, oy, ox, l, got, want);
              fail(b);
              return cases;
            }
          }
    ++cases;
  }
  return cases;
}

// Runs plan p (input fin floats, output fout) on N random images: as a batch (lanes), with
// PRUNECAL_PLAN_LANES=0 and image by image, for every kernel set, 1 thread and 2 (team mode);
// fails `what` on the first difference in bits. Returns the runs.
int check_lanes_bits(Rng& r, Plan& p, int fin, int fout, const std::vector<const KernelSet*>& sets, const char* what) {
  int runs = 0;
  const int N = 13;
  std::vector<float> x(size_t(N) * fin);
  for (auto& v : x) v = uniform(r, -1.f, 1.f);
  for (const KernelSet* k : sets) {
    std::vector<float> one(size_t(N) * fout), batch(one.size()), off(one.size());
    for (int n = 0; n < N; ++n) p.run(x.data() + size_t(n) * fin, 1, one.data() + size_t(n) * fout, 1, 0, *k);
    for (auto [threads, mode] : {std::pair<int, int>{1, 0}, {2, 1}}) {
      p.run(x.data(), N, batch.data(), threads, mode, *k);
      setenv("PRUNECAL_PLAN_LANES", "0", 1);
      p.run(x.data(), N, off.data(), threads, mode, *k);
      unsetenv("PRUNECAL_PLAN_LANES");
      for (size_t i = 0; i < one.size(); ++i) {
        g_checks += 2;
        if (batch[i] != one[i] || off[i] != one[i]) {
          char b[240];
          std::snprintf(b, sizeof b, "%s %s threads %d: output %zu: batch %.9g, lanes off %.9g, alone %.9g", what,
                        k->name, threads, i, batch[i], off[i], one[i]);
          fail(b);
          break;
        }
      }
      ++runs;
    }
  }
  return runs;
}

// The ops of p's lanes section, by name, in order.
std::vector<std::string> lanes_ops(const Plan& p) {
  std::vector<std::string> names;
  for (const std::string& line : p.describe())
    if (line.find("[lanes") != std::string::npos) {
      const size_t a = line.find_first_not_of(' '), b = line.find(' ', a);  // the op kind
      const size_t c = line.find_first_not_of(' ', b), d = line.find(':', c);
      names.push_back(line.substr(c, d - c));
    }
  return names;
}

// The lanes section (plan_lanes.h): a small VGG-like plan (8x8 -> 4x4 -> 2x2 maps; the convs from
// the first 4x4 conv on and the pool between them in the section) run as a batch (its 4x4 / 2x2
// layers on blocks of images, one per lane) gives the same bits as each image run alone, with
// every kernel set (on AArch64 the lanes' generic kernel against the NEON
// per-image kernels: both fused multiply-adds); and the same bits with PRUNECAL_PLAN_LANES=0.
// A second plan has a branch that reads the map before a max-pool: its section keeps the pool.
int test_plan_lanes(Rng& r, const std::vector<const KernelSet*>& sets) {
  auto conv = [&](Plan& p, const char* name, int C, int Co, int a, int b, bool relu, int stride = 1) {
    const Sparse s = to_csr(random_weight(r, Co, int64_t(C) * 9, 0.6, 0.4f), Co, int64_t(C) * 9);
    std::vector<float> bias(static_cast<size_t>(Co));
    for (auto& v : bias) v = uniform(r, -0.2f, 0.2f);
    p.add_conv(name, WeightArgs{"csr", s.values, s.indptr, s.indices, {Co, C, 3, 3}, 1, bias},
               ConvArgs{stride, 1, 1, 1, relu, -1}, a, b);
  };
  auto head = [&](Plan& p, int C, int b_in, int out) {
    const int b7 = p.add_buffer(C, 1, 1, 0);
    p.add_avgpool("gap", b_in, b7);
    const Sparse f = to_csr(random_weight(r, 6, C, 0.3, 0.5f), 6, C);
    p.add_linear("fc", WeightArgs{"csr", f.values, f.indptr, f.indices, {6, C, 1, 1}, 1, std::vector<float>(6, 0.1f)},
                 false, b7, out);
  };
  int runs = 0;
  {
    Plan p(false);
    const int in = p.add_buffer(5, 8, 8, 1), b1 = p.add_buffer(12, 8, 8, 0), b2 = p.add_buffer(12, 4, 4, 1);
    const int b3 = p.add_buffer(20, 4, 4, 1), b4 = p.add_buffer(20, 4, 4, 0), b5 = p.add_buffer(20, 2, 2, 1);
    const int b6 = p.add_buffer(17, 2, 2, 0), out = p.add_buffer(6, 1, 1, 0);
    p.set_io(in, out);
    conv(p, "c1", 5, 12, in, b1, true);
    p.add_maxpool("p1", b1, b2, 2, 2, 0);
    conv(p, "c2", 12, 20, b2, b3, true);
    conv(p, "c3", 20, 20, b3, b4, true);
    p.add_maxpool("p2", b4, b5, 2, 2, 0);
    conv(p, "c4", 20, 17, b5, b6, false);
    head(p, 17, b6, out);
    // p1 (from the 8x8 map) runs per image: the section starts at c2
    const std::vector<std::string> want{"c2", "c3", "p2", "c4"};
    ++g_checks;
    if (lanes_ops(p) != want) fail("plan lanes: section is not c2, c3, p2, c4");
    runs += check_lanes_bits(r, p, 5 * 8 * 8, 6, sets, "plan lanes");
  }
  {
    // c3 (stride 2) reads b1, the map before p1: without p1 the run would read two buffers
    // from before it, so the section keeps p1
    Plan p(false);
    const int in = p.add_buffer(5, 8, 8, 1), b1 = p.add_buffer(12, 8, 8, 1), b2 = p.add_buffer(12, 4, 4, 1);
    const int b3 = p.add_buffer(12, 4, 4, 0), b4 = p.add_buffer(12, 4, 4, 0), b5 = p.add_buffer(12, 4, 4, 0);
    const int out = p.add_buffer(6, 1, 1, 0);
    p.set_io(in, out);
    conv(p, "c1", 5, 12, in, b1, true);
    p.add_maxpool("p1", b1, b2, 2, 2, 0);
    conv(p, "c2", 12, 12, b2, b3, false);
    conv(p, "c3", 12, 12, b1, b4, false, 2);
    p.add_add("add", b3, b4, b5, true);
    head(p, 12, b5, out);
    const std::vector<std::string> want{"p1", "c2", "c3", "add"};
    ++g_checks;
    if (lanes_ops(p) != want) fail("plan lanes (branch): section is not p1, c2, c3, add");
    runs += check_lanes_bits(r, p, 5 * 8 * 8, 6, sets, "plan lanes (branch)");
  }
  return runs;
}

}  // namespace

int main(int argc, char** argv) {
  uint64_t seed = 20261126;
  int cases = 300;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--seed" && i + 1 < argc) seed = std::strtoull(argv[++i], nullptr, 10);
    else if (a == "--cases" && i + 1 < argc) cases = std::atoi(argv[++i]);
    else {
      std::fprintf(stderr, "usage: %s [--seed N] [--cases N]\n", argv[0]);
      return 2;
    }
  }
  const auto t0 = std::chrono::steady_clock::now();
#if defined(__aarch64__)
  const char* arch = "aarch64";
#elif defined(__x86_64__)
  const char* arch = "x86-64";
#else
  const char* arch = "other";
#endif
  const auto sets = kernel_sets();
  std::printf("test_kernels: %s, seed %llu, %d random conv cases; kernel sets:", arch, (unsigned long long)seed, cases);
  for (const KernelSet* k : sets) std::printf(" %s", k->name);
  std::printf(" (auto: %s); generated kernels %s; AVX-512 tiles %s\n", select_kernels("auto").name,
              JitConv::available() ? "on" : "off", plan_avx512_active() ? "on" : "off");
  std::fflush(stdout);
  Rng r(seed);
  struct Part {
    const char* name;
    std::function<int()> fn;
  };
  const Part parts[] = {
      {"conv", [&] { return test_conv(r, cases, sets); }},
      {"linear", [&] { return test_linear(r, cases / 3 + 1, sets); }},
      {"bad input", [&] { return test_bad_input(); }},
      {"plan", [&] { return test_plan(r, sets); }},
      {"lanes", [&] { return test_plan_lanes(r, sets); }},
      {"lanes pool", [&] { return test_lanes_maxpool(r); }},
  };
  for (const Part& part : parts) {
    const int before = g_failures;
    const auto p0 = std::chrono::steady_clock::now();
    int n = 0;
    try {
      n = part.fn();
    } catch (const std::exception& e) {
      fail(std::string(part.name) + ": unexpected exception: " + e.what());
    }
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - p0).count();
    std::printf("%-9s %s: %d cases, %.1f s\n", part.name, g_failures == before ? "ok" : "FAILED", n, s);
    std::fflush(stdout);
  }
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("%s: %lld checks, %d failures, %.1f s\n", g_failures ? "FAILED" : "PASSED", (long long)g_checks, g_failures, s);
  return g_failures ? 1 : 0;
}
