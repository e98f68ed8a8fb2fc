// Plan executor: see plan.h for the layout, threading and non-finite rules.
#include "plan.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <ctime>
#include <sstream>
#include <thread>
#include <stdexcept>

#include "conv_exec.h"
#include "phase_planes.h"
#include "thread_pool.h"

namespace prunecal {
namespace {

std::string spec_str(int id, const BufSpec& s) {
  std::ostringstream o;
  o << "b" << id << "(" << s.C << "x" << s.H << "x" << s.W << (s.P ? ",P" + std::to_string(s.P) : "")
    << (s.align ? ",A" + std::to_string(s.align) : "") << (s.copies > 1 ? "x" + std::to_string(s.copies) : "") << ")";
  return o.str();
}

// CPU time of the calling thread (robust on a shared machine); wall time where unavailable.
double thread_seconds() {
#if defined(__linux__)
  timespec ts;
  if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) == 0) return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
#endif
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

constexpr int64_t kAlignFloats = 16;  // 64 bytes
int64_t round_up(int64_t n) { return (n + kAlignFloats - 1) / kAlignFloats * kAlignFloats; }
// per-op split by output rows only when each thread gets this many slots (8x8 images: by
// channels; bands of 4 rows measured slower, their tiles are too small)
constexpr int kMinBandSlots = 8;

// Steps of a team of threads (per-op mode): every member walks the same numbered steps (one
// per op of each image); a step has one task slot per member. A member claims its own slot
// first and, when a slot's owner has not claimed it after a short spin (the owner is
// descheduled: an oversubscribed machine), claims and runs it too, so the team never waits for
// a thread that does not run; a step ends when every slot is done. Each slot (claim + done
// counters) sits on its own cache line: a step costs each member about one read of the
// others' lines, no shared read-modify-write in the common case.
class TeamSteps {
 public:
  explicit TeamSteps(int n) : slots_(size_t(n)) {}
  int size() const { return int(slots_.size()); }

  // Runs fn(slot) for the slots of step `seq` this member claims; returns when all are done.
  template <class F>
  void step(int tid, int64_t seq, bool& stealing, F&& fn) {
    const int n = size();
    slots_[size_t(tid)].present.store(seq, std::memory_order_release);
    if (claim(tid, seq)) run(tid, seq, fn);
    for (int k = 1; k < n; ++k) {
      Slot& o = slots_[size_t((tid + k) % n)];
      for (int spin = 0; o.claimed.load(std::memory_order_acquire) < seq; ++spin) {
        if (o.present.load(std::memory_order_acquire) >= seq && spin <= kPresentSpins) {
          stealing = false;  // its owner is here and about to claim it (unless descheduled right now)
          wait(spin);
          continue;
        }
        if (stealing || spin > kClaimSpins) {  // its owner has not come: take the slot
          if (claim(int(&o - slots_.data()), seq)) {
            run(int(&o - slots_.data()), seq, fn);
            stealing = true;
          }
          break;
        }
        pause();
      }
    }
    for (const Slot& o : slots_)
      for (int spin = 0; o.done.load(std::memory_order_acquire) < seq; ++spin) wait(spin);
  }
  // The first exception a task threw (tasks of later steps are skipped once one has).
  std::exception_ptr error() const { return error_; }

 private:
  static constexpr int kClaimSpins = 2000;  // pauses (~20-50 us) before taking an absent owner's slot
  static constexpr int kPresentSpins = 8000;  // waits (pauses, then yields) for a present owner's claim
  static void pause() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
  }
  static void wait(int spin) {  // spin briefly, then let a descheduled teammate have the core
    if (spin < 256) pause();
    else std::this_thread::yield();
  }
  bool claim(int t, int64_t seq) {
    int64_t expected = seq - 1;
    return slots_[size_t(t)].claimed.compare_exchange_strong(expected, seq, std::memory_order_acq_rel);
  }
  template <class F>
  void run(int t, int64_t seq, F& fn) {
    if (!failed_.load(std::memory_order_relaxed)) {
      try {
        fn(t);
      } catch (...) {
        std::lock_guard<std::mutex> lk(error_mutex_);
        if (!error_) error_ = std::current_exception();
        failed_.store(true);
      }
    }
    slots_[size_t(t)].done.store(seq, std::memory_order_release);
  }
  struct alignas(64) Slot {
    std::atomic<int64_t> present{-1}, claimed{-1}, done{-1};
  };
  std::vector<Slot> slots_;
  std::atomic<bool> failed_{false};
  std::mutex error_mutex_;
  std::exception_ptr error_;
};

}  // namespace

struct PlanTeam {
  int tid = 0, n = 1;
  TeamSteps* steps = nullptr;
  mutable int64_t seq = 0;        // this member's next step
  mutable bool stealing = false;  // the last slot we waited for had no owner: take slots at once
  // fn(slot) for each slot of the next step this member runs (usually its own, tid)
  template <class F>
  void step(F&& fn) const { steps->step(tid, seq++, stealing, fn); }
};

