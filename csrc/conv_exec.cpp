#include "conv_exec.h"

#include <algorithm>

#include "jit_conv.h"
#include "packed_weight.h"
#include "plan.h"  // plan_csr_fast (the fixed-shape CSR tiles), ConvTask

namespace prunecal {

int ConvRows::units() const {
  if (form == Form::Bsr) return groups == 1 ? (Co + block_rows - 1) / block_rows : Cog() / block_rows;
  return Cog();
}

ConvRows conv_rows(const PackedWeight& w, const Geometry& g, bool bsr, bool dense, int groups, int fast) {
  ConvRows r;
  r.Co = w.rows();
  r.groups = groups;
  r.block_rows = w.block_rows();
  r.cin = w.cin_per_group();
  r.chan_floats = g.chan_floats;
  if (dense) {
    r.form = ConvRows::Form::Dense;
    r.indptr = g.dense_indptr.data(), r.off = g.dense_off.data(), r.val = g.dense_val.data();
  } else if (bsr) {
    r.form = ConvRows::Form::Bsr;
    r.indptr = w.stored_indptr(), r.off = g.bsr_off.data(), r.val = w.stored_values();
  } else {
    r.form = ConvRows::Form::Csr;  // (the CSR view: a BSR weight whose blocks do not tile the groups runs it too)
    r.indptr = w.csr_indptr().data(), r.off = g.csr_off.data(), r.val = w.csr_values().data();
    r.fast = fast;
  }
  r.row_slots = (g.Wo + kLanes - 1) / kLanes;
  return r;
}

RowsDone conv_units(const KernelSet& k, const ConvRows& r, ConvTask t, const float* planes, int grp, int u0, int u1,
                    int s0, int s1) {
  t.in = planes + int64_t(grp) * r.group_floats();
  t.indptr = r.indptr, t.off = r.off, t.val = r.val;
  t.in_channels = r.cin, t.in_chan_floats = r.chan_floats;
  RowsDone d;
  if (r.form == ConvRows::Form::Bsr) {
    const int base = r.groups == 1 ? 0 : grp * (r.Cog() / r.block_rows);
    d.r0 = (base + u0) * r.block_rows, d.r1 = std::min(r.Co, (base + u1) * r.block_rows);
    k.bsr(t, r.block_rows, base + u0, base + u1, s0, s1);
    return d;
  }
  d.r0 = grp * r.Cog() + u0, d.r1 = grp * r.Cog() + u1;
  if (r.form == ConvRows::Form::Csr && r.fast && s0 % r.row_slots == 0) {
    plan_csr_fast(r.fast, t, d.r0, d.r1, s0, s1, k.csr);
    d.epilogue_done = true;
  } else {
    k.csr(t, d.r0, d.r1, s0, s1);
  }
  return d;
}

GroupSplit split_groups(const ConvRows& r, int S, int threads) {
  GroupSplit s;
  const int U = r.units();
  s.groups = r.groups, s.U = U, s.S = S;
  s.ub = r.form == ConvRows::Form::Bsr ? 1 : std::max(1, std::min(8, U / (2 * threads)));
  s.nub = (U + s.ub - 1) / s.ub;
  s.sc = S;
  const int64_t row_tasks = int64_t(s.groups) * s.nub;
  if (row_tasks < 4 * threads) {
    const int64_t want = (4 * threads + row_tasks - 1) / row_tasks;
    s.sc = int(std::max<int64_t>(8, ((S + want - 1) / want + 7) / 8 * 8));
  }
  s.nsc = std::max(1, (S + s.sc - 1) / std::max(1, s.sc));
  return s;
}

void GroupSplit::task(int64_t t, int* grp, int* u0, int* u1, int* s0, int* s1) const {
  const int si = int(t % nsc);
  const int64_t rt = t / nsc;
  *grp = int(rt / nub);
  *u0 = int(rt % nub) * ub;
  *u1 = std::min(U, *u0 + ub);
  *s0 = si * sc;
  *s1 = std::min(S, *s0 + sc);
}

void jit_tiles(const JitConv& j, const float* planes, const Slot* slots, float* out, const float* bias, bool relu,
               const float* res, const int32_t* res_q, int k0, int k1, int t0, int t1) {
  const int spt = j.slots_per_tile();
  for (int kk = k0; kk < k1; ++kk)
    for (int t = t0; t < t1; ++t) {
      const int s = t * spt;
      const Slot& sl = slots[s];
      j.run(kk, planes + sl.in_q, out + sl.out_q, bias, relu, res ? res + res_q[s] : nullptr);
    }
}

}  // namespace prunecal
