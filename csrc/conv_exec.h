// The conv execution core shared by PackedWeight::conv2d (one layer, csrc/conv.cpp) and
// Plan::run_conv (one op of a plan, csrc/plan.cpp): which rows a task reads (stored CSR / BSR,
// or the dense fallback), the kernel call for a range of output-channel units and slots, the
// split of a conv over (group, unit block, slot range), and the generated kernels' tile loop.
// The callers keep what differs: how the input planes are made, and the plan's epilogue.
#pragma once
#include <cstdint>

#include "common.h"

namespace prunecal {

class JitConv;
class PackedWeight;
struct Geometry;

// The rows a conv reads, per group. Units of work: output channels (CSR, dense) or block rows (BSR).
struct ConvRows {
  enum class Form { Csr, Bsr, Dense };
  Form form = Form::Csr;
  const int32_t* indptr = nullptr;  // over rows (CSR, dense) or block rows (BSR)
  const int32_t* off = nullptr;     // input offset per nonzero (CSR, dense) or block (BSR)
  const float* val = nullptr;
  int Co = 0, groups = 1, block_rows = 1;
  int cin = 0;               // input channels per group
  int64_t chan_floats = 0;   // input floats between channels' planes
  int fast = 0;              // CSR: fixed-shape tile id (plan_fast_shape), 0: the kernel set's rows
  int row_slots = 1;         // slots per output row: the fixed tiles take slot ranges that start a row
  int Cog() const { return Co / groups; }
  int64_t group_floats() const { return int64_t(cin) * chan_floats; }  // input floats between groups' planes
  int units() const;  // per group
};

// w's stored form (BSR when `bsr`), or with `dense` the dense form of g (ensure_dense first);
// `fast` is used for the CSR form only.
ConvRows conv_rows(const PackedWeight& w, const Geometry& g, bool bsr, bool dense, int groups, int fast = 0);

// Output rows [r0, r1) a call wrote; epilogue_done: the fixed-shape tiles applied t's epilogue
// (residual, shifted copies) themselves.
struct RowsDone {
  int r0 = 0, r1 = 0;
  bool epilogue_done = false;
};

// Units [u0, u1) of group grp on slots [s0, s1): t is complete but for in / indptr / off / val,
// set here (in: `planes` + the group's offset). The fixed-shape tiles run where s0 starts an
// output row, the kernel set's rows elsewhere (same bits).
RowsDone conv_units(const KernelSet& k, const ConvRows& r, ConvTask t, const float* planes, int grp, int u0, int u1,
                    int s0, int s1);

// Tasks over (group, block of units, range of slots) of `r` on S slots: enough of them for
// dynamic balance on `threads` (>= 4 per thread where the slots allow), unit blocks of <= 8
// (1 for BSR, whose units are already blocks of rows).
struct GroupSplit {
  int groups = 1, U = 0, ub = 1, nub = 1, S = 0, sc = 0, nsc = 1;
  int64_t tasks() const { return int64_t(groups) * nub * nsc; }
  void task(int64_t t, int* grp, int* u0, int* u1, int* s0, int* s1) const;
};
GroupSplit split_groups(const ConvRows& r, int S, int threads);

// Generated kernels: groups [k0, k1) on tiles [t0, t1); tile t starts at slot t * slots_per_tile;
// res / res_q: a fused residual (nullptr: none).
void jit_tiles(const JitConv& j, const float* planes, const Slot* slots, float* out, const float* bias, bool relu,
               const float* res, const int32_t* res_q, int k0, int k1, int t0, int t1);

}  // namespace prunecal
