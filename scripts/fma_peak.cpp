// One core's FMA peak on the AVX2 path: 12 independent chains of 8-lane FMAs (enough to cover
// the FMA latency on two pipes), multiply-adds per second. The ceiling the plan's GMAC/s figures
// are compared with in docs/performance.md.
//
//   g++ -O2 -mavx2 -mfma scripts/fma_peak.cpp -o /tmp/fma_peak && /tmp/fma_peak
#include <immintrin.h>

#include <chrono>
#include <cstdio>

int main() {
  __m256 acc[12];
  const __m256 a = _mm256_set1_ps(1.0000001f), b = _mm256_set1_ps(1e-7f);
  for (int i = 0; i < 12; ++i) acc[i] = _mm256_set1_ps(float(i));
  const long n = 400000000;
  const auto t0 = std::chrono::steady_clock::now();
  for (long k = 0; k < n; ++k) {
#pragma GCC unroll 12
    for (int i = 0; i < 12; ++i) acc[i] = _mm256_fmadd_ps(acc[i], a, b);
  }
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  float sink = 0;
  for (int i = 0; i < 12; ++i) sink += _mm256_cvtss_f32(acc[i]);
  std::printf("AVX2 FMA peak, one core: %.1f GMAC/s (%.2f s; %g)\n", n * 12.0 * 8 / s / 1e9, s, double(sink));
  return 0;
}
