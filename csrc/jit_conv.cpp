// Generated sparse conv kernels (see jit_conv.h).
#include "jit_conv.h"

#include <algorithm>
#include <cstdlib>
#include <map>
#include <string>

#include "plan.h"  // plan_avx512_active

// (System V calling convention only: the code takes its arguments in rdi, rsi, rdx, rcx, r8, r9
// and clobbers zmm6-15, which the Windows x64 convention preserves)
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(_WIN32)
#define PRUNECAL_JIT 1
#include <xbyak/xbyak.h>
#endif

namespace prunecal {

namespace {
// Accumulators per group (zmm0..30); zmm31 holds the input vector, then serves the epilogue
// (residual, zero for ReLU). Groups are filled in order (31, 31, ..., rest): measured faster
// than balanced groups (CIFAR shapes, batch 64, 1 thread: 3-12 %), as larger groups share each
// input load among more channels.
constexpr int kMaxGroup = 31;
// AVX2+FMA code (16 ymm registers, no embedded broadcast): per channel of a group `vec / 8`
// accumulators; one register for the broadcast weight and one per input half. 8-lane tiles:
// 14 channels (ymm0..13, weight ymm14, input ymm15); 16-lane tiles (two 8-lane halves):
// 6 channels (ymm0..11, weight ymm12, inputs ymm14 / ymm15).
constexpr int kMaxGroupAvx2[3] = {0, 14, 6};
constexpr int64_t kMaxCodeBytes = 8 << 20;  // per weight and geometry
constexpr int64_t kDisp = int64_t(1) << 31;

// Code size bound: instructions are at most 11 bytes (EVEX, disp32, imm8); per nonzero one FMA
// (AVX2: a broadcast and up to two FMAs) and at most one two-instruction load, per row at most
// 8 epilogue instructions (AVX2: 12).
int64_t code_bytes(int64_t nnz, int64_t rows) { return 4096 + 48 * nnz + 160 * rows; }

// AVX2 code is about four bytes per weight byte and is fetched again for every tile: it pays only
// on large output planes. Measured (ResNet-56 at 90 %, 1 thread, CPU time per stage, AVX2 path
// forced on the AMD EPYC dev VM): 32x32 outputs 10 % faster than the fixed AVX2 tiles, 16x16
// 10 % slower, 8x8 70 % slower. So AVX2 kernels are made for planes of >= 1024 outputs only.
constexpr int64_t kAvx2MinPlane = 1024;

int max_group(const JitLayout& L) { return L.avx2 ? kMaxGroupAvx2[L.vec / kLanes] : kMaxGroup; }
}  // namespace

// AVX2 code: 16-lane tiles (two halves, 6 channels a group) or 8-lane ones (14 channels);
// PRUNECAL_JIT_AVX2_VEC=8|16 picks for measurements.
static bool avx2_wide_tiles() {
  static const bool wide = [] {
    const char* e = std::getenv("PRUNECAL_JIT_AVX2_VEC");
    return !(e && std::string(e) == "8");
  }();
  return wide;
}

bool JitConv::tile_layout(const std::vector<Slot>& sl, const int32_t* rq, JitLayout* L) {
  if (sl.empty()) return false;
  for (const Slot& s : sl)
    if (s.n != kLanes) return false;
  bool pairs = sl.size() % 2 == 0 && sl.size() > 1;
  const int32_t si = pairs ? sl[1].in_q - sl[0].in_q : 0, so = pairs ? sl[1].out_q - sl[0].out_q : 0;
  const int32_t sr = pairs && rq ? rq[1] - rq[0] : kLanes;
  pairs = pairs && si >= kLanes && so >= kLanes && sr >= kLanes;
  for (size_t i = 0; pairs && i < sl.size(); i += 2)
    pairs = sl[i + 1].in_q - sl[i].in_q == si && sl[i + 1].out_q - sl[i].out_q == so &&
            (!rq || rq[i + 1] - rq[i] == sr);
  L->avx2 = isa_config().jit == Isa::Avx2;
  if (L->avx2 && !avx2_wide_tiles()) pairs = false;
  L->vec = pairs ? 16 : 8;
  L->in_step = pairs ? si : kLanes;
  L->out_step = pairs ? so : kLanes;
  L->res_step = pairs ? sr : kLanes;
  return true;
}

#ifdef PRUNECAL_JIT

struct JitConv::Code : Xbyak::CodeGenerator {
  // One group: rows [r0, r1) of the CSR weight; appends the weights it reads to `w`.
  Code(const int32_t* indptr, const int32_t* cols, const float* values, const int32_t* off, int r0, int r1,
       const JitLayout& lay, size_t bytes, std::vector<float>& w)
      : Xbyak::CodeGenerator(bytes, Xbyak::DontSetProtectRWE) {
    if (lay.avx2) {
      emit_avx2(indptr, cols, values, off, r0, r1, lay, w);
      return;
    }
    using namespace Xbyak;
    const int G = r1 - r0;
    const bool wide = lay.vec == 16;
    auto acc = [&](int i) -> Xmm { return wide ? Xmm(Zmm(i)) : Xmm(Ymm(i)); };
    const Xmm x = wide ? Xmm(zmm31) : Xmm(ymm31);
    // a 16-lane vector from two 8-lane halves `step` floats apart (one load when consecutive)
    auto load = [&](const Xmm& dst, const Reg64& base, int64_t pos, int step) {
      if (wide && step != kLanes) {
        vmovups(Ymm(dst.getIdx()), ptr[base + pos * 4]);
        vinsertf64x4(Zmm(dst.getIdx()), Zmm(dst.getIdx()), ptr[base + (pos + step) * 4], 1);
      } else {
        vmovups(dst, ptr[base + pos * 4]);
      }
    };
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
      load(x, rdi, t.off, lay.in_step);
      for (const auto& [i, v] : t.uses) {
        const int64_t idx = int64_t(w.size());
        w.push_back(v);
        vfmadd231ps(acc(i), x, ptr_b[rdx + idx * 4]);
      }
    }
    for (int i = 0; i < G; ++i) vaddps(acc(i), acc(i), ptr_b[rcx + int64_t(r0 + i) * 4]);
    if (lay.res_plane > 0) {
      Label no_res;
      test(r9, r9);
      jz(no_res, T_NEAR);
      for (int i = 0; i < G; ++i) {
        load(x, r9, int64_t(r0 + i) * lay.res_plane, lay.res_step);
        vaddps(acc(i), acc(i), x);
      }
      L(no_res);
    }
    Label store;
    test(r8, r8);
    jz(store, T_NEAR);
    vxorps(x, x, x);
    for (int i = 0; i < G; ++i) vmaxps(acc(i), x, acc(i));  // NaN stays NaN (second operand)
    L(store);
    for (int i = 0; i < G; ++i) {
      const int64_t pos = int64_t(r0 + i) * lay.out_plane;
      if (wide && lay.out_step != kLanes) {
        vmovups(ptr[rsi + pos * 4], Ymm(i));
        vextractf64x4(ptr[rsi + (pos + lay.out_step) * 4], Zmm(i), 1);
      } else {
        vmovups(ptr[rsi + pos * 4], acc(i));
      }
    }
    vzeroupper();
    ret();
    setProtectModeRE();
  }

