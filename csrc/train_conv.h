// Sparse training convolution (prunecal.sparse.train): forward, input gradient and weight
// gradient of a conv with a fixed CSR pattern whose values live outside (a torch parameter,
// read and written in place); every pass costs O(nnz * output pixels).
//
// Layouts (floats, per image; L = 16 lanes of layout even when the kernels use 8):
// - x planes: each input channel as s*s phase planes of Hq x Wq (zero padding, stride phases
//   split), so that stored weight (ci, ky, kx) reads output pixel (oy, ox) at the constant offset
//   off(ci, ky, kx) from the "wide" position q = oy * Wq + ox.
// - wide rows: per output channel Pw = roundup(Ho * Wq, L) positions q; columns ox >= Wo and
//   positions q >= Ho * Wq are junk (forward) or zero (the packed output gradient).
// - dy planes (input gradient): each output channel's gradient zero-inserted by the stride and
//   placed at (kh-1-pad + s*oy, kw-1-pad + s*ox) in planes of (H+kh-1) x (W+kw-1); the input
//   gradient is then the stride-1 correlation of these planes with the transposed, flipped
//   pattern (rows: input channels), on the wide grid of width W + kw - 1.
#pragma once
#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>
#include <vector>

namespace prunecal {

constexpr int kTrainLayoutLanes = 16;

// out[r * out_stride + q .. + L) for rows [r0, r1) and vectors q = v * L, v in [v0, v1):
//   sum_{j in row r} val[j] * in[q + off[j] ..]   (overwrites out)
using TrainGatherFn = void (*)(const float* in, const int32_t* indptr, const int32_t* off, const float* val,
                               int r0, int r1, int v0, int v1, float* out, int64_t out_stride);
// acc[j * 16 .. + L) += sum_{v in [v0, v1)} dy[r * dy_stride + v * L ..] * in[v * L + off[j] ..]
// for every nonzero j of rows [r0, r1) (lanes L..15 of acc unused when L = 8).
using TrainSddFn = void (*)(const float* in, const float* dy, int64_t dy_stride, const int32_t* indptr,
                            const int32_t* off, int r0, int r1, int v0, int v1, float* acc);

// dst[c * dst_stride + r] = src[r * src_stride + c] for r < rows, c < cols (NHWC <-> NCHW images).
using TrainTransposeFn = void (*)(const float* src, int64_t src_stride, float* dst, int64_t dst_stride, int rows,
                                  int cols);

struct TrainKernels {
  const char* name;
  int lanes;
  TrainGatherFn gather;
  TrainSddFn sdd;
  TrainTransposeFn transpose;
};

const TrainKernels& train_kernels_generic();
#if defined(PRUNECAL_HAVE_AVX2_TU)
const TrainKernels& train_kernels_avx2();
const TrainKernels& train_kernels_avx512();
#endif
// "auto" (AVX-512 when the CPU has it and PRUNECAL_NO_AVX512 is unset, else AVX2, else generic),
// "avx512", "avx2" or "generic"; std::invalid_argument for others or unsupported ones.
const TrainKernels& select_train_kernels(const char* isa);

struct TrainGeom {
  int H, W, stride, pad, Ho, Wo;
  int Hq, Wq;             // x phase planes
  int64_t pq, chan;       // Hq * Wq, s * s * Hq * Wq
  int64_t pw;             // wide output row (forward / packed dy), multiple of 16
  int64_t x_floats;       // C * chan + slack
  std::vector<int32_t> off;   // per forward nonzero
  int Hb, Wb;             // dy planes
  int64_t pqb, pwb;       // Hb * Wb, wide dx row roundup(H * Wb, 16)
  int64_t dy_floats;      // C_out * pqb + slack
  std::vector<int32_t> toff;  // per transposed nonzero
};

class TrainConv {
 public:
  // indptr (C_out + 1), indices (nnz) of the CSR weight viewed as (C_out, C_in/groups * kh * kw);
  // shape = (C_out, C_in/groups, kh, kw). Validated (std::invalid_argument).
  TrainConv(std::vector<int32_t> indptr, std::vector<int32_t> indices, std::array<int, 4> shape, int groups);

  int rows() const { return shape_[0]; }
  int cin() const { return shape_[1] * groups_; }
  int64_t nnz() const { return int64_t(indices_.size()); }
  const std::array<int, 4>& shape() const { return shape_; }
  int groups() const { return groups_; }
  // Validated, cached geometry (std::invalid_argument for impossible ones).
  std::shared_ptr<const TrainGeom> geometry(int H, int W, int stride, int pad);

  // y (N, C_out, Ho, Wo) = conv2d(x (N, C_in, H, W), W(val)). Throws std::domain_error when x
  // holds NaN / Inf. nhwc: x and y are stored (N, H, W, C) (torch channels_last) instead.
  void forward(const float* x, int N, int H, int W, const float* val, float* y, int stride, int pad,
               int threads, const TrainKernels& k, bool nhwc = false);
  // dx (N, C_in, H, W) = conv2d's input gradient (nullptr: skipped), dval (nnz) = the weight
  // gradient at the stored nonzeros (nullptr: skipped) for the output gradient dy (N, C_out, Ho, Wo).
  // Throws std::domain_error when dy holds NaN / Inf. nhwc: x, dy and dx are stored NHWC.
  void backward(const float* x, const float* dy, int N, int H, int W, const float* val, float* dx, float* dval,
                int stride, int pad, int threads, const TrainKernels& k, bool nhwc = false);

 private:
  std::array<int, 4> shape_;
  int groups_;
  std::vector<int32_t> indptr_, indices_;
  // transposed pattern: rows = input channels; entry -> forward nonzero, output channel, tap
  std::vector<int32_t> t_indptr_, t_perm_, t_co_, t_tap_;
  std::mutex mutex_;
  std::map<std::tuple<int, int, int, int>, std::shared_ptr<const TrainGeom>> geoms_;
};

}  // namespace prunecal
