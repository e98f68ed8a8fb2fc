// The plan's lanes section (plan.h, LaneSection; layout and kernels in plan_lanes.h): which ops
// it covers, and running a block of images through it.
#include <algorithm>
#include <cstdlib>
#include <set>
#include <string>
#include <stdexcept>

#include "plan.h"

namespace prunecal {
namespace {

constexpr int L = kBatchLanes;

// Buffers read by ops [i0, i1) before any op of that range writes them (in order).
std::vector<int> live_in(const std::vector<PlanOp>& ops, size_t i0, size_t i1) {
  std::set<int> written;
  std::vector<int> in;
  for (size_t i = i0; i < i1; ++i) {
    const PlanOp& op = ops[i];
    for (int b : {op.in0, op.in1, op.res})
      if (b >= 0 && !written.count(b) && std::find(in.begin(), in.end(), b) == in.end()) in.push_back(b);
    written.insert(op.out);
  }
  return in;
}

// An integer setting from the environment: dflt when unset or empty; std::invalid_argument
// naming the variable when it is not an integer in [lo, hi].
int env_int(const char* name, int dflt, long lo, long hi) {
  const char* e = std::getenv(name);
  if (!e || !e[0]) return dflt;
  char* end = nullptr;
  const long v = std::strtol(e, &end, 10);
  if (*end || v < lo || v > hi)
    throw std::invalid_argument(std::string(name) + ": expected an integer >= " + std::to_string(lo));
  return int(v);
}

// Lane i of a lanes buffer <-> the interior of the same buffer's per-image copy.
void to_lane(const float* img, const BufSpec& sb, float* lanes, const LaneSpec& ls, int i) {
  for (int c = 0; c < sb.C; ++c)
    for (int r = 0; r < sb.H; ++r) {
      const float* p = img + c * sb.plane() + sb.pos(r, 0);
      float* q = lanes + c * ls.plane() + ls.pos(r, 0) + i;
      for (int x = 0; x < sb.W; ++x) q[x * L] = p[x];
    }
}

void from_lane(const float* lanes, const LaneSpec& ls, int i, float* img, const BufSpec& sb) {
  for (int c = 0; c < sb.C; ++c)
    for (int r = 0; r < sb.H; ++r) {
      float* p = img + c * sb.plane() + sb.pos(r, 0);
      const float* q = lanes + c * ls.plane() + ls.pos(r, 0) + i;
      for (int x = 0; x < sb.W; ++x) p[x] = q[x * L];
    }
}

}  // namespace

LaneSection Plan::lane_range(int max_pixels) const {
  LaneSection s;
  s.max_pixels = max_pixels;
  if (max_pixels <= 0 || input_ < 0 || output_ < 0) return s;
  auto fits = [&](const PlanOp& op) {
    const BufSpec& so = bufs_[size_t(op.out)];
    if (int64_t(so.H) * so.W > max_pixels) return false;
    switch (op.kind) {
      case OpKind::Conv: {
        // only where the image-by-image kernels leave vector lanes empty (rows of 4 of 8 lanes
        // on a 4x4 map, 2 on 2x2), and not for 1x1 convs: MobileNetV2's 1x1 convs on 4x4 maps
        // measured 2-12 % slower in lanes (partial sums of 1280 channels through the bands)
        int64_t used = 0;
        for (const Slot& sl : op.slots) used += sl.n;
        const bool sparse_lanes = 4 * used < 3 * int64_t(op.slots.size()) * kLanes;
        return op.groups == 1 && op.res < 0 && sparse_lanes && op.pw->kh() * op.pw->kw() > 1;
      }
      case OpKind::MaxPool:
      case OpKind::Relu:
      case OpKind::Clamp:
      case OpKind::Add:
        return true;
      default:
        return false;
    }
  };
  // candidate runs: maximal runs of fitting ops; keep the one with the most stored weights
  int64_t best = 0;
  // ops [a, b) as the section, if it qualifies (one entry buffer, one exit) and beats `best`
  auto consider = [&](size_t a, size_t b) {
    int64_t nnz = 0;
    for (size_t i = a; i < b; ++i)
      if (ops_[i].kind == OpKind::Conv) nnz += ops_[i].pw->nnz();
    const std::vector<int> in = live_in(ops_, a, b);
    std::set<int> written;
    for (size_t i = a; i < b; ++i) written.insert(ops_[i].out);
    // what the ops after the run read from before them: only one buffer, written in the run
    std::vector<int> after = live_in(ops_, b, ops_.size());
    if (b == ops_.size() || written.count(output_)) after.push_back(output_);
    std::sort(after.begin(), after.end());
    after.erase(std::unique(after.begin(), after.end()), after.end());
    const bool ok = in.size() == 1 && in[0] != output_ && after.size() == 1 && written.count(after[0]) &&
                    (b < ops_.size() || after[0] == output_);
    if (ok && nnz > best) {
      best = nnz;
      s.t0 = a, s.t1 = b, s.entry = in[0], s.exit = after[0];
    }
    return ok;
  };
  for (size_t a = 0; a < ops_.size();) {
    if (!fits(ops_[a])) {
      ++a;
      continue;
    }
    size_t b = a;
    while (b < ops_.size() && fits(ops_[b])) ++b;
    // leading max-pools from a larger map run per image when the run without them qualifies:
    // the entry copy into the lanes (float by float) then moves their smaller output
    // (VGG: 256 x 4x4 instead of 256 x 8x8)
    size_t a2 = a;
    while (a2 < b && ops_[a2].kind == OpKind::MaxPool &&
           bufs_[size_t(ops_[a2].in0)].features() > bufs_[size_t(ops_[a2].out)].features())
      ++a2;
    if (a2 == a || a2 == b || !consider(a2, b)) consider(a, b);
    a = b;
  }
  if (s.empty()) return s;
  s.pad.resize(bufs_.size());
  for (size_t b = 0; b < bufs_.size(); ++b) s.pad[b] = bufs_[b].P;
  for (size_t i = s.t0; i < s.t1; ++i)
    if (ops_[i].kind == OpKind::Conv) s.pad[size_t(ops_[i].in0)] = std::max(s.pad[size_t(ops_[i].in0)], ops_[i].pad);
  return s;
}

LaneSection Plan::lane_section(int max_pixels, int band_kb) const {
  LaneSection s = lane_range(max_pixels);
  s.band_kb = band_kb;
  if (s.empty()) return s;
  s.convs.resize(s.t1 - s.t0);
  for (size_t i = s.t0; i < s.t1; ++i) {
    const PlanOp& op = ops_[i];
    if (op.kind != OpKind::Conv) continue;
    const BufSpec &bi = bufs_[size_t(op.in0)], &bo = bufs_[size_t(op.out)];
    const LaneSpec li = s.spec(bi, op.in0), lo = s.spec(bo, op.out);
    const PackedWeight& w = *op.pw;
    LaneConv& c = s.convs[i - s.t0];
    const int taps = w.kh() * w.kw();
    for (int32_t col : w.csr_cols()) {
      const int ci = col / taps, ky = (col % taps) / w.kw(), kx = col % w.kw();
      const int64_t o = int64_t(ci) * li.plane() + int64_t(ky) * op.dil * li.row() + int64_t(kx) * op.dil * L;
      if (o >= (int64_t(1) << 31)) throw std::invalid_argument("conv " + op.name + ": too large for the lanes layout");
      c.off.push_back(int32_t(o));
    }
    // bands of input channels of about band_kb each
    const int64_t band_floats = int64_t(band_kb) * 1024 / int64_t(sizeof(float));
    const int cpb = int(std::max<int64_t>(1, band_floats / li.plane()));
    c.nblk = (bi.C + cpb - 1) / cpb;
    const std::vector<int32_t>& ip = w.csr_indptr();
    const std::vector<int32_t>& cols = w.csr_cols();
    for (int r = 0; r < w.rows(); ++r) {
      int32_t j = ip[size_t(r)];
      for (int b = 0; b < c.nblk; ++b) {
        c.bptr.push_back(j);
        while (j < ip[size_t(r) + 1] && cols[size_t(j)] / taps < (b + 1) * cpb) ++j;
      }
      c.bptr.push_back(ip[size_t(r) + 1]);
    }
    for (int oy = 0; oy < bo.H; ++oy)
      for (int ox = 0; ox < bo.W; ++ox) {
        c.in_base.push_back(int32_t(int64_t(oy * op.stride - op.pad + li.P) * li.row() +
                                    int64_t(ox * op.stride - op.pad + li.P) * L));
        c.out_pos.push_back(int32_t(lo.pos(oy, ox)));
      }
  }
  return s;
}

int Plan::lane_pixels_setting() { return env_int("PRUNECAL_PLAN_LANES", kDefaultLanePixels, 0, 1 << 20); }

std::shared_ptr<const LaneSection> Plan::lanes_for_run() {
  const int px = lane_pixels_setting();
  const int band_kb = env_int("PRUNECAL_PLAN_LANE_BAND_KB", kLaneBandKB, 1, 1 << 20);
  if (!lanes_ || lanes_->max_pixels != px || lanes_->band_kb != band_kb || lanes_ops_ != ops_.size()) {
    lanes_ = std::make_shared<const LaneSection>(lane_section(px, band_kb));
    lanes_ops_ = ops_.size();
  }
  return lanes_;
}

int64_t Plan::lane_offsets(const LaneSection& s, std::vector<int64_t>& at) const {
  at.assign(bufs_.size(), -1);
  int64_t total = 0;
  for (size_t i = s.t0; i < s.t1; ++i)
    for (int b : {ops_[i].in0, ops_[i].in1, ops_[i].out})
      if (b >= 0 && at[size_t(b)] < 0) {
        at[size_t(b)] = total;
        total += (s.spec(bufs_[size_t(b)], b).floats() + kSlack + 15) / 16 * 16;
      }
  return total;
}

int64_t Plan::lane_bytes() const {
  const LaneSection s = lane_range(lane_pixels_setting());
  std::vector<int64_t> at;
  return s.empty() ? 0 : lane_offsets(s, at) * int64_t(sizeof(float));
}

void Plan::run_lane_block(const float* x, int64_t n0, int m, float* y, Arena& a, const KernelSet& k,
                          const LaneSection& s) {
  if (a.lane_for.get() != &s) {  // this worker's lanes buffers for the section
    std::vector<int64_t> at;
    const int64_t total = lane_offsets(s, at);
    a.lane_mem.assign(size_t(total + 16), 0.f);
    float* base = a.lane_mem.data();
    base += (16 - (reinterpret_cast<uintptr_t>(base) / sizeof(float)) % 16) % 16;
    a.lane_buf.assign(bufs_.size(), nullptr);
    for (size_t b = 0; b < bufs_.size(); ++b)
      if (at[b] >= 0) a.lane_buf[b] = base + at[b];
    a.lane_for = lanes_;
  }
  const int64_t fin = bufs_[size_t(input_)].features(), fout = bufs_[size_t(output_)].features();
  // before the section: image by image, each image's entry buffer into its lane
  const BufSpec &se = bufs_[size_t(s.entry)], &sx = bufs_[size_t(s.exit)];
  for (int i = 0; i < m; ++i) {
    run_ops(x + (n0 + i) * fin, nullptr, 0, s.t0, a, 1, false, k);
    to_lane(a.buf[size_t(s.entry)], se, a.lane_buf[size_t(s.entry)], s.spec(se, s.entry), i);
  }
  // the section, once for the block (lanes >= m hold an earlier block's finite values: unused)
  const LaneKernels& lk = lane_kernels_for(k);
  for (size_t i = s.t0; i < s.t1; ++i) {
    const PlanOp& op = ops_[i];
    const LaneSpec so = s.spec(bufs_[size_t(op.out)], op.out), si = s.spec(bufs_[size_t(op.in0)], op.in0);
    float* out = a.lane_buf[size_t(op.out)];
    const float* in = a.lane_buf[size_t(op.in0)];
    switch (op.kind) {
      case OpKind::Conv: {
        const LaneConv& c = s.convs[i - s.t0];
        const PackedWeight& w = *op.pw;
        LaneConvTask t{in, c.bptr.data(), c.nblk, c.off.data(), w.csr_values().data(), c.in_base.data(),
                       c.out_pos.data(), int(c.out_pos.size()), out, so.plane(),
                       op.bias.empty() ? nullptr : op.bias.data(), op.relu};
        lk.conv(t, 0, w.rows());
        break;
      }
      case OpKind::MaxPool:
        lanes_maxpool(in, si, out, so, op.pool_k, op.stride, op.pad);
        break;
      case OpKind::Relu:
        lanes_relu(in, si, out, so);
        break;
      case OpKind::Clamp:
        lanes_clamp(in, si, out, so, op.lo, op.hi);
        break;
      case OpKind::Add:
        lanes_add(in, si, a.lane_buf[size_t(op.in1)], s.spec(bufs_[size_t(op.in1)], op.in1), out, so, op.relu);
        break;
      default:
        throw std::logic_error("lanes section: unsupported op " + op.name);
    }
  }
  // after the section: each image's lane back into the exit buffer, then its remaining ops
  for (int i = 0; i < m; ++i) {
    from_lane(a.lane_buf[size_t(s.exit)], s.spec(sx, s.exit), i, a.buf[size_t(s.exit)], sx);
    op_replicate(a.buf[size_t(s.exit)], sx, 0, sx.C);
    run_ops(nullptr, y + (n0 + i) * fout, s.t1, ops_.size(), a, 1, false, k);
  }
}

void Plan::run_images(const float* x, int64_t n0, int64_t m, float* y, Arena& a, const KernelSet& k,
                      const LaneSection* lanes) {
  const int64_t fin = bufs_[size_t(input_)].features(), fout = bufs_[size_t(output_)].features();
  auto one = [&](int64_t n) {
    const float* xi = x + n * fin;
    float* yi = y + n * fout;
    const bool bad = k.nonfinite(xi, fin);
    run_image(xi, yi, a, 1, bad, k);
    if (!bad && k.nonfinite(yi, fout)) run_image(xi, yi, a, 1, true, k);  // overflow inside
  };
  for (int64_t b0 = n0; b0 < n0 + m;) {
    const int64_t left = n0 + m - b0;
    // blocks of L, the last ones evened out (20 images: 10 + 10, not 16 + 4)
    const int64_t nb = (left + L - 1) / L;
    const int bm = int(std::min<int64_t>(L, (left + nb - 1) / nb));
    bool ok = lanes && !lanes->empty() && bm >= kMinLaneImages;
    for (int i = 0; ok && i < bm; ++i) ok = !k.nonfinite(x + (b0 + i) * fin, fin);
    if (!ok) {
      for (int i = 0; i < bm; ++i) one(b0 + i);
    } else {
      run_lane_block(x, b0, bm, y, a, k, *lanes);
      for (int i = 0; i < bm; ++i) {
        float* yi = y + (b0 + i) * fout;
        if (k.nonfinite(yi, fout)) run_image(x + (b0 + i) * fin, yi, a, 1, true, k);
      }
    }
    b0 += bm;
  }
}

}  // namespace prunecal