  // The same kernel in AVX2+FMA (VEX) code: accumulators acc(i, h) = ymm(i * H + h) for the H
  // 8-lane halves of a tile, the weight broadcast into a register (no embedded broadcast), the
  // input halves in ymm15 / ymm14. FMAs in the same order as the fixed kernels: same bits.
  void emit_avx2(const int32_t* indptr, const int32_t* cols, const float* values, const int32_t* off, int r0,
                 int r1, const JitLayout& lay, std::vector<float>& w) {
    using namespace Xbyak;
    const int G = r1 - r0, H = lay.vec / kLanes;
    auto acc = [&](int i, int h) { return Ymm(i * H + h); };
    const Ymm wr = H == 1 ? ymm14 : ymm12;
    auto x = [&](int h) { return h == 0 ? ymm15 : ymm14; };
    std::map<int32_t, std::pair<int32_t, std::vector<std::pair<int, float>>>> taps;  // col -> (off, uses)
    for (int r = r0; r < r1; ++r)
      for (int32_t j = indptr[r]; j < indptr[r + 1]; ++j) {
        auto& t = taps[cols[j]];
        t.first = off[j];
        t.second.push_back({r - r0, values[j]});
      }
    for (int i = 0; i < G; ++i)
      for (int h = 0; h < H; ++h) vxorps(acc(i, h), acc(i, h), acc(i, h));
    // rdx walks along the weights so that every broadcast takes a one-byte displacement
    // (the code is fetched once per tile: its size bounds the speed)
    const int64_t w0 = int64_t(w.size());
    int64_t base = w0;
    for (const auto& [col, t] : taps) {
      for (int h = 0; h < H; ++h) vmovups(x(h), ptr[rdi + (int64_t(t.first) + int64_t(h) * lay.in_step) * 4]);
      for (const auto& [i, v] : t.second) {
        const int64_t idx = int64_t(w.size());
        w.push_back(v);
        if (idx - base >= 32) {
          add(rdx, 256);
          base += 64;
        }
        vbroadcastss(wr, ptr[rdx + (idx - base) * 4]);
        for (int h = 0; h < H; ++h) vfmadd231ps(acc(i, h), x(h), wr);
      }
    }
    for (int i = 0; i < G; ++i) {
      vbroadcastss(wr, ptr[rcx + int64_t(r0 + i) * 4]);
      for (int h = 0; h < H; ++h) vaddps(acc(i, h), acc(i, h), wr);
    }
    if (lay.res_plane > 0) {
      Label no_res;
      test(r9, r9);
      jz(no_res, T_NEAR);
      for (int i = 0; i < G; ++i)
        for (int h = 0; h < H; ++h) {
          vmovups(ymm15, ptr[r9 + (int64_t(r0 + i) * lay.res_plane + int64_t(h) * lay.res_step) * 4]);
          vaddps(acc(i, h), acc(i, h), ymm15);
        }
      L(no_res);
    }
    Label store;
    test(r8, r8);
    jz(store, T_NEAR);
    vxorps(ymm15, ymm15, ymm15);
    for (int i = 0; i < G; ++i)
      for (int h = 0; h < H; ++h) vmaxps(acc(i, h), ymm15, acc(i, h));  // NaN stays NaN (second operand)
    L(store);
    for (int i = 0; i < G; ++i)
      for (int h = 0; h < H; ++h)
        vmovups(ptr[rsi + (int64_t(r0 + i) * lay.out_plane + int64_t(h) * lay.out_step) * 4], acc(i, h));
    vzeroupper();
    ret();
    setProtectModeRE();
  }
};

