// Shared types of the native sparse core: the output "slot" geometry and the kernel table.
//
// Convolution scheme (direct sparse convolution): each image is copied into zero-padded
// planes; for stride s > 1 the padded plane is split into s*s phase planes, so that for every
// stored weight (ci, ky, kx) the input of output pixel (oy, ox) sits at the constant offset
// off(ci, ky, kx) from the "wide" position q = oy * Wq + ox (Wq = phase-plane width).
// Output pixels are grouped in slots of up to 8 consecutive columns of one output row
// (or 8 consecutive pixels when the planes have no padding columns); a kernel keeps a tile
// of slots in SIMD registers and loops over the row's nonzeros: broadcast the weight, load
// the 8 inputs at q + off, fused multiply-add.
#pragma once
#include <cstddef>
#include <cstdint>

namespace prunecal {

// Floats of zeroed slack after each packed image, so that vector loads of the last
// (partially valid) slot never leave the buffer.
constexpr int64_t kSlack = 64;
constexpr int kLanes = 8;
// Nonzeros per row block processed against all slot tiles (8 bytes each: ~8 KiB of L1).
constexpr int kBlockNnz = 1024;

struct Slot {
  int32_t in_q;   // wide input position of lane 0
  int32_t out_q;  // output position (oy * Wo + ox) of lane 0
  int32_t n;      // valid lanes, 1..8
};

// One kernel call: rows [row0, row1) (CSR) or block rows (BSR) of one group, slots [s0, s1).
struct ConvTask {
  const float* in;        // packed planes of this group
  const int32_t* indptr;  // row (CSR) or block-row (BSR) pointers
  const int32_t* off;     // input offset of each nonzero (CSR) or block (BSR)
  const float* val;       // CSR: per nonzero; BSR: block_rows per block
  const Slot* slots;
  float* out;             // output of this image; row i starts at out + i * out_stride
  int64_t out_stride;     // floats between output channels (Ho * Wo)
  const float* bias;      // per output channel, or nullptr
  bool relu;
  int valid_rows;         // rows >= valid_rows are padding (BSR) and never written
  // Plan epilogue (read only by the plan's fixed-shape kernels; the other kernels leave it to
  // the plan): fused residual out = relu?(conv + bias + res[row * res_stride + res_q[slot]]),
  // and shifted copies of the output at +-copy_floats (see plan.h, "aligned layout").
  const float* res = nullptr;
  const int32_t* res_q = nullptr;
  int64_t res_stride = 0;
  bool res_relu = false;
  int64_t copy_floats = 0;  // 0: the output buffer keeps no shifted copies
  // input channels of a group and the floats between their planes (0: unknown): the AVX2
  // fixed-shape tiles band the input channels by them so that a tile's input window stays in L1
  int in_channels = 0;
  int64_t in_chan_floats = 0;
};

using CsrFn = void (*)(const ConvTask&, int row0, int row1, int s0, int s1);
using BsrFn = void (*)(const ConvTask&, int block_rows, int brow0, int brow1, int s0, int s1);
using NonfiniteFn = bool (*)(const float* x, int64_t n);

// Instruction-set families: of the process's path (IsaConfig) and of a kernel set.
enum class Isa { Generic = 0, Avx2 = 1, Avx512 = 2, Neon = 3 };

// A kernel set: operators pick per-ISA companions (fixed tiles, generated kernels, lanes
// kernels) by `isa`, never by name. The x86 set is Avx2 on both x86 paths (the avx512 path adds
// AVX-512 tiles and generated kernels to it).
struct KernelSet {
  const char* name;  // for display only
  Isa isa;
  CsrFn csr;
  BsrFn bsr;
  NonfiniteFn nonfinite;
  // the x86 set (either x86 path): the fixed-shape tiles, generated kernels and x86 lanes
  // kernels may run beside it
  bool x86() const { return isa == Isa::Avx2; }
};

const KernelSet& generic_kernels();
// AArch64 Advanced SIMD (NEON, with FMA) kernels: part of the AArch64 baseline, so built into
// every AArch64 build and picked by select_kernels("auto") there (csrc/kernels_neon.cpp);
// select_kernels("neon") elsewhere throws std::invalid_argument.
#if defined(__aarch64__) && defined(__ARM_NEON)
#define PRUNECAL_HAVE_NEON 1
const KernelSet& neon_kernels();
#endif

#if defined(PRUNECAL_HAVE_AVX2_TU)
const KernelSet& avx2_kernels();
#endif
bool cpu_has_avx2_fma();
// "auto" (the kernel set of isa_config()), "avx2" or "generic"; throws std::invalid_argument otherwise.
const KernelSet& select_kernels(const char* isa);

// The instruction-set path of this process, decided ONCE (first call, at module load) from
// CPUID and the environment, in this one place; everything else asks it, never the CPU:
//   PRUNECAL_ISA = auto (default) | avx512 | avx2 | generic: the path (auto: the best the CPU has;
//     naming one the CPU lacks, or an unknown name, leaves `error` set and the module refuses to load),
//   PRUNECAL_NO_AVX512 = 1: caps auto at avx2 (the older switch),
//   PRUNECAL_NO_JIT = 1: no generated conv kernels.
struct IsaConfig {
  Isa isa = Isa::Generic;  // generic: portable kernels; avx2: AVX2+FMA kernels and tiles; avx512: + AVX-512F tiles;
                           // neon: AArch64 NEON kernels and tiles
  Isa jit = Isa::Generic;  // generated conv kernels: Avx512 (AVX-512F/VL code), Avx2 (AVX2+FMA code), Generic: none
  const char* requested = "auto";  // PRUNECAL_ISA as read ("auto" when unset or empty)
  const char* error = nullptr;     // set when PRUNECAL_ISA cannot be honoured
};
const IsaConfig& isa_config();
const char* isa_name(Isa i);

}  // namespace prunecal