BufSpec BufSpec::make(int C, int H, int W, int P, bool aligned) {
  BufSpec s;
  s.C = C, s.H = H, s.W = W, s.P = P;
  // 16-float rows only where whole zmm vectors tile a row; narrower images (8x8: 64 channels of
  // 10 x 10 floats fit L1, three copies of 10 x 16 do not) measured faster in the plain layout
  s.align = aligned && W % 16 == 0 ? 16 : 0;
  if (s.align) {  // gap between rows: >= 2P zeros, a multiple of align
    const int gap = (2 * P + s.align - 1) / s.align * s.align;
    s.lead = (P + s.align - 1) / s.align * s.align;
    s.pitch = W + gap;
  } else {
    s.lead = P;
    s.pitch = W + 2 * P;
  }
  return s;
}

Plan::Plan(bool jit) : jit_(jit && JitConv::available()) {
  // the aligned layout pays for its shifted copies only with the AVX-512 tiles (measured with the
  // AVX2 tiles alone: ResNet-56 at 90 %, 1 thread, 8 % slower than the plain layout)
  const char* e = std::getenv("PRUNECAL_PLAN_PLAIN_LAYOUT");
  aligned_ = !(e && e[0] && e[0] != '0') && plan_avx512_active() && !jit_;
}

void Plan::check_buf(int i, const char* what) const {
  if (i < 0 || size_t(i) >= bufs_.size())
    throw std::invalid_argument(std::string(what) + ": no buffer " + std::to_string(i));
}

PlanOp Plan::new_op(OpKind kind, const std::string& what, const std::string& name, int in, int out) const {
  check_buf(in, (what + " input").c_str());
  check_buf(out, (what + " output").c_str());
  PlanOp op;
  op.kind = kind;
  op.name = name;
  op.in0 = in, op.out = out;
  return op;
}

int Plan::add_buffer(int C, int H, int W, int P) {
  if (C <= 0 || H <= 0 || W <= 0 || P < 0 || P > 16)
    throw std::invalid_argument("buffer: need C, H, W > 0 and 0 <= P <= 16");
  BufSpec s = BufSpec::make(C, H, W, P, aligned_);
  if (s.floats() + kSlack >= (int64_t(1) << 31)) throw std::invalid_argument("buffer: too large");
  bufs_.push_back(s);
  arenas_.clear();
  return int(bufs_.size()) - 1;
}

void Plan::set_io(int input, int output) {
  check_buf(input, "input");
  check_buf(output, "output");
  input_ = input;
  output_ = output;
}

