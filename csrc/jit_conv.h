// Run-time generated sparse conv kernels (x86-64; code emitted with the vendored xbyak assembler,
// csrc/third_party/xbyak). Two code generators, picked once by isa_config().jit (common.h):
// AVX-512F/VL (below) and AVX2+FMA (16 ymm registers, no embedded broadcast: the weight is
// broadcast into a register, 16-lane tiles are two ymm halves, 6 output channels a group;
// made only for output planes of >= 1024 pixels, where they beat the fixed AVX2 tiles).
//
// The fixed kernels keep a tile of output pixels of ONE output channel in registers and load an
// input vector for every nonzero: one load per multiply-add, the limit of a CSR scheme. A
// generated kernel keeps one vector of 16 output pixels (or 8 where 16 do not fit) for a GROUP
// of up to 31 output channels in registers and walks the input taps that any of them uses: each
// input vector is loaded once and feeds the multiply-adds of every channel of the group with a
// nonzero there, each weight a broadcast operand of its FMA. The code is specific to one weight
// and one input / output geometry (offsets, values and strides are constants in it).
//
// Arithmetic per output value is the same as the fixed kernels': 0, then one FMA per nonzero in
// CSR order (taps sorted by column), then + bias, then + residual, then max(0, .) for ReLU; the
// results are bitwise identical.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "common.h"

namespace prunecal {

// Where a tile's values live. A tile is `vec` outputs of one output channel; with vec 16 its
// lanes 0..7 are consecutive, lanes 8..15 start `*_step` floats after lane 0 (8: consecutive;
// more: e.g. two 8-wide rows of padded planes).
struct JitLayout {
  bool avx2 = false;  // AVX2+FMA code (isa_config().jit == Avx2), else AVX-512F/VL code
  int vec = 16;
  int in_step = 8, out_step = 8, res_step = 8;
  int64_t out_plane = 0;  // floats between output channels
  int64_t res_plane = 0;  // floats between residual channels; 0: the kernels take no residual
  int64_t plane_outputs = 0;  // output pixels per channel and image (AVX2 code only for large planes)
};

class JitConv {
 public:
  // Generated kernels for CSR rows [0, rows) (indptr, column indices, values, per-nonzero input
  // offsets `off` in floats, relative to lane 0 of a tile); output channel r of a tile at
  // out + r * out_plane. Returns nullptr where no kernel can be made: isa_config().jit none
  // (generic path, PRUNECAL_NO_JIT), a layout made for the other generator, AVX2 code for a
  // plane under 1024 outputs, offsets or code too large, no executable memory.
  static std::unique_ptr<JitConv> build(const int32_t* indptr, const int32_t* cols, const float* values,
                                        const int32_t* off, int rows, const JitLayout& layout);
  // The tile layout of `slots` (8-lane runs, e.g. Geometry::slots; res_q: per slot position in a
  // residual, or nullptr): 16-lane tiles of slot pairs where every pair has the same steps, else
  // 8-lane tiles; false if a slot is not a full 8-lane run. (Strides: filled by the caller.)
  static bool tile_layout(const std::vector<Slot>& slots, const int32_t* res_q, JitLayout* layout);
  ~JitConv();

  int n_groups() const { return int(groups_.size()); }
  int vec() const { return layout_.vec; }
  int slots_per_tile() const { return layout_.vec / kLanes; }
  // Output channels [row0, row1) of group k.
  int row0(int k) const { return groups_[size_t(k)].row0; }
  int row1(int k) const { return groups_[size_t(k)].row1; }
  // Group k on one tile: in / out / res point at lane 0 of the tile (channel 0); bias: C_out
  // floats or nullptr; res: nullptr for none (only with layout.res_plane > 0); relu applies
  // after the residual.
  void run(int k, const float* in, float* out, const float* bias, bool relu, const float* res = nullptr) const {
    const Group& g = groups_[size_t(k)];
    g.fn(in, out, g.weights.data(), bias ? bias : zeros_.data(), relu ? 1 : 0, res);
  }
  // True when the CPU and the environment allow generated kernels (read once per process).
  static bool available();

 private:
  using Fn = void (*)(const float* in, float* out, const float* w, const float* bias, int64_t relu,
                      const float* res);
  struct Group {
    int row0 = 0, row1 = 0;
    std::vector<float> weights;  // in the order the code reads them
    Fn fn = nullptr;
  };
  struct Code;
  JitConv() = default;
  JitLayout layout_;
  std::vector<Group> groups_;
  std::vector<float> zeros_;
  std::vector<std::unique_ptr<Code>> code_;
};

}  // namespace prunecal
