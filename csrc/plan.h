// Plan: a whole network (conv + folded BN + ReLU, residual add, option-A shortcut, global
// average pool, linear) executed as ONE native call per batch.
//
// Activations live in numbered buffers, one image each, in "padded plane" layout: C planes of
// H + 2P rows whose P-wide border is always zero, followed by kSlack zeros. Two row layouts
// (BufSpec): plain, rows of W + 2P floats; aligned (default with the AVX-512 tiles, images whose
// width is a multiple of 16), rows of `pitch` floats (a multiple of 16) whose interior starts on a 64-byte boundary
// and whose zero gap is both the right padding of a row and the left padding of the next. A
// buffer read by a 3x3 / pad 1 / stride 1 conv also keeps two copies of itself shifted by one
// float (copies == 3), so that that conv reads tap kx from the copy shifted by kx - 1 and every
// vector load is aligned; its producers write the copies in their epilogue.
// A stride-1 conv whose padding fits its input buffer's border reads the buffer directly (no
// copy); other convs (stride 2, larger padding) first gather their phase planes into a scratch
// buffer. Every op writes only the interior of its output (an add over buffers of the same
// geometry may write the border too: 0 + 0 stays 0), so the border stays zero forever.
//
// Each worker thread owns an arena (all buffers for one image, plus scratch), allocated and
// zeroed on first use and reused by every later call. Two ways to use T threads:
//   - per image: each worker runs the whole plan on its own images (no barrier per layer);
//   - per op: a team of T threads runs each image together, every member walking the op list
//     and doing its own band of output rows (or of output channels for small images) of each
//     conv, one spin barrier per op; a member first prefetches the halo rows its band reads
//     from the others (grouped convs: interleaved (channel block, pixel range) tasks).
// A residual add (+ ReLU) that follows a conv is fused into the conv's epilogue, and stride-1 /
// stride-2 convs with the CIFAR shapes (32/16/8-wide outputs) use fixed-shape AVX2 / AVX-512
// kernels (csrc/plan_kernels.cpp) when the AVX2 kernel set is active.
//
// Non-finite values: an image whose input holds NaN/Inf runs with the dense form of every
// weight (zeros included), so NaN * 0 = NaN exactly as in torch's dense conv; an image whose
// output comes out non-finite (overflow inside the network) is re-run the same way.
#pragma once
#include <array>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "common.h"
#include "jit_conv.h"
#include "packed_weight.h"
#include "plan_lanes.h"