void Plan::add_conv(const std::string& name, WeightArgs w, const ConvArgs& c, int in, int out) {
  PlanOp op = new_op(OpKind::Conv, "conv", name, in, out);
  if (in == out) throw std::invalid_argument("conv: input and output buffers must differ");
  if (c.stride < 1 || c.pad < 0 || c.dil < 1 || c.groups < 1) throw std::invalid_argument("conv: bad stride/pad/dil/groups");
  op.relu = c.relu;
  op.pw = std::make_shared<PackedWeight>(w.kind, std::move(w.values), std::move(w.indptr), std::move(w.indices), w.shape,
                                         w.block_rows);
  const BufSpec &si = bufs_[size_t(in)], &so = bufs_[size_t(out)];
  const int Co = op.pw->rows();
  if (Co % c.groups) throw std::invalid_argument("conv " + name + ": groups must divide C_out");
  if (si.C != op.pw->cin_per_group() * c.groups)
    throw std::invalid_argument("conv " + name + ": input buffer has " + std::to_string(si.C) + " channels, weight needs " +
                                std::to_string(op.pw->cin_per_group() * c.groups));
  if (!w.bias.empty() && int(w.bias.size()) != Co) throw std::invalid_argument("conv " + name + ": bias length != C_out");
  op.bias = std::move(w.bias);
  op.stride = c.stride, op.pad = c.pad, op.dil = c.dil, op.groups = c.groups;
  // direct: read the input buffer in place (its zero border / row gap is the conv's padding)
  const int kh = op.pw->kh(), kw = op.pw->kw();
  op.direct = c.stride == 1 && c.pad <= si.P && c.pad <= si.lead && 2 * c.pad <= si.pitch - si.W &&
              si.H + 2 * c.pad >= c.dil * (kh - 1) + 1 && si.W + 2 * c.pad >= c.dil * (kw - 1) + 1;
  if (op.direct) {
    // 3x3 / pad 1 on an aligned buffer: read tap kx from the copy shifted by kx - 1, so that
    // every vector load of the kernels is aligned
    // (offsets reach about two copies: int32 must hold them)
    const bool shifted = si.align == 16 && kw == 3 && c.pad == 1 && c.dil == 1 &&
                         3 * si.copy_floats() + si.pitch < (int64_t(1) << 31);
    if (shifted && bufs_[size_t(in)].copies != 3) {
      bufs_[size_t(in)].copies = 3;
      arenas_.clear();
    }
    auto g = std::make_shared<Geometry>();
    g->H = si.H, g->W = si.W, g->stride = 1, g->pad = c.pad, g->dil = c.dil;
    g->Ho = si.H + 2 * c.pad - c.dil * (kh - 1), g->Wo = si.W + 2 * c.pad - c.dil * (kw - 1);
    g->Hq = si.H + 2 * si.P, g->Wq = si.pitch;
    g->chan_floats = si.plane();
    g->tap.resize(size_t(kh) * kw);
    for (int ky = 0; ky < kh; ++ky)
      for (int kx = 0; kx < kw; ++kx)
        g->tap[size_t(ky) * kw + kx] = int32_t(
            int64_t(ky * c.dil - c.pad) * si.pitch +
            (shifted ? int64_t(kx - 1) * si.copy_floats() : int64_t(kx * c.dil - c.pad)));
    for (int oy = 0; oy < g->Ho; ++oy)
      for (int ox = 0; ox < g->Wo; ox += kLanes)
        g->slots.push_back({int32_t(si.pos(oy, ox)), 0, int32_t(std::min(kLanes, g->Wo - ox))});
    op.geom = op.pw->geometry_from(std::move(g));
  } else {
    op.geom = op.pw->geometry(si.H, si.W, c.stride, c.pad, c.dil);
  }
  const Geometry& g = *op.geom;
  if (so.C != Co || so.H != g.Ho || so.W != g.Wo)
    throw std::invalid_argument("conv " + name + ": output buffer " + spec_str(out, so) + " does not match (" +
                                std::to_string(Co) + "x" + std::to_string(g.Ho) + "x" + std::to_string(g.Wo) + ")");
  op.use_bsr = w.kind == "bsr";
  if (op.use_bsr && c.groups > 1 && (Co / c.groups) % op.pw->block_rows())
    throw std::invalid_argument("conv " + name + ": BSR blocks must not straddle groups; use CSR");
  const int in_pitch = op.direct ? si.pitch : g.Wq;
  if (!op.use_bsr) op.fast = plan_fast_shape(g.Wo, in_pitch, c.stride, c.dil);
  if (!op.direct) scratch_floats_ = std::max(scratch_floats_, si.C * g.chan_floats + kSlack);
  for (int oy = 0; oy < g.Ho; ++oy)
    for (int ox = 0; ox < g.Wo; ox += kLanes)
      op.slots.push_back({int32_t(op.direct ? si.pos(oy, ox) : int64_t(oy) * g.Wq + ox), int32_t(so.pos(oy, ox)),
                          int32_t(std::min(kLanes, g.Wo - ox))});
  if (c.residual >= 0) {
    check_buf(c.residual, "conv residual");
    const BufSpec& sr = bufs_[size_t(c.residual)];
    if (c.residual == out) throw std::invalid_argument("conv " + name + ": residual must not be the output buffer");
    if (sr.C != so.C || sr.H != so.H || sr.W != so.W)
      throw std::invalid_argument("conv " + name + ": residual buffer shape differs from the output");
    op.res = c.residual;
    for (int oy = 0; oy < g.Ho; ++oy)
      for (int ox = 0; ox < g.Wo; ox += kLanes) op.res_q.push_back(int32_t(sr.pos(oy, ox)));
  }
  if (jit_ && !op.use_bsr && c.groups == 1)  // (with jit_ the layout is plain: no shifted copies to write)
    op.jit = op.pw->make_jit(g, op.slots, so.plane(), op.res >= 0 ? op.res_q.data() : nullptr,
                             op.res >= 0 ? bufs_[size_t(op.res)].plane() : 0);
  ops_.push_back(std::move(op));
}

void Plan::add_linear(const std::string& name, WeightArgs w, bool relu, int in, int out) {
  const int out_features = w.shape[0], in_features = w.shape[1];
  std::vector<float>& bias = w.bias;
  PlanOp op = new_op(OpKind::Linear, "linear", name, in, out);
  if (w.kind != "csr") throw std::invalid_argument("linear " + name + ": only CSR weights are supported");
  if (w.shape[2] != 1 || w.shape[3] != 1) throw std::invalid_argument("linear " + name + ": shape must be (out, in, 1, 1)");
  const BufSpec &si = bufs_[size_t(in)], &so = bufs_[size_t(out)];
  if (si.P != 0 || so.P != 0) throw std::invalid_argument("linear " + name + ": buffers must have P = 0");
  if (si.features() != in_features || so.features() != out_features)
    throw std::invalid_argument("linear " + name + ": buffer sizes do not match the weight");
  if (!bias.empty() && int(bias.size()) != out_features)
    throw std::invalid_argument("linear " + name + ": bias length != out_features");
  op.relu = relu;
  op.pw = std::make_shared<PackedWeight>(w.kind, std::move(w.values), std::move(w.indptr), std::move(w.indices),
                                         std::array<int, 4>{out_features, in_features, 1, 1}, 1);  // validates
  op.bias = std::move(bias);
  ops_.push_back(std::move(op));
}

