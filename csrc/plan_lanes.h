// The plan's batched ("lanes") section: the late layers of a network whose maps are small
// (VGG's 512 x 4x4 and 512 x 2x2 layers) run on a block of up to kBatchLanes images at once.
//
// Why: the per-image kernels vectorise over the output pixels of one image; a 2x2 map fills 2
// of 8 lanes and a 3x3 conv over it is almost all loop overhead. In the lanes layout every
// position of a padded plane holds kBatchLanes floats, lane i belonging to image i of the
// block, so one vector FMA does one weight x one input position for 16 images: every lane is
// used whatever the map size, and each weight is loaded once per block and pixel tile.
//
// Layout (LaneSpec): C planes of (H + 2P) x (W + 2P) positions, kBatchLanes floats each, the
// P-wide border zero forever (ops write only the interior). A conv with pad <= P reads its
// input in place: output pixel (oy, ox), stored nonzero (ci, ky, kx) reads position
// (oy * s - pad + ky * dil, ox * s - pad + kx * dil) of plane ci, i.e. in_base[pixel] + off[nz].
//
// Summation order: per output value, the row's nonzeros in CSR order from 0, then + bias, then
// ReLU (max(0, v): NaN stays NaN), with FMA where the per-image kernels of the same ISA use
// it: the block gives the same bits as running its images one by one (tests/test_plan_lanes.py).
#pragma once
#include <cstdint>
#include <vector>

#include "common.h"

namespace prunecal {

constexpr int kBatchLanes = 16;

struct LaneSpec {
  int C = 0, H = 0, W = 0, P = 0;
  int64_t row() const { return int64_t(W + 2 * P) * kBatchLanes; }
  int64_t plane() const { return int64_t(H + 2 * P) * row(); }
  int64_t floats() const { return int64_t(C) * plane(); }
  // lane 0 of position (y, x) of the interior, inside a plane
  int64_t pos(int y, int x) const { return int64_t(y + P) * row() + int64_t(x + P) * kBatchLanes; }
};

// One conv over a block: rows [r0, r1) of a CSR weight, every output pixel, in passes over
// bands of input channels (a band's planes fit the L2 cache; 16 lanes make a 512 x 4x4 input
// 1.2 MB): pass b runs nonzeros [bptr[r * (nblk + 1) + b], bptr[r * (nblk + 1) + b + 1]) of
// row r, carrying the partial sums in the output (exact: the same FMAs in the same order).
struct LaneConvTask {
  const float* in;          // lanes buffer (channel 0)
  const int32_t* bptr;      // per row, nblk + 1 nonzero bounds
  int nblk;
  const int32_t* off;       // per nonzero: offset (floats) of its input position from in_base
  const float* val;         // per nonzero
  const int32_t* in_base;   // per output pixel: offset of its (ci = 0, ky = 0, kx = 0) position
  const int32_t* out_pos;   // per output pixel: offset inside an output plane
  int n_pix;
  float* out;               // lanes buffer (channel 0)
  int64_t out_plane;        // floats per output channel
  const float* bias;        // per output channel, or nullptr
  bool relu;
};
using LaneConvFn = void (*)(const LaneConvTask&, int r0, int r1);

struct LaneKernels {
  const char* name;
  LaneConvFn conv;
};
const LaneKernels& lane_kernels_generic();
#if defined(PRUNECAL_HAVE_AVX2_TU)
const LaneKernels& lane_kernels_avx2();
const LaneKernels& lane_kernels_avx512();
#endif
// The lanes kernels that give the same bits as the per-image kernel set k (the AVX-512 ones
// with the avx2 set when isa_config() chose avx512).
const LaneKernels& lane_kernels_for(const KernelSet& k);

// Element-wise and data-movement ops in the lanes layout (every lane; shapes checked by the plan).
void lanes_maxpool(const float* x, const LaneSpec& sx, float* y, const LaneSpec& sy, int k, int stride, int pad);
void lanes_relu(const float* x, const LaneSpec& sx, float* y, const LaneSpec& sy);
void lanes_clamp(const float* x, const LaneSpec& sx, float* y, const LaneSpec& sy, float lo, float hi);
void lanes_add(const float* a, const LaneSpec& sa, const float* b, const LaneSpec& sb, float* y,
               const LaneSpec& sy, bool relu);

}  // namespace prunecal