namespace prunecal {

struct BufSpec {
  int C = 0, H = 0, W = 0, P = 0;
  int pitch = 0;   // floats per row: W + 2P (plain layout) or a multiple of `align`
  int lead = 0;    // column of x = 0 inside a row: P (plain) or a multiple of `align`
  int align = 0;   // 0: plain layout; 16: rows and their interior start on 16 floats
  int copies = 1;  // 3: two more copies, shifted by -1 / +1 float, at -/+ copy_floats()
  // Plain: (H + 2P) x (W + 2P) planes. Aligned: rows of `pitch` floats whose zero gap
  // (pitch - W >= 2P floats) is the right padding of one row and the left padding of the next.
  static BufSpec make(int C, int H, int W, int P, bool aligned);
  int64_t plane() const { return int64_t(H + 2 * P) * pitch; }
  int64_t floats() const { return int64_t(C) * plane(); }  // one copy, without the slack
  int64_t copy_floats() const { return (floats() + kSlack + 15) / 16 * 16; }
  int64_t features() const { return int64_t(C) * H * W; }
  int64_t pos(int y, int x) const { return int64_t(y + P) * pitch + lead + x; }  // in a plane
  bool same_layout(const BufSpec& o) const { return P == o.P && pitch == o.pitch && lead == o.lead && H == o.H; }
};

enum class OpKind { Conv, Add, Shortcut, AvgPool, Linear, Relu, MaxPool, Clamp };

struct PlanOp {
  OpKind kind;
  int in0 = -1, in1 = -1, out = -1;
  bool relu = false;
  std::string name;
  // conv / linear: the weight (kind, shape, values: see PackedWeight)
  std::shared_ptr<PackedWeight> pw;
  std::vector<float> bias;  // empty: no bias
  int stride = 1, pad = 0, dil = 1, groups = 1;
  std::shared_ptr<Geometry> geom;
  std::vector<Slot> slots;  // in_q from geom, out_q in the output buffer's padded plane
  bool direct = false;      // reads the input buffer as it is (stride 1, pad == P)
  int res = -1;             // fused residual: out = relu?(conv + bias + buffer res)
  std::vector<int32_t> res_q;  // per slot: position of lane 0 in the residual buffer's plane
  bool use_bsr = false;     // pw is BSR (the kernels read its blocks)
  int fast = 0;             // plan_fast_shape() id for the AVX2 fixed-shape CSR kernel, 0: none
  std::shared_ptr<JitConv> jit;  // generated kernels (CSR, groups 1; csrc/jit_conv.h), or null
  // shortcut
  int sc_stride = 1, sc_left = 0;
  // maxpool (kernel k, stride, pad in stride/pad) and clamp bounds
  int pool_k = 1;
  float lo = 0.f, hi = 0.f;
};

// Element-wise and data-movement ops (csrc/plan_ops.cpp); one image each.
void op_add(const float* a, const BufSpec& sa, const float* b, const BufSpec& sb, float* y,
            const BufSpec& sy, bool relu);
void op_relu(const float* a, const BufSpec& sa, float* y, const BufSpec& sy);
// (output channels [c0, c1))
void op_shortcut(const float* x, const BufSpec& sx, float* y, const BufSpec& sy, int stride, int left, int c0, int c1);
void op_avgpool(const float* x, const BufSpec& sx, float* y, const BufSpec& sy);
// Max over k x k windows (stride, implicit -inf padding pad); NaN in a window gives NaN.
void op_maxpool(const float* x, const BufSpec& sx, float* y, const BufSpec& sy, int k, int stride, int pad);
// y = min(max(x, lo), hi) on the interior; NaN stays NaN.
void op_clamp(const float* x, const BufSpec& sx, float* y, const BufSpec& sy, float lo, float hi);
// out[r, slot] = relu?(out[r, slot] + res[r, res_q[slot]]) for rows [r0, r1), slots [s0, s1)
// (planes of out_plane / res_plane floats).
// The part of a conv epilogue the generic kernels leave out: fused residual (t.res) and the
// shifted copies of the output (t.copy_floats), for rows [r0, r1) x slots [s0, s1).
void op_epilogue(const ConvTask& t, int r0, int r1, int s0, int s1);
void op_residual(float* out, int64_t out_plane, const float* res, int64_t res_plane, const Slot* slots,
                 const int32_t* res_q, int r0, int r1, int s0, int s1, bool relu);
// Whether k is the kernel set whose fixed-shape tiles plan_csr_fast runs: "avx2" on x86-64
// (csrc/plan_kernels.cpp), "neon" on AArch64 (csrc/plan_kernels_neon.cpp), none elsewhere.
bool plan_fast_kernels(const KernelSet& k);
// Fixed-shape AVX2 CSR kernels (csrc/plan_kernels.cpp): a shape id (> 0) for stride-1 convs
// with output width Wo and input plane width Wq that have one, else 0; plan_csr_fast runs
// rows [row0, row1) x slots [s0, s1) (s0 at the start of an output row), the slots it does
// not tile with `rest`.
int plan_fast_shape(int Wo, int Wq, int stride, int dil);
void plan_csr_fast(int shape, const ConvTask& t, int row0, int row1, int s0, int s1, CsrFn rest);
// True when plan_csr_fast uses its AVX-512F tiles (isa_config().isa is avx512).
bool plan_avx512_active();
// Rewrite the shifted copies of channels [c0, c1) of a buffer with copies == 3 (copy 0 at
// x - copy_floats holds position i at i + 1, copy 2 at x + copy_floats holds it at i - 1); no-op
// otherwise. Disjoint channel ranges write disjoint positions.
void op_replicate(float* x, const BufSpec& sx, int c0, int c1);
// Prefetch (into this core's caches) input rows [y0, y1) of every channel and copy of x: the
// rows a thread's band of a conv reads but another thread wrote.
void op_prefetch_rows(const float* x, const BufSpec& sx, int y0, int y1);
// Copy a dense (C, H, W) image into the interior of y / the interior of x into (C, H, W).
void op_load(const float* img, float* y, const BufSpec& sy);
void op_store(const float* x, const BufSpec& sx, float* img);

struct PlanTeam;

// A layer's weight as handed to the plan: kind "csr" or "bsr"; values, indptr, indices as in
// PackedWeight; shape (C_out, C_in / groups, kh, kw); block_rows for BSR; bias per output
// channel (empty: none).
struct WeightArgs {
  std::string kind = "csr";
  std::vector<float> values;
  std::vector<int32_t> indptr, indices;
  std::array<int, 4> shape{};
  int block_rows = 1;
  std::vector<float> bias;
};
// A conv's geometry and epilogue: stride, padding, dilation, groups; ReLU; a fused residual
// buffer added before the ReLU (-1: none).
struct ConvArgs {
  int stride = 1, pad = 0, dil = 1, groups = 1;
  bool relu = false;
  int residual = -1;
};

// The plan's lanes section (csrc/plan_lanes.h): ops [t0, t1), every one of them a conv (groups
// 1, no fused residual, larger than 1x1, whose image-by-image kernels would fill under 3/4 of
// their vector lanes; any stride and padding), max-pool, ReLU, clamp or add whose output map has
// at most `max_pixels` pixels; max-pools from a larger map at the start of such a run stay out of
// it where the rest qualifies. It reads one buffer written before it (entry) and leaves one
// that later ops read (exit); the ops after it read nothing else from before it. A block of
// images runs the ops before t0 image by image, its entry buffers go into the lanes of one
// buffer, [t0, t1) runs once for the block, and the exit buffer's lanes come back out for the
// ops after t1 (image by image).
struct LaneConv {
  std::vector<int32_t> off, in_base, out_pos;
  std::vector<int32_t> bptr;  // per row, nblk + 1 bounds of its nonzeros in each input-channel band
  int nblk = 1;
};
struct LaneSection {
  int max_pixels = 0, band_kb = 0;
  size_t t0 = 0, t1 = 0;  // empty (t0 == t1): no section
  int entry = -1, exit = -1;
  std::vector<LaneConv> convs;  // per op of [t0, t1) (empty for ops other than convs)
  std::vector<int> pad;         // per buffer: the border of its lanes copy (>= every pad a conv reads it with)
  LaneSpec spec(const BufSpec& b, int id) const { return LaneSpec{b.C, b.H, b.W, pad[size_t(id)]}; }
  bool empty() const { return t0 >= t1; }
};

class Plan {
 public:
  // jit: use generated conv kernels where JitConv can make them (CSR, groups 1; the plain
  // layout then, they need no aligned loads). Buffers use the aligned layout when the AVX-512
  // tiles are active and generated kernels are not, unless PRUNECAL_PLAN_PLAIN_LAYOUT is set
  // (and not "0").
  explicit Plan(bool jit = true);

