// Sparse conv2d driver: per-image zero-padded (phase-split for stride > 1) planes, work split
// over images (large batch) or over output-channel blocks x slot ranges (batch < 4 * threads).
#include <algorithm>
#include <stdexcept>

#include "conv_exec.h"
#include "jit_conv.h"
#include "packed_weight.h"
#include "phase_planes.h"
#include "plan.h"  // plan_fast_kernels, plan_fast_shape (which fixed-shape tiles apply)
#include "thread_pool.h"

namespace prunecal {
namespace {

constexpr int64_t kMinSplitFmas = 16384;  // generated kernels: vector FMAs of one image worth a split

// Per-thread plane buffer, reused across calls; remembers the layout whose zero borders it holds.
struct PlaneBuffer {
  std::vector<float> data;
  const Geometry* layout = nullptr;
  std::shared_ptr<Geometry> keep;  // keeps `layout` alive so the pointer cannot be reused
  int C = 0;
};
thread_local PlaneBuffer t_planes;

// The calling thread's buffer for `n` floats; *zero_borders tells whether copy_phase_planes must
// clear it first.
float* planes(int64_t n, const std::shared_ptr<Geometry>& g, int C, bool* zero_borders) {
  PlaneBuffer& b = t_planes;
  if (int64_t(b.data.size()) < n) {
    b.data.assign(size_t(n), 0.f);
    b.layout = nullptr;
  }
  *zero_borders = !(b.layout == g.get() && b.C == C);
  b.layout = g.get();
  b.keep = g;
  b.C = C;
  return b.data.data();
}

}  // namespace

void PackedWeight::conv2d(const float* x, int N, int C, int H, int W, float* y, const float* bias,
                          int stride, int pad, int dil, int groups, bool relu, int threads,
                          const KernelSet& k) {
  if (N <= 0) return;
  auto gp = geometry(H, W, stride, pad, dil);
  Geometry& g = *gp;
  const int Co = rows(), Cog = Co / groups, r = block_rows_;
  const bool use_bsr = kind_ == "bsr" && (groups == 1 || Cog % r == 0);
  const int64_t img_in = int64_t(C) * H * W, out_plane = int64_t(g.Ho) * g.Wo;
  const int64_t img_out = int64_t(Co) * out_plane, buf_floats = C * g.chan_floats + kSlack;
  const int S = int(g.slots.size());
  // fixed-shape tiles for the CIFAR shapes (AVX2 / NEON kernel sets; tiles start at an output row)
  const int fast = plan_fast_kernels(k) ? plan_fast_shape(g.Wo, g.Wq, stride, dil) : 0;

  const ConvRows stored = conv_rows(*this, g, use_bsr, false, groups, fast);
  // the rows an image reads: the stored ones, or the dense form when it holds NaN / Inf
  auto rows_for = [&](bool bad) { return bad ? conv_rows(*this, g, false, true, groups) : stored; };
  auto compute = [&](const float* buf, float* yi, const ConvRows& rows_in, int grp, int u0, int u1, int s0, int s1) {
    ConvTask t;
    t.slots = g.slots.data();
    t.out = yi;
    t.out_stride = out_plane;
    t.bias = bias;
    t.relu = relu;
    t.valid_rows = Co;
    conv_units(k, rows_in, t, buf, grp, u0, u1, s0, s1);
  };
  // generated kernels (CSR, one group): one call per (channel group, tile of 8 / 16 outputs)
  const JitConv* jit = (!use_bsr && groups == 1 && k.x86()) ? this->jit(g) : nullptr;
  const int n_tiles = jit ? S / jit->slots_per_tile() : 0;
  auto compute_jit = [&](const float* buf, float* yi, int k0, int k1, int t0, int t1) {
    jit_tiles(*jit, buf, g.slots.data(), yi, bias, relu, nullptr, nullptr, k0, k1, t0, t1);
  };
  auto pack = [&](int64_t n, float* buf, bool zero_borders) {
    const PlaneSource image{x + n * img_in, int64_t(H) * W, W, C, H, W};
    const bool bad = copy_phase_planes(image, g, buf, 0, C, zero_borders);  // (scans while copying)
    if (bad) ensure_dense(g);
    return bad;
  };

  if (threads <= 1 || N >= 4 * threads) {
    // whole images per worker, each in its own plane buffer
    parallel_for(threads, N, [&](int64_t n, int) {
      bool zero;
      float* buf = planes(buf_floats, gp, C, &zero);
      const bool bad = pack(n, buf, zero);
      if (jit && !bad) {
        compute_jit(buf, y + n * img_out, 0, jit->n_groups(), 0, n_tiles);
        return;
      }
      const ConvRows rows_n = rows_for(bad);
      for (int grp = 0; grp < groups; ++grp) compute(buf, y + n * img_out, rows_n, grp, 0, rows_n.units(), 0, S);
    });
    return;
  }
  // few images: split each over (group, unit block, slot range)
  bool zero;
  float* buf = planes(buf_floats, gp, C, &zero);
  for (int64_t n = 0; n < N; ++n) {
    const bool bad = pack(n, buf, zero);
    zero = false;
    if (jit && !bad) {  // tasks: (channel group, run of tiles)
      const int ng = jit->n_groups();
      float* yi = y + n * img_out;
      // little work (under ~16k vector FMAs, a few us): the caller alone, a split measured no
      // faster at batch 1 (CIFAR layers at 90 %: 0.2-1.4 us slower on 2 threads)
      if (nnz() * n_tiles < kMinSplitFmas) {
        compute_jit(buf, yi, 0, ng, 0, n_tiles);
        continue;
      }
      const int chunks = std::max(1, std::min(n_tiles, (4 * threads + ng - 1) / ng));
      parallel_for(threads, int64_t(ng) * chunks, [&](int64_t task, int) {
        const int kk = int(task / chunks), c = int(task % chunks);
        compute_jit(buf, yi, kk, kk + 1, int(int64_t(n_tiles) * c / chunks), int(int64_t(n_tiles) * (c + 1) / chunks));
      });
      continue;
    }
    const ConvRows rows_n = rows_for(bad);
    const GroupSplit sp = split_groups(rows_n, S, threads);
    float* yi = y + n * img_out;
    parallel_for(threads, sp.tasks(), [&](int64_t task, int) {
      int grp, u0, u1, s0, s1;
      sp.task(task, &grp, &u0, &u1, &s0, &s1);
      compute(buf, yi, rows_n, grp, u0, u1, s0, s1);
    });
  }
}

}  // namespace prunecal