void Plan::add_add(const std::string& name, int a, int b, int out, bool relu) {
  PlanOp op = new_op(OpKind::Add, "add", name, a, out);
  check_buf(b, "add input");
  const BufSpec &sa = bufs_[size_t(a)], &sb = bufs_[size_t(b)], &so = bufs_[size_t(out)];
  for (const BufSpec* s : {&sa, &sb})
    if (s->C != so.C || s->H != so.H || s->W != so.W)
      throw std::invalid_argument("add " + name + ": operand shapes differ");
  op.in1 = b, op.relu = relu;
  ops_.push_back(std::move(op));
}

void Plan::add_relu(const std::string& name, int in, int out) {
  PlanOp op = new_op(OpKind::Relu, "relu", name, in, out);
  const BufSpec &si = bufs_[size_t(in)], &so = bufs_[size_t(out)];
  if (si.C != so.C || si.H != so.H || si.W != so.W) throw std::invalid_argument("relu " + name + ": shapes differ");
  op.relu = true;
  ops_.push_back(std::move(op));
}

void Plan::add_shortcut(const std::string& name, int in, int out, int stride, int left) {
  PlanOp op = new_op(OpKind::Shortcut, "shortcut", name, in, out);
  if (in == out) throw std::invalid_argument("shortcut: input and output buffers must differ");
  const BufSpec &si = bufs_[size_t(in)], &so = bufs_[size_t(out)];
  if (stride < 1 || left < 0) throw std::invalid_argument("shortcut " + name + ": bad stride / left pad");
  if (so.H != (si.H + stride - 1) / stride || so.W != (si.W + stride - 1) / stride || so.C < si.C + left)
    throw std::invalid_argument("shortcut " + name + ": output buffer does not match");
  op.sc_stride = stride, op.sc_left = left;
  ops_.push_back(std::move(op));
}

void Plan::add_avgpool(const std::string& name, int in, int out) {
  PlanOp op = new_op(OpKind::AvgPool, "avgpool", name, in, out);
  const BufSpec &si = bufs_[size_t(in)], &so = bufs_[size_t(out)];
  if (so.C != si.C || so.H != 1 || so.W != 1) throw std::invalid_argument("avgpool " + name + ": output must be (C, 1, 1)");
  ops_.push_back(std::move(op));
}

void Plan::add_maxpool(const std::string& name, int in, int out, int k, int stride, int pad) {
  PlanOp op = new_op(OpKind::MaxPool, "maxpool", name, in, out);
  if (in == out) throw std::invalid_argument("maxpool: input and output buffers must differ");
  const BufSpec &si = bufs_[size_t(in)], &so = bufs_[size_t(out)];
  if (k < 1 || stride < 1 || pad < 0 || 2 * pad > k)
    throw std::invalid_argument("maxpool " + name + ": need k >= 1, stride >= 1, 0 <= pad <= k / 2");
  const int Ho = (si.H + 2 * pad - k) / stride + 1, Wo = (si.W + 2 * pad - k) / stride + 1;
  if (si.H + 2 * pad < k || si.W + 2 * pad < k || so.C != si.C || so.H != Ho || so.W != Wo)
    throw std::invalid_argument("maxpool " + name + ": output buffer does not match");
  op.pool_k = k, op.stride = stride, op.pad = pad;
  ops_.push_back(std::move(op));
}

void Plan::add_clamp(const std::string& name, int in, int out, float lo, float hi) {
  PlanOp op = new_op(OpKind::Clamp, "clamp", name, in, out);
  const BufSpec &si = bufs_[size_t(in)], &so = bufs_[size_t(out)];
  if (si.C != so.C || si.H != so.H || si.W != so.W) throw std::invalid_argument("clamp " + name + ": shapes differ");
  if (!(lo <= hi)) throw std::invalid_argument("clamp " + name + ": need lo <= hi");
  op.lo = lo, op.hi = hi;
  ops_.push_back(std::move(op));
}

