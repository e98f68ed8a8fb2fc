// The ceiling of an unstructured-sparse conv's inner loop on the AVX2 path: per stored nonzero,
// its input offset and weight are read, the weight is broadcast and 12 FMAs take their input
// vectors from memory at that offset (the shape of the AVX2 fixed tiles and of the lanes
// kernels: one vector load per multiply-add, since an unstructured pattern gives no input
// vector to reuse across output channels). Nothing else runs: no epilogue, no bands, no
// threads, the same offsets every pass, so this is an upper bound for those kernels.
//
// Varied: the footprint the offsets spread over (16 KB: fits the 48 KB L1 of this CPU beside the
// 32 KB of offsets and weights, which stream in order; 256 KB / 768 KB: L2, 1 MB here)
// and the alignment of each 8-float load (aligned: inside one 64-byte line; unaligned: starting
// at any float, as a 3x3 conv's taps on a plain row layout do, 7 in 16 loads then span two
// lines). Multiply-adds per second (8 per FMA), best of 3 runs; compare with fma_peak.cpp.
//
//   g++ -O2 -mavx2 -mfma scripts/load_fma_ceiling.cpp -o /tmp/load_fma_ceiling && /tmp/load_fma_ceiling
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

namespace {

__attribute__((noinline)) void tile_loop(const float* in, const int32_t* off, const float* w, int nnz, float* out,
                                          long passes) {
  for (long r = 0; r < passes; ++r) {
    // twelve named accumulators (an array of them is kept on the stack by GCC -O2)
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0, a8 = a0,
           a9 = a0, a10 = a0, a11 = a0;
    for (int k = 0; k < nnz; ++k) {
      const float* p = in + off[k];
      const __m256 b = _mm256_broadcast_ss(w + k);
#define PRUNECAL_FMA(acc, j) acc = _mm256_fmadd_ps(b, _mm256_loadu_ps(p + 8 * j), acc)
      PRUNECAL_FMA(a0, 0), PRUNECAL_FMA(a1, 1), PRUNECAL_FMA(a2, 2), PRUNECAL_FMA(a3, 3);
      PRUNECAL_FMA(a4, 4), PRUNECAL_FMA(a5, 5), PRUNECAL_FMA(a6, 6), PRUNECAL_FMA(a7, 7);
      PRUNECAL_FMA(a8, 8), PRUNECAL_FMA(a9, 9), PRUNECAL_FMA(a10, 10), PRUNECAL_FMA(a11, 11);
#undef PRUNECAL_FMA
    }
    const __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)),
                                   _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a4, a5), _mm256_add_ps(a6, a7)),
                                                 _mm256_add_ps(_mm256_add_ps(a8, a9), _mm256_add_ps(a10, a11))));
    _mm256_storeu_ps(out + (r & 7) * 8, s);
  }
}

double gmacs(int kb, bool aligned) {
  const int nnz = 4096, lines = kb * 1024 / 64;
  std::vector<float> buf(size_t(lines) * 16 + 256, 0.5f);
  float* in = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(buf.data()) + 63) & ~uintptr_t(63));
  std::mt19937 rng(1);
  std::vector<int32_t> off(nnz);
  std::vector<float> w(nnz, 1e-3f);
  for (auto& o : off) {
    o = int32_t(rng() % uint32_t(lines - 12)) * 16;  // a line start, 12 vectors (6 lines) fit after it
    if (!aligned) o += int32_t(rng() % 16);
  }
  float out[64];
  const long passes = 200000000L / nnz;
  tile_loop(in, off.data(), w.data(), nnz, out, passes / 20);
  double best = 0;
  for (int t = 0; t < 3; ++t) {
    const auto t0 = std::chrono::steady_clock::now();
    tile_loop(in, off.data(), w.data(), nnz, out, passes);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::max(best, 12.0 * 8 * nnz * passes / s / 1e9);
  }
  return best;
}

}  // namespace

int main() {
  std::printf("footprint  aligned GMAC/s  unaligned GMAC/s\n");
  for (int kb : {16, 256, 768}) std::printf("%6d KB  %14.1f  %16.1f\n", kb, gmacs(kb, true), gmacs(kb, false));
  return 0;
}
