// Vector types shared by the per-ISA kernel units (train_kernels_*.cpp, plan_lanes*.cpp): each unit
// includes this header under its own compiler flags, so the types it gets follow those flags, and
// everything here is internal to the unit (anonymous namespace): units built for different ISAs
// never share a symbol. Every type: L floats; zero, set1, load, store (unaligned), fma(a, b, c) =
// a * b + c (fused where the ISA has FMA; plain C++ otherwise, spelled as the portable kernels
// spell it, so the compiler makes the same choice for both), add, relu (max(0, v): NaN stays NaN).
#pragma once
#if defined(__AVX2__) && defined(__FMA__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace prunecal {
namespace {

// Portable: N floats, plain loops (the compiler vectorises them with the baseline ISA).
template <int N>
struct VecN {
  static constexpr int L = N;
  float v[N];
  static VecN zero() { return set1(0.f); }
  static VecN set1(float a) {
    VecN r;
    for (int l = 0; l < N; ++l) r.v[l] = a;
    return r;
  }
  static VecN load(const float* p) {
    VecN r;
    for (int l = 0; l < N; ++l) r.v[l] = p[l];
    return r;
  }
  void store(float* p) const {
    for (int l = 0; l < N; ++l) p[l] = v[l];
  }
  static VecN fma(const VecN& a, const VecN& b, const VecN& c) {
    VecN r;
    for (int l = 0; l < N; ++l) r.v[l] = a.v[l] * b.v[l] + c.v[l];
    return r;
  }
  static VecN add(VecN a, const VecN& b) {
    for (int l = 0; l < N; ++l) a.v[l] += b.v[l];
    return a;
  }
  static VecN relu(VecN a) {
    for (int l = 0; l < N; ++l) a.v[l] = a.v[l] < 0.f ? 0.f : a.v[l];
    return a;
  }
};

#if defined(__AVX2__) && defined(__FMA__)
// AVX2+FMA: one ymm (8 floats).
struct VecYmm {
  static constexpr int L = 8;
  __m256 v;
  static VecYmm zero() { return {_mm256_setzero_ps()}; }
  static VecYmm set1(float a) { return {_mm256_set1_ps(a)}; }
  static VecYmm load(const float* p) { return {_mm256_loadu_ps(p)}; }
  void store(float* p) const { _mm256_storeu_ps(p, v); }
  static VecYmm fma(VecYmm a, VecYmm b, VecYmm c) { return {_mm256_fmadd_ps(a.v, b.v, c.v)}; }
  static VecYmm add(VecYmm a, VecYmm b) { return {_mm256_add_ps(a.v, b.v)}; }
  // max(0, v) returns its second operand when either is NaN: NaN stays NaN
  static VecYmm relu(VecYmm a) { return {_mm256_max_ps(_mm256_setzero_ps(), a.v)}; }
};

// AVX2+FMA: 16 floats as two ymm (the lanes layout's 16-image vectors).
struct VecYmm2 {
  static constexpr int L = 16;
  VecYmm lo, hi;
  static VecYmm2 zero() { return {VecYmm::zero(), VecYmm::zero()}; }
  static VecYmm2 set1(float a) { return {VecYmm::set1(a), VecYmm::set1(a)}; }
  static VecYmm2 load(const float* p) { return {VecYmm::load(p), VecYmm::load(p + 8)}; }
  void store(float* p) const { lo.store(p), hi.store(p + 8); }
  static VecYmm2 fma(VecYmm2 a, VecYmm2 b, VecYmm2 c) { return {VecYmm::fma(a.lo, b.lo, c.lo), VecYmm::fma(a.hi, b.hi, c.hi)}; }
  static VecYmm2 add(VecYmm2 a, VecYmm2 b) { return {VecYmm::add(a.lo, b.lo), VecYmm::add(a.hi, b.hi)}; }
  static VecYmm2 relu(VecYmm2 a) { return {VecYmm::relu(a.lo), VecYmm::relu(a.hi)}; }
};
#endif

#if defined(__AVX512F__)
// AVX-512F: one zmm (16 floats).
struct VecZmm {
  static constexpr int L = 16;
  __m512 v;
  static VecZmm zero() { return {_mm512_setzero_ps()}; }
  static VecZmm set1(float a) { return {_mm512_set1_ps(a)}; }
  static VecZmm load(const float* p) { return {_mm512_loadu_ps(p)}; }
  void store(float* p) const { _mm512_storeu_ps(p, v); }
  static VecZmm fma(VecZmm a, VecZmm b, VecZmm c) { return {_mm512_fmadd_ps(a.v, b.v, c.v)}; }
  static VecZmm add(VecZmm a, VecZmm b) { return {_mm512_add_ps(a.v, b.v)}; }
  static VecZmm relu(VecZmm a) { return {_mm512_max_ps(_mm512_setzero_ps(), a.v)}; }
};
#endif

}  // namespace
}  // namespace prunecal
