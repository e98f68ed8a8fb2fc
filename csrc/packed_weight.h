// PackedWeight: a validated, immutable copy of a CSR or BSR weight plus per-input-geometry
// caches (nonzero -> input offsets, output slots), built once per geometry and shared by calls.
#pragma once
#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include "common.h"

namespace prunecal {

class JitConv;

struct Geometry {
  int H = 0, W = 0, stride = 1, pad = 0, dil = 1;
  int Hq = 0, Wq = 0, Ho = 0, Wo = 0;
  int64_t chan_floats = 0;  // stride*stride*Hq*Wq: one input channel's phase planes
  std::vector<int32_t> tap;  // offset of each kernel tap (ky * kw + kx) inside one channel
  std::vector<Slot> slots;
  std::vector<int32_t> csr_off;  // per CSR nonzero
  std::vector<int32_t> bsr_off;  // per BSR block (BSR weights only)
  // Dense form (zeros included), built on first use: images holding NaN/Inf must see
  // NaN*0 = NaN exactly as torch's dense convolution does.
  std::once_flag dense_once;
  std::vector<int32_t> dense_indptr, dense_off;
  std::vector<float> dense_val;
  // Generated kernels for this weight and geometry (CSR, csrc/jit_conv.h), built on first use;
  // null where none can be made.
  std::once_flag jit_once;
  std::shared_ptr<JitConv> jit;
};

class PackedWeight {
 public:
  // kind "csr": values (nnz,), indptr (rows+1,), indices (nnz,); "bsr": values (nblocks, r),
  // indptr (ceil(rows/r)+1,), indices (nblocks,). shape = (C_out, C_in/groups, kh, kw).
  PackedWeight(const std::string& kind, std::vector<float> values, std::vector<int32_t> indptr,
               std::vector<int32_t> indices, std::array<int, 4> shape, int block_rows);

  const std::string& kind() const { return kind_; }
  int rows() const { return shape_[0]; }
  int cin_per_group() const { return shape_[1]; }
  int kh() const { return shape_[2]; }
  int kw() const { return shape_[3]; }
  int64_t cols() const { return int64_t(shape_[1]) * shape_[2] * shape_[3]; }
  int block_rows() const { return block_rows_; }
  int64_t nnz() const { return int64_t(c_val_.size()); }
  // The stored form the kernels read: CSR values / row pointers, or BSR blocks (block_rows values
  // each) / block-row pointers.
  const float* stored_values() const { return kind_ == "bsr" ? b_val_.data() : c_val_.data(); }
  const int32_t* stored_indptr() const { return kind_ == "bsr" ? b_indptr_.data() : c_indptr_.data(); }
  // The CSR view (a BSR weight's blocks without their zeros): values, row pointers, columns
  // (ci * kh * kw + ky * kw + kx), whatever the stored kind.
  const std::vector<float>& csr_values() const { return c_val_; }
  const std::vector<int32_t>& csr_indptr() const { return c_indptr_; }
  const std::vector<int32_t>& csr_cols() const { return c_cols_; }

  // Geometry for an input of H x W with the given conv parameters (cached).
  std::shared_ptr<Geometry> geometry(int H, int W, int stride, int pad, int dil);
  // A caller-made geometry (H, W, stride, pad, dil, Ho, Wo, chan_floats, tap and slots set; a
  // plan reading its buffers in place): fills the per-nonzero offsets. Not cached.
  std::shared_ptr<Geometry> geometry_from(std::shared_ptr<Geometry> g) const;
  void ensure_dense(Geometry& g) const;
  // The generated kernels for g (CSR rows, output planes of g.Ho * g.Wo), built on first use;
  // nullptr where there are none (see JitConv::build; slots must be full 8-lane runs).
  const JitConv* jit(Geometry& g) const;
  // Generated kernels reading g's offsets over `slots` (out_q: positions in output planes of
  // out_plane floats; res_q: per slot position in residual planes of res_plane floats, or
  // nullptr); nullptr where none can be made (BSR weight, CPU, slots, sizes).
  std::shared_ptr<JitConv> make_jit(const Geometry& g, const std::vector<Slot>& slots, int64_t out_plane,
                                    const int32_t* res_q, int64_t res_plane) const;

  // y = conv2d(x); x (N, C, H, W), y (N, C_out, Ho, Wo), both C-contiguous float32.
  void conv2d(const float* x, int N, int C, int H, int W, float* y, const float* bias, int stride,
              int pad, int dil, int groups, bool relu, int threads, const KernelSet& k);
  // y = x W^T (+ bias); x (N, in), y (N, out).
  void linear(const float* x, int64_t N, float* y, const float* bias, bool relu, int threads,
              const KernelSet& k);

 private:
  std::string kind_;
  std::array<int, 4> shape_;
  int block_rows_ = 1;
  // CSR view (for a BSR weight: its blocks without the zeros), always present
  std::vector<float> c_val_;
  std::vector<int32_t> c_indptr_, c_cols_;
  // BSR blocks (BSR only)
  std::vector<float> b_val_;
  std::vector<int32_t> b_indptr_, b_cols_;
  std::mutex mutex_;
  std::map<std::tuple<int, int, int, int, int>, std::shared_ptr<Geometry>> geoms_;
};

}  // namespace prunecal