std::vector<std::string> Plan::describe() const {
  std::vector<std::string> out;
  const LaneSection lanes = lane_range(lane_pixels_setting());  // (which ops: no kernel data needed)
  for (const auto& op : ops_) {
    std::ostringstream o;
    const size_t i = size_t(&op - ops_.data());
    switch (op.kind) {
      case OpKind::Conv: {
        const int64_t numel = int64_t(op.pw->rows()) * op.pw->cols();
        o << "conv     " << op.name << ": " << spec_str(op.in0, bufs_[op.in0]) << " -> " << spec_str(op.out, bufs_[op.out])
          << " " << op.pw->kind() << (op.use_bsr ? std::to_string(op.pw->block_rows()) : "") << " " << op.pw->kh() << "x"
          << op.pw->kw() << " s" << op.stride << " p" << op.pad << (op.dil != 1 ? " d" + std::to_string(op.dil) : "")
          << (op.groups != 1 ? " g" + std::to_string(op.groups) : "") << " density "
          << (double(op.pw->nnz()) / double(numel)) << (op.bias.empty() ? "" : " +bias") << (op.relu ? " +relu" : "")
          << (op.res >= 0 ? " +residual " + spec_str(op.res, bufs_[op.res]) : "") << (op.direct ? " (direct)" : " (gather)")
          << (op.jit ? " jit " + std::to_string(op.jit->n_groups()) + "x" + std::to_string(op.jit->vec()) : "");
        break;
      }
      case OpKind::Linear:
        o << "linear   " << op.name << ": " << spec_str(op.in0, bufs_[op.in0]) << " -> " << spec_str(op.out, bufs_[op.out])
          << " csr " << op.pw->rows() << "x" << op.pw->cols() << " density "
          << (double(op.pw->nnz()) / double(op.pw->rows() * op.pw->cols())) << (op.bias.empty() ? "" : " +bias")
          << (op.relu ? " +relu" : "");
        break;
      case OpKind::Add:
        o << "add      " << op.name << ": " << spec_str(op.in0, bufs_[op.in0]) << " + " << spec_str(op.in1, bufs_[op.in1])
          << " -> " << spec_str(op.out, bufs_[op.out]) << (op.relu ? " +relu" : "");
        break;
      case OpKind::Relu:
        o << "relu     " << op.name << ": " << spec_str(op.in0, bufs_[op.in0]) << " -> " << spec_str(op.out, bufs_[op.out]);
        break;
      case OpKind::Shortcut:
        o << "shortcut " << op.name << ": " << spec_str(op.in0, bufs_[op.in0]) << " -> " << spec_str(op.out, bufs_[op.out])
          << " stride " << op.sc_stride << " pad channels " << op.sc_left << "+"
          << (bufs_[op.out].C - bufs_[op.in0].C - op.sc_left);
        break;
      case OpKind::MaxPool:
        o << "maxpool  " << op.name << ": " << spec_str(op.in0, bufs_[op.in0]) << " -> " << spec_str(op.out, bufs_[op.out])
          << " k" << op.pool_k << " s" << op.stride << " p" << op.pad;
        break;
      case OpKind::Clamp:
        o << "clamp    " << op.name << ": " << spec_str(op.in0, bufs_[op.in0]) << " -> " << spec_str(op.out, bufs_[op.out])
          << " [" << op.lo << ", " << op.hi << "]";
        break;
      case OpKind::AvgPool:
        o << "avgpool  " << op.name << ": " << spec_str(op.in0, bufs_[op.in0]) << " -> " << spec_str(op.out, bufs_[op.out]);
        break;
    }
    if (i >= lanes.t0 && i < lanes.t1) o << " [lanes x" << kBatchLanes << "]";
    out.push_back(o.str());
  }
  return out;
}

int64_t Plan::arena_bytes() const {
  int64_t total = round_up(scratch_floats_);
  for (const auto& s : bufs_) total += s.copies * s.copy_floats();
  return total * int64_t(sizeof(float));
}

Plan::Arena& Plan::arena(int worker) {
  while (int(arenas_.size()) <= worker) {
    auto a = std::make_unique<Arena>();
    a->mem.assign(size_t(arena_bytes() / sizeof(float) + kAlignFloats), 0.f);
    float* p = a->mem.data();
    p += (kAlignFloats - (reinterpret_cast<uintptr_t>(p) / sizeof(float)) % kAlignFloats) % kAlignFloats;
    for (const auto& s : bufs_) {  // the canonical copy (the middle one of three)
      a->buf.push_back(p + (s.copies == 3 ? s.copy_floats() : 0));
      p += s.copies * s.copy_floats();
    }
    a->scratch = p;
    arenas_.push_back(std::move(a));
  }
  return *arenas_[size_t(worker)];
}

