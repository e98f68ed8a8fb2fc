// Runtime ISA choice: the best kernel set this CPU supports, or one named by the caller.
#include <cstring>
#include <stdexcept>
#include <string>

#include "common.h"

namespace prunecal {

bool cpu_has_avx2_fma() {
#if defined(PRUNECAL_HAVE_AVX2_TU) && (defined(__GNUC__) || defined(__clang__))
  static const bool ok = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return ok;
#else
  return false;
#endif
}

const KernelSet& select_kernels(const char* isa) {
  const std::string s = isa ? isa : "auto";
#if defined(PRUNECAL_HAVE_NEON)
  if (s == "auto" || s == "neon") return neon_kernels();  // (AArch64: NEON is part of the baseline ISA)
#else
  if (s == "neon") throw std::invalid_argument("isa: 'neon' is not supported by this CPU or build (AArch64 only)");
#endif

  if (s == "generic") return generic_kernels();
  if (s == "auto" || s == "avx2") {
#if defined(PRUNECAL_HAVE_AVX2_TU)
    if (cpu_has_avx2_fma()) return avx2_kernels();
#endif
    if (s == "auto") return generic_kernels();
    throw std::invalid_argument("isa: 'avx2' is not supported by this CPU or build");
  }
  throw std::invalid_argument("isa: expected 'auto', 'avx2', 'neon' or 'generic', got '" + s + "'");
}

}  // namespace prunecal
