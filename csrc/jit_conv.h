// Run-time generated sparse conv kernels (x86-64 with AVX-512F/VL; code emitted with the vendored
// xbyak assembler, csrc/third_party/xbyak).
//
// The fixed kernels keep a tile of output pixels of ONE output channel in registers and load an
// input vector for every nonzero: one load per multiply-add, the limit of a CSR scheme. A
// generated kernel keeps one vector of 16 output pixels (two 8-wide rows when the output is 8
// wide; 8 pixels where neither fits) for a GROUP of up to 30 output channels in registers and walks the input taps
// that any of them uses: each input vector is loaded once and feeds the multiply-adds of every
// channel of the group with a nonzero there, each weight a broadcast operand of its FMA. The code
// is specific to one weight and one input geometry (offsets and values are constants of it).
//
// Arithmetic per output value is the same as the fixed kernels': 0, then one FMA per nonzero in
// CSR order (taps sorted by column), then + bias, then max(0, .) for ReLU; the results are
// bitwise identical.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

namespace prunecal {

class JitConv {
 public:
  // Generated kernels for CSR rows [0, rows) (indptr, column indices, values, per-nonzero input
  // offsets `off` in floats, relative to lane 0 of a tile), writing output channel r at
  // out + r * out_plane. A tile is `vec` (16 or 8) consecutive output positions; its input lanes
  // 0..7 are consecutive, lanes 8..15 (vec 16) start in_step floats after lane 0 (8: consecutive;
  // more: e.g. two 8-wide output rows read from padded planes).
  // Returns nullptr where no kernel can be made: CPU without AVX-512F/VL, PRUNECAL_NO_JIT set
  // (and not "0"), offsets or code too large, no executable memory.
  static std::unique_ptr<JitConv> build(const int32_t* indptr, const int32_t* cols, const float* values,
                                        const int32_t* off, int rows, int vec, int in_step, int64_t out_plane);
  ~JitConv();

  int n_groups() const { return int(groups_.size()); }
  int vec() const { return vec_; }  // output pixels per tile: 16 or 8
  // Output channels [row0, row1) of group k.
  int row0(int k) const { return groups_[size_t(k)].row0; }
  int row1(int k) const { return groups_[size_t(k)].row1; }
  // Group k on one tile: in points at lane 0's input position, out at lane 0's output position
  // of channel 0; bias: per output channel (C_out floats) or nullptr.
  void run(int k, const float* in, float* out, const float* bias, bool relu) const {
    const Group& g = groups_[size_t(k)];
    g.fn(in, out, g.weights.data(), bias ? bias : zeros_.data(), relu ? 1 : 0);
  }
  // True when the CPU and the environment allow generated kernels (read once per process).
  static bool available();

 private:
  using Fn = void (*)(const float* in, float* out, const float* w, const float* bias, int64_t relu);
  struct Group {
    int row0 = 0, row1 = 0;
    std::vector<float> weights;  // in the order the code reads them
    Fn fn = nullptr;
  };
  struct Code;
  JitConv() = default;
  int vec_ = 16;
  std::vector<Group> groups_;
  std::vector<float> zeros_;
  std::vector<std::unique_ptr<Code>> code_;
};

}  // namespace prunecal