void Plan::run_conv(const PlanOp& op, Arena& a, int threads, bool dense, const KernelSet& k, const PlanTeam* team) {
  Geometry& g = *op.geom;
  const BufSpec& so = bufs_[size_t(op.out)];
  const float* src = a.buf[size_t(op.in0)];
  if (team) threads = team->n;
  if (!op.direct) {
    const BufSpec& si = bufs_[size_t(op.in0)];
    const PlaneSource in{src + si.pos(0, 0), si.plane(), si.pitch, si.C, si.H, si.W};  // (its interior)
    if (team) {  // a range of channels per slot
      team->step([&](int t) { copy_phase_planes(in, g, a.scratch, si.C * t / team->n, si.C * (t + 1) / team->n, true); });
    } else {
      copy_phase_planes(in, g, a.scratch, 0, si.C, true);
    }
    src = a.scratch;
  }
  if (dense && !team) op.pw->ensure_dense(g);  // (a team's caller built them before the team started)
  const PackedWeight& w = *op.pw;
  const int S = int(op.slots.size());
  float* out = a.buf[size_t(op.out)];
  const float* bias = op.bias.empty() ? nullptr : op.bias.data();
  const ConvRows rows = conv_rows(w, g, op.use_bsr, dense, op.groups, plan_fast_kernels(k) ? op.fast : 0);
  const float* res = op.res >= 0 ? a.buf[size_t(op.res)] : nullptr;
  auto compute = [&](int grp, int u0, int u1, int s0, int s1) {
    ConvTask t;
    t.slots = op.slots.data();
    t.out = out;
    t.out_stride = so.plane();
    t.bias = bias;
    t.relu = op.relu && !res;
    t.valid_rows = w.rows();
    t.res = res;
    t.res_q = op.res_q.data();
    t.res_stride = res ? bufs_[size_t(op.res)].plane() : 0;
    t.res_relu = op.relu;
    t.copy_floats = so.copies == 3 ? so.copy_floats() : 0;
    const RowsDone d = conv_units(k, rows, t, src, grp, u0, u1, s0, s1);
    // fused residual, shifted copies, while the rows are in cache (the fixed-shape tiles did it)
    if (!d.epilogue_done) op_epilogue(t, d.r0, d.r1, s0, s1);
  };
  const int U = rows.units();
  const int spr = rows.row_slots;  // slots per output row
  // before a thread's band of slots [s0, s1): the input rows its halo reads, which the other
  // threads wrote, fetched into this core's caches (direct convs; gathered planes are local)
  auto prefetch_halo = [&](int s0, int s1) {
    if (!op.direct) return;
    const BufSpec& si = bufs_[size_t(op.in0)];
    const int oy0 = s0 / spr, oy1 = (s1 + spr - 1) / spr, lo = oy0 - op.pad;
    const int hi = oy1 - 1 + (op.pw->kh() - 1) * op.dil - op.pad + 1;
    op_prefetch_rows(src, si, lo, oy0);
    op_prefetch_rows(src, si, oy1, hi);
  };
  if (op.jit && !dense && k.x86()) {  // generated kernels: (channel group, tile) calls
    const JitConv& j = *op.jit;
    const int spt = j.slots_per_tile(), T = S / spt, ng = j.n_groups();
    auto tiles = [&](int t0, int t1) {
      jit_tiles(j, src, op.slots.data(), out, bias, op.relu, res, op.res_q.data(), 0, ng, t0, t1);
    };
    if (threads <= 1) {
      tiles(0, T);
      return;
    }
    // a band of tiles per thread (task t usually on worker t: it reads mostly what it wrote)
    auto band = [&](int64_t task) {
      const int a = int(T * task / threads), b = int(T * (task + 1) / threads);
      if (a >= b) return;
      prefetch_halo(a * spt, b * spt);
      tiles(a, b);
    };
    if (team) {
      team->step([&](int slot) { band(slot); });
    } else {
      parallel_for(threads, threads, [&](int64_t t, int) { band(t); });
    }
    return;
  }
  if (threads <= 1) {
    for (int grp = 0; grp < op.groups; ++grp) compute(grp, 0, U, 0, S);
    return;
  }
  // tasks: in a team, slot t of one step runs tasks t, t + n, ...; otherwise the pool hands them out
  auto run_tasks = [&](int64_t n_tasks, const std::function<void(int64_t)>& fn) {
    if (team) {
      team->step([&](int slot) {
        for (int64_t t = slot; t < n_tasks; t += team->n) fn(t);
      });
    } else {
      parallel_for(threads, n_tasks, [&](int64_t t, int) { fn(t); });
    }
  };
  if (op.groups == 1) {
    // one task per thread: a band of output rows (all channels), or, for small images, a band of
    // output channels. Task t usually runs on worker t, so each thread reads mostly the band it
    // wrote in the previous layer (less cross-core traffic than interleaved tasks; measured
    // ~4 % faster than 8 interleaved tasks on ResNet-56, batch 1, 2 threads).
    const int per = ((S + threads - 1) / threads + spr - 1) / spr * spr;  // whole output rows
    if (per >= kMinBandSlots) {
      run_tasks(threads, [&](int64_t task) {
        const int a = int(task) * per, b = std::min(S, a + per);
        if (a >= b) return;
        prefetch_halo(a, b);
        compute(0, 0, U, a, b);
      });
    } else {
      // bands of output channels (units) with about equal nonzeros: pruned rows differ a lot
      const int32_t* ip = rows.indptr;  // over units (rows / block rows)
      auto bound = [&](int64_t task) {
        if (task <= 0) return 0;
        if (task >= threads) return U;
        const int64_t want = int64_t(ip[U]) * task / threads;
        return int(std::lower_bound(ip, ip + U + 1, int32_t(want)) - ip);
      };
      run_tasks(threads, [&](int64_t task) {
        const int a = bound(task), b = bound(task + 1);
        if (a < b) compute(0, a, b, 0, S);
      });
    }
    return;
  }
  // split over (group, unit block, slot range): enough tasks for dynamic balance
  const GroupSplit sp = split_groups(rows, S, threads);
  run_tasks(sp.tasks(), [&](int64_t task) {
    int grp, u0, u1, s0, s1;
    sp.task(task, &grp, &u0, &u1, &s0, &s1);
    compute(grp, u0, u1, s0, s1);
  });
}