  int add_buffer(int C, int H, int W, int P);
  void set_io(int input, int output);
  // out = relu?(conv(in) + bias [+ buffer c.residual]); the weight is validated by PackedWeight.
  void add_conv(const std::string& name, WeightArgs w, const ConvArgs& c, int in, int out);
  // out = relu?(in W^T + bias); w.shape = (out_features, in_features, 1, 1), CSR only.
  void add_linear(const std::string& name, WeightArgs w, bool relu, int in, int out);
  void add_add(const std::string& name, int a, int b, int out, bool relu);
  void add_relu(const std::string& name, int in, int out);
  void add_shortcut(const std::string& name, int in, int out, int stride, int left);
  void add_avgpool(const std::string& name, int in, int out);
  void add_maxpool(const std::string& name, int in, int out, int k, int stride, int pad);
  void add_clamp(const std::string& name, int in, int out, float lo, float hi);

  const BufSpec& buffer(int i) const { return bufs_.at(size_t(i)); }
  int input() const { return input_; }
  int output() const { return output_; }
  size_t n_buffers() const { return bufs_.size(); }
  const std::vector<PlanOp>& ops() const { return ops_; }
  std::vector<std::string> describe() const;
  // Bytes of one worker's arena (activation buffers + scratch).
  int64_t arena_bytes() const;
  // The lanes section for ops whose output has at most max_pixels pixels (0: none; see
  // LaneSection). run() uses PRUNECAL_PLAN_LANES (read per call; default kDefaultLanePixels).
  LaneSection lane_section(int max_pixels, int band_kb = kLaneBandKB) const;
  // Bytes of one worker's lanes buffers for the section of PRUNECAL_PLAN_LANES (0 without one),
  // allocated on the first block, beside arena_bytes().
  int64_t lane_bytes() const;
  static constexpr int kDefaultLanePixels = 16;
  // Input planes per band of a lanes conv: about this many bytes (PRUNECAL_PLAN_LANE_BAND_KB).
  static constexpr int kLaneBandKB = 128;
  // Blocks of fewer images than this run image by image.
  static constexpr int kMinLaneImages = 4;

