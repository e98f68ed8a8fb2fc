// Sparse linear driver: batches >= 8 run as a 1x1 convolution over the transposed batch
// (SIMD over samples); smaller batches use per-row sparse dot products.
#include <algorithm>
#include <stdexcept>
#include <vector>

#include "packed_weight.h"
#include "thread_pool.h"

namespace prunecal {
namespace {

// dst (cols, rows) = src (rows, cols)^T, in cache-friendly 32 x 32 tiles.
void transpose(const float* src, int64_t rows, int64_t cols, float* dst) {
  constexpr int64_t T = 32;
  for (int64_t r0 = 0; r0 < rows; r0 += T)
    for (int64_t c0 = 0; c0 < cols; c0 += T) {
      const int64_t r1 = std::min(rows, r0 + T), c1 = std::min(cols, c0 + T);
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t c = c0; c < c1; ++c) dst[c * rows + r] = src[r * cols + c];
    }
}

}  // namespace

void PackedWeight::linear(const float* x, int64_t N, float* y, const float* bias, bool relu,
                          int threads, const KernelSet& k) {
  if (N <= 0) return;
  const int64_t K = cols(), O = rows();
  if (N >= kLanes) {
    if (N >= (int64_t(1) << 31)) throw std::invalid_argument("x: batch too large");
    std::vector<float> xt(size_t(K * N)), yt(size_t(O * N));
    transpose(x, N, K, xt.data());
    conv2d(xt.data(), 1, int(K), 1, int(N), yt.data(), bias, 1, 0, 1, 1, relu, threads, k);
    transpose(yt.data(), O, N, y);
    return;
  }
  std::vector<char> nonfin(static_cast<size_t>(N), 0);
  bool any_bad = false;
  for (int64_t n = 0; n < N; ++n) {
    nonfin[size_t(n)] = k.nonfinite(x + n * K, K) ? 1 : 0;
    any_bad = any_bad || nonfin[size_t(n)];
  }
  std::vector<float> dense;
  if (any_bad) {  // NaN/Inf samples see every weight, zeros included (NaN*0 = NaN, like torch)
    dense.assign(size_t(O * K), 0.f);
    for (int64_t r = 0; r < O; ++r)
      for (int32_t j = c_indptr_[r]; j < c_indptr_[r + 1]; ++j) dense[size_t(r * K + c_cols_[j])] = c_val_[j];
  }
  const int64_t chunk = 64;
  parallel_for(threads, (O + chunk - 1) / chunk, [&](int64_t task, int) {
    for (int64_t r = task * chunk; r < std::min(O, task * chunk + chunk); ++r) {
      const float b = bias ? bias[r] : 0.f;
      for (int64_t n = 0; n < N; ++n) {
        const float* xn = x + n * K;
        float a0 = 0.f, a1 = 0.f, a2 = 0.f, a3 = 0.f;
        if (nonfin[size_t(n)]) {
          const float* w = dense.data() + r * K;
          for (int64_t i = 0; i < K; ++i) a0 += w[i] * xn[i];
        } else {
          int32_t j = c_indptr_[r];
          const int32_t j1 = c_indptr_[r + 1];
          for (; j + 4 <= j1; j += 4) {
            a0 += c_val_[j] * xn[c_cols_[j]];
            a1 += c_val_[j + 1] * xn[c_cols_[j + 1]];
            a2 += c_val_[j + 2] * xn[c_cols_[j + 2]];
            a3 += c_val_[j + 3] * xn[c_cols_[j + 3]];
          }
          for (; j < j1; ++j) a0 += c_val_[j] * xn[c_cols_[j]];
        }
        float v = (a0 + a1) + (a2 + a3) + b;
        if (relu && v < 0.f) v = 0.f;
        y[n * O + r] = v;
      }
    }
  });
}

}  // namespace prunecal