void Plan::run_image(const float* x, float* y, Arena& a, int threads, bool dense, const KernelSet& k,
                     double* times, const PlanTeam* team) {
  run_ops(x, y, 0, ops_.size(), a, threads, dense, k, times, team);
}

void Plan::run_ops(const float* x, float* y, size_t i0, size_t i1, Arena& a, int threads, bool dense,
                   const KernelSet& k, double* times, const PlanTeam* team) {
  double t0 = times ? thread_seconds() : 0.0;
  auto tick = [&](size_t i) {
    if (!times) return;
    const double t1 = thread_seconds();
    times[i] += t1 - t0;
    t0 = t1;
  };
  // one step for work that is not split (a team: slot 0 runs it)
  auto whole = [&](const std::function<void()>& fn) {
    if (team) team->step([&](int t) { if (t == 0) fn(); });
    else fn();
  };
  if (x) {
    whole([&] {
      op_load(x, a.buf[size_t(input_)], bufs_[size_t(input_)]);
      op_replicate(a.buf[size_t(input_)], bufs_[size_t(input_)], 0, bufs_[size_t(input_)].C);
    });
    tick(ops_.size());
  }
  for (size_t i = i0; i < i1; ++i) {
    const PlanOp& op = ops_[i];
    const BufSpec& so = bufs_[size_t(op.out)];
    float* out = a.buf[size_t(op.out)];
    const float* in0 = op.in0 >= 0 ? a.buf[size_t(op.in0)] : nullptr;
    const BufSpec& si = bufs_[size_t(op.in0 >= 0 ? op.in0 : op.out)];
    switch (op.kind) {
      case OpKind::Conv:
        run_conv(op, a, threads, dense, k, team);
        break;
      case OpKind::Shortcut: {  // a data movement worth sharing: by output channels
        auto part = [&](int c0, int c1) {
          op_shortcut(in0, si, out, so, op.sc_stride, op.sc_left, c0, c1);
          op_replicate(out, so, c0, c1);
        };
        if (team) team->step([&](int t) { part(so.C * t / team->n, so.C * (t + 1) / team->n); });
        else part(0, so.C);
        break;
      }
      case OpKind::Linear:  // (the layer's own NaN/Inf check picks the dense weights)
        whole([&] { op.pw->linear(in0, 1, out, op.bias.empty() ? nullptr : op.bias.data(), op.relu, 1, k); });
        break;
      case OpKind::Add:
        whole([&] {
          op_add(in0, si, a.buf[size_t(op.in1)], bufs_[size_t(op.in1)], out, so, op.relu);
          op_replicate(out, so, 0, so.C);
        });
        break;
      case OpKind::Relu:
        whole([&] {
          op_relu(in0, si, out, so);
          op_replicate(out, so, 0, so.C);
        });
        break;
      case OpKind::AvgPool:
        whole([&] { op_avgpool(in0, si, out, so); });
        break;
      case OpKind::MaxPool:
        whole([&] {
          op_maxpool(in0, si, out, so, op.pool_k, op.stride, op.pad);
          op_replicate(out, so, 0, so.C);
        });
        break;
      case OpKind::Clamp:
        whole([&] {
          op_clamp(in0, si, out, so, op.lo, op.hi);
          op_replicate(out, so, 0, so.C);
        });
        break;
    }
    tick(i);
  }
  if (y) {
    whole([&] { op_store(a.buf[size_t(output_)], bufs_[size_t(output_)], y); });
    tick(ops_.size() + 1);
  }
}

std::vector<double> Plan::profile(const float* x, int64_t N, int reps, const KernelSet& k) {
  if (input_ < 0 || output_ < 0) throw std::invalid_argument("plan: input/output buffers not set");
  std::lock_guard<std::mutex> lk(run_mutex_);
  std::vector<double> times(ops_.size() + 2, 0.0);
  std::vector<float> y(size_t(bufs_[size_t(output_)].features()));
  Arena& a = arena(0);
  const int64_t fin = bufs_[size_t(input_)].features();
  for (int r = 0; r < reps; ++r)
    for (int64_t n = 0; n < N; ++n) run_image(x + n * fin, y.data(), a, 1, false, k, times.data());
  return times;
}

