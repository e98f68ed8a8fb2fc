// Fixed-shape image packing for the per-layer conv (csrc/conv.cpp): the CIFAR geometries
// (3x3 kernels, padding 1, dilation 1; stride 1 on 8/16/32-wide images, stride 2 on 16/32-wide
// images of even height) copied into the zero-padded / phase-split planes with whole-row
// AVX-512F loads and stores, and the NaN/Inf check of every value done in the same pass.
// Picked at run time (plan_avx512_active(): CPU support, PRUNECAL_NO_AVX512 unset); the
// general row-by-row packing covers everything else with the same result.
#pragma once
#include <cstdint>

#include "packed_weight.h"

namespace prunecal {

// Packs image x (C, H, W) into `buf` laid out as in copy_phase_planes (channel c at c * g.chan_floats,
// phase planes of g.Hq x g.Wq); writes only the positions that hold image values. Returns 1 if
// any value is NaN or Inf, 0 if none, -1 if this geometry has no fixed-shape packer (nothing
// written).
int pack_planes_fixed(const float* x, int C, int H, int W, const Geometry& g, float* buf);

}  // namespace prunecal