  // y (N, output features) = network(x (N, C, H, W)). mode: 0 auto, 1 per image, 2 per op.
  void run(const float* x, int64_t N, float* y, int threads, int mode, const KernelSet& k);
  // CPU seconds (of the running thread) spent in each op (index = op; the last two entries: input load, output store),
  // summed over `reps` runs of every image of x, one thread, finite path.
  std::vector<double> profile(const float* x, int64_t N, int reps, const KernelSet& k);

 private:
  struct Arena {
    std::vector<float> mem;
    std::vector<float*> buf;
    float* scratch = nullptr;
    // lanes buffers of the section lanes_ (nullptr for buffers outside it), zeroed on creation
    std::vector<float> lane_mem;
    std::vector<float*> lane_buf;
    std::shared_ptr<const LaneSection> lane_for;
  };
  void check_buf(int i, const char* what) const;
  Arena& arena(int worker);
  // team: the threads running this image together (per-op mode), each calling run_image and
  // doing its own share of every conv, one barrier per op; nullptr: the caller alone (convs may
  // still use `threads` pool workers).
  void run_image(const float* x, float* y, Arena& a, int threads, bool dense, const KernelSet& k,
                 double* times = nullptr, const PlanTeam* team = nullptr);
  // ops [i0, i1) of one image; x: load it first (else the buffers hold its state), y: store the output.
  void run_ops(const float* x, float* y, size_t i0, size_t i1, Arena& a, int threads, bool dense,
               const KernelSet& k, double* times = nullptr, const PlanTeam* team = nullptr);
  // Images [n0, n0 + m) on one thread: as one lanes block where the section and the images allow
  // (m >= kMinLaneImages, inputs finite), image by image otherwise; outputs that come out
  // non-finite are re-run with the dense weights.
  void run_images(const float* x, int64_t n0, int64_t m, float* y, Arena& a, const KernelSet& k,
                  const LaneSection* lanes);
  void run_lane_block(const float* x, int64_t n0, int m, float* y, Arena& a, const KernelSet& k,
                      const LaneSection& s);
  std::shared_ptr<const LaneSection> lanes_for_run();
  // PRUNECAL_PLAN_LANES (default kDefaultLanePixels); std::invalid_argument when malformed.
  static int lane_pixels_setting();
  // The section's ops, entry / exit buffers and lanes borders, without the convs' kernel data.
  LaneSection lane_range(int max_pixels) const;
  // Offsets (floats) of the section's lanes buffers in one worker's block (-1: not in it); the total.
  int64_t lane_offsets(const LaneSection& s, std::vector<int64_t>& at) const;
  void run_conv(const PlanOp& op, Arena& a, int threads, bool dense, const KernelSet& k, const PlanTeam* team);
  // One op reading `in` and writing `out` (both checked; `what` names the op in errors).
  PlanOp new_op(OpKind kind, const std::string& what, const std::string& name, int in, int out) const;

  std::vector<BufSpec> bufs_;
  std::vector<PlanOp> ops_;
  int input_ = -1, output_ = -1;
  int64_t scratch_floats_ = 0;
  bool aligned_ = true;
  bool jit_ = true;
  std::mutex run_mutex_;
  std::vector<std::unique_ptr<Arena>> arenas_;
  std::shared_ptr<const LaneSection> lanes_;  // the section of the last run (rebuilt when its key changes)
  size_t lanes_ops_ = 0;
  // Auto mode with fewer images than threads: the team (per op) or one thread, whichever the
  // calls so far measured faster per image (both give the same bits; see Plan::run).
  struct SmallBatchChoice {
    double team_s = 0, one_s = 0;  // wall seconds per image: decaying minimum of the calls
    int64_t calls = 0;
    int threads = 0;  // the thread count measured (another count starts afresh)
  } small_;
};

}  // namespace prunecal