void Plan::run(const float* x, int64_t N, float* y, int threads, int mode, const KernelSet& k) {
  if (input_ < 0 || output_ < 0) throw std::invalid_argument("plan: input/output buffers not set");
  if (N <= 0) return;
  std::lock_guard<std::mutex> lk(run_mutex_);
  const int64_t fin = bufs_[size_t(input_)].features(), fout = bufs_[size_t(output_)].features();
  // auto: whole images per worker when they share out evenly (or there are many), else split ops
  const bool auto_mode = mode == 0;
  if (mode == 0) mode = (threads > 1 && N >= threads && (N % threads == 0 || N >= 4 * int64_t(threads))) ? 1 : 2;
  // the lanes section (plan_lanes.h), where whole images per thread come in blocks of kMinLaneImages or more
  std::shared_ptr<const LaneSection> lanes = N >= kMinLaneImages ? lanes_for_run() : nullptr;
  if (lanes && lanes->empty()) lanes.reset();
  if (mode == 1 && threads > 1 && N > 1) {
    const int workers = int(std::min<int64_t>(threads, N));
    for (int w = 0; w < workers; ++w) arena(w);
    if (lanes && N >= int64_t(workers) * kMinLaneImages) {
      // one range of images per task, about kBatchLanes each, a multiple of `workers` tasks
      int64_t tasks = std::max<int64_t>(workers, (N + kBatchLanes - 1) / kBatchLanes);
      tasks = (tasks + workers - 1) / workers * workers;
      parallel_for(workers, tasks, [&](int64_t t, int w) {
        const int64_t a = N * t / tasks, b = N * (t + 1) / tasks;
        run_images(x, a, b - a, y, *arenas_[size_t(w)], k, lanes.get());
      });
      return;
    }
    parallel_for(workers, N, [&](int64_t n, int w) { run_images(x, n, 1, y, *arenas_[size_t(w)], k, nullptr); });
    return;
  }
  Arena& a = arena(0);
  // auto with a small batch: the team shares each image, one barrier per op; where cores are
  // busy or cross-core round trips are slow (VMs), one thread is faster. Both run the same FMAs
  // in the same order (the team splits output rows / channels, never a sum), so the choice
  // changes only the speed: measure both (alternating on the first calls, then trying the
  // slower one again every 64th call) and run the faster.
  bool timed = false, as_team = true;
  if (auto_mode && threads > 1) {
    SmallBatchChoice& c = small_;
    if (c.threads != threads) c = SmallBatchChoice{0, 0, 0, threads};
    const int64_t k = c.calls++;
    as_team = k < 8 ? k % 2 == 0 : (k % 64 == 0) != (c.team_s <= c.one_s);
    timed = true;
  }
  const auto t_start = std::chrono::steady_clock::now();
  auto record = [&] {
    if (!timed) return;
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count() / double(N);
    double& v = as_team ? small_.team_s : small_.one_s;
    // a decaying minimum: one slow call (a descheduled teammate) does not flip the choice, while
    // a lasting slowdown raises the estimate 5 % a call until the other path wins (an average
    // flipped on single outliers and then kept the slower path for 64+ calls: batch 1, 2
    // threads ran about 10 % below the team alone)
    v = v == 0 ? s : std::min(s, 1.05 * v);
  };
  if (threads <= 1 || !as_team) {
    run_images(x, 0, N, y, a, k, lanes.get());
    record();
    return;
  }
  // per op: a team of `threads` runs each image together, one step per op (see TeamSteps; a pool
  // job per conv costs several cross-core round trips, measured slower on small convs). Images
  // whose output overflows are re-run afterwards with the dense weights.
  TeamSteps steps(threads);
  std::vector<char> nonfinite_in(static_cast<size_t>(N));
  bool any_nonfinite = false;
  for (int64_t n = 0; n < N; ++n) {
    nonfinite_in[size_t(n)] = k.nonfinite(x + n * fin, fin);
    any_nonfinite = any_nonfinite || nonfinite_in[size_t(n)];
  }
  if (any_nonfinite)  // the dense forms, built here so that their errors reach the caller
    for (const PlanOp& op : ops_)
      if (op.kind == OpKind::Conv) op.pw->ensure_dense(*op.geom);
  parallel_for(threads, threads, [&](int64_t task, int) {
    const PlanTeam team{int(task), threads, &steps};
    for (int64_t n = 0; n < N; ++n) run_image(x + n * fin, y + n * fout, a, threads, nonfinite_in[size_t(n)], k, nullptr, &team);
  });
  if (steps.error()) std::rethrow_exception(steps.error());
  for (int64_t n = 0; n < N; ++n)
    if (!nonfinite_in[size_t(n)] && k.nonfinite(y + n * fout, fout)) run_image(x + n * fin, y + n * fout, a, threads, true, k);
  record();
}

}  // namespace prunecal