bool JitConv::available() { return isa_config().jit != Isa::Generic; }

std::unique_ptr<JitConv> JitConv::build(const int32_t* indptr, const int32_t* cols, const float* values,
                                        const int32_t* off, int rows, const JitLayout& L) {
  if (!available() || L.avx2 != (isa_config().jit == Isa::Avx2) || rows <= 0 || (L.vec != 8 && L.vec != 16) || L.in_step < kLanes || L.out_step < kLanes ||
      L.res_step < kLanes || L.out_plane <= 0 || L.res_plane < 0)
    return nullptr;
  // every displacement in the code must fit 32 bits (bytes)
  if (L.avx2 && L.plane_outputs < kAvx2MinPlane) return nullptr;
  if ((int64_t(rows) * L.out_plane + L.out_step) * 4 >= kDisp) return nullptr;
  if ((int64_t(rows) * L.res_plane + L.res_step) * 4 >= kDisp) return nullptr;
  const int64_t nnz = indptr[rows];
  if (nnz > 0) {
    const auto [lo, hi] = std::minmax_element(off, off + nnz);
    if (int64_t(*lo) * 4 <= -kDisp || (int64_t(*hi) + L.in_step) * 4 >= kDisp) return nullptr;
  }
  if (code_bytes(nnz, rows) > kMaxCodeBytes) return nullptr;
  std::unique_ptr<JitConv> j(new JitConv());
  j->layout_ = L;
  j->zeros_.assign(size_t(rows), 0.f);
  const int mg = max_group(L), n_groups = (rows + mg - 1) / mg;
  try {
    for (int k = 0; k < n_groups; ++k) {
      Group g;
      g.row0 = k * mg;
      g.row1 = std::min(rows, (k + 1) * mg);
      const int64_t gnnz = indptr[g.row1] - indptr[g.row0];
      j->code_.push_back(std::make_unique<Code>(indptr, cols, values, off, g.row0, g.row1, L,
                                                size_t(code_bytes(gnnz, g.row1 - g.row0)), g.weights));
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
std::unique_ptr<JitConv> JitConv::build(const int32_t*, const int32_t*, const float*, const int32_t*, int,
                                        const JitLayout&) {
  return nullptr;
}

#endif

JitConv::~JitConv() = default;

}  // namespace prunecal
