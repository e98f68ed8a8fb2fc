// The padded-plane copier shared by PackedWeight::conv2d (NCHW images) and the plan (its own
// buffers, for the convs that cannot read them in place): channels of a strided source into the
// stride x stride zero-padded phase planes of a Geometry (see common.h, "Convolution scheme"),
// with the whole-row AVX-512 copies of the fixed CIFAR shapes (pack_fixed.h) as its fast path.
#pragma once
#include <cstdint>

namespace prunecal {

struct Geometry;

// Channel c, row y, column x of the source at x[c * chan_stride + y * row_stride + x].
struct PlaneSource {
  const float* x = nullptr;
  int64_t chan_stride = 0, row_stride = 0;
  int C = 0, H = 0, W = 0;
};

// Copies channels [c0, c1) into their phase planes in `planes` (g.chan_floats floats each; the
// range that ends at C also zeroes the kSlack floats after the last). With `zeros` the padding
// positions are written too; without, `planes` must already hold zeros there (the same geometry
// copied into it before). Returns whether any value copied is NaN or +-Inf (values no output
// reads are not copied, nor checked).
bool copy_phase_planes(const PlaneSource& src, const Geometry& g, float* planes, int c0, int c1, bool zeros);

}  // namespace prunecal
