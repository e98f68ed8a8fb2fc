// Generated sparse conv kernels (see jit_conv.h).
#include "jit_conv.h"

#include <algorithm>
#include <cstdlib>
#include <map>

#include "plan.h"  // plan_avx512_active

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define PRUNECAL_JIT 1
#include <xbyak/xbyak.h>
#endif

namespace prunecal {

namespace {
constexpr int kMaxGroup = 30;                 // accumulators; zmm30 = zero (ReLU), zmm31 = input
constexpr int64_t kMaxCodeBytes = 8 << 20;    // per weight and geometry
}  // namespace

#ifdef PRUNECAL_JIT

struct JitConv::Code : Xbyak::CodeGenerator {
  // One group: rows [r0, r1) of the CSR weight; appends the weights it reads to `w`.
  Code(const int32_t* indptr, const int32_t* cols, const float* values, const int32_t* off, int r0, int r1, int vec,
       int in_step, int64_t out_plane, size_t bytes, std::vector<float>& w)
      : Xbyak::CodeGenerator(bytes, Xbyak::DontSetProtectRWE) {
    using namespace Xbyak;
    const int G = r1 - r0;
    auto acc = [&](int i) -> Xmm { return vec == 16 ? Xmm(Zmm(i)) : Xmm(Ymm(i)); };
    const Xmm x = vec == 16 ? Xmm(zmm31) : Xmm(ymm31), zero = vec == 16 ? Xmm(zmm30) : Xmm(ymm30);
    // the taps any row of the group uses, in column order, each with its input offset and the
    // (row, value) pairs that read it: every row's FMAs then run in its CSR order (columns
    // sorted within a row)
    struct Tap {
      int32_t off = 0;
      std::vector<std::pair<int, float>> uses;
    };
    std::map<int32_t, Tap> taps;
    for (int r = r0; r < r1; ++r)
      for (int32_t j = indptr[r]; j < indptr[r + 1]; ++j) {
        Tap& t = taps[cols[j]];
        t.off = off[j];
        t.uses.push_back({r - r0, values[j]});
      }
    for (int i = 0; i < G; ++i) vxorps(acc(i), acc(i), acc(i));
    for (const auto& [col, t] : taps) {
      if (vec == 16 && in_step != 8) {  // lanes 8..15 from in_step floats further (the next output row)
        vmovups(ymm31, ptr[rdi + int64_t(t.off) * 4]);
        vinsertf64x4(zmm31, zmm31, ptr[rdi + (int64_t(t.off) + in_step) * 4], 1);
      } else {
        vmovups(x, ptr[rdi + int64_t(t.off) * 4]);
      }
      for (const auto& [i, v] : t.uses) {
        const int64_t idx = int64_t(w.size());
        w.push_back(v);
        vfmadd231ps(acc(i), x, ptr_b[rdx + idx * 4]);
      }
    }
    for (int i = 0; i < G; ++i) vaddps(acc(i), acc(i), ptr_b[rcx + int64_t(r0 + i) * 4]);
    Label store;
    test(r8, r8);
    jz(store, T_NEAR);
    vxorps(zero, zero, zero);
    for (int i = 0; i < G; ++i) vmaxps(acc(i), zero, acc(i));  // NaN stays NaN (second operand)
    L(store);
    for (int i = 0; i < G; ++i) vmovups(ptr[rsi + int64_t(r0 + i) * out_plane * 4], acc(i));
    vzeroupper();
    ret();
    setProtectModeRE();
  }
};

bool JitConv::available() {
  static const bool ok = [] {
    if (const char* e = std::getenv("PRUNECAL_NO_JIT")) if (e[0] && e[0] != '0') return false;
    return plan_avx512_active() && bool(__builtin_cpu_supports("avx512vl"));
  }();
  return ok;
}

std::unique_ptr<JitConv> JitConv::build(const int32_t* indptr, const int32_t* cols, const float* values,
                                        const int32_t* off, int rows, int vec, int in_step, int64_t out_plane) {
  if (!available() || rows <= 0 || (vec != 8 && vec != 16) || in_step < 8) return nullptr;
  if (int64_t(rows) * out_plane * 4 >= (int64_t(1) << 31)) return nullptr;  // store displacements
  const int64_t nnz = indptr[rows];
  if (nnz > 0) {
    const auto [lo, hi] = std::minmax_element(off, off + nnz);
    if (int64_t(*lo) * 4 <= -(int64_t(1) << 31) || (int64_t(*hi) + in_step) * 4 >= (int64_t(1) << 31)) return nullptr;
  }
  // about 11 bytes per instruction: one FMA per nonzero, at most one load per nonzero
  const int64_t bytes = 4096 + 24 * nnz + 32 * int64_t(rows);
  if (bytes > kMaxCodeBytes) return nullptr;
  std::unique_ptr<JitConv> j(new JitConv());
  j->vec_ = vec;
  j->zeros_.assign(size_t(rows), 0.f);
  const int n_groups = (rows + kMaxGroup - 1) / kMaxGroup;
  try {
    for (int k = 0; k < n_groups; ++k) {
      Group g;
      g.row0 = int(int64_t(rows) * k / n_groups);
      g.row1 = int(int64_t(rows) * (k + 1) / n_groups);
      const int64_t gnnz = indptr[g.row1] - indptr[g.row0];
      j->code_.push_back(std::make_unique<Code>(indptr, cols, values, off, g.row0, g.row1, j->vec_, in_step, out_plane,
                                                size_t(4096 + 24 * gnnz + 32 * (g.row1 - g.row0)), g.weights));
      g.fn = j->code_.back()->getCode<Fn>();
      j->groups_.push_back(std::move(g));
    }
  } catch (const Xbyak::Error&) {
    return nullptr;  // (e.g. no executable memory): the fixed kernels run instead
  }
  return j;
}

#else

struct JitConv::Code {};
bool JitConv::available() { return false; }
std::unique_ptr<JitConv> JitConv::build(const int32_t*, const int32_t*, const float*, const int32_t*, int, int, int,
                                        int64_t) {
  return nullptr;
}

#endif

JitConv::~JitConv() = default;

}  // namespace prunecal
