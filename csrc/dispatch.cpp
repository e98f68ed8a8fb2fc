// The ISA decision (isa_config, see common.h) and the kernel-set choice that follows from it.
#include <cstdlib>
#include <stdexcept>
#include <string>

#include "common.h"

namespace prunecal {

namespace {
bool env_on(const char* name) {
  const char* e = std::getenv(name);
  return e && e[0] && e[0] != '0';
}
enum class Feature { Avx2Fma, Avx512f, Avx512vl };
#if defined(PRUNECAL_HAVE_AVX2_TU) && (defined(__GNUC__) || defined(__clang__))
bool cpu(Feature f) {
  __builtin_cpu_init();
  switch (f) {
    case Feature::Avx2Fma: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case Feature::Avx512f: return __builtin_cpu_supports("avx512f");
    case Feature::Avx512vl: return __builtin_cpu_supports("avx512vl");
  }
  return false;
}
#else
bool cpu(Feature) { return false; }
#endif

IsaConfig make_config() {
  IsaConfig c;
  const bool has2 = cpu(Feature::Avx2Fma), has512 = has2 && cpu(Feature::Avx512f), vl = has512 && cpu(Feature::Avx512vl);
  const char* e = std::getenv("PRUNECAL_ISA");
  const std::string req = e && e[0] ? e : "auto";
  static std::string requested;  // (kept for the config's lifetime: the whole process)
  requested = req;
  c.requested = requested.c_str();
#if defined(PRUNECAL_HAVE_NEON)
  const bool neon = true;  // part of the AArch64 baseline
#else
  const bool neon = false;
#endif
  if (req == "auto") {
    c.isa = neon ? Isa::Neon
                 : has512 && !env_on("PRUNECAL_NO_AVX512") ? Isa::Avx512 : has2 ? Isa::Avx2 : Isa::Generic;
  } else if (req == "neon") {
    if (neon) c.isa = Isa::Neon;
    else c.error = "PRUNECAL_ISA=neon: this build is not AArch64; use avx512, avx2, generic or auto";
  } else if (req == "avx512") {
    if (has512) c.isa = Isa::Avx512;
    else c.error = "PRUNECAL_ISA=avx512: this CPU (or build) has no AVX-512F; use avx2, generic or auto";
  } else if (req == "avx2") {
    if (has2) c.isa = Isa::Avx2;
    else c.error = "PRUNECAL_ISA=avx2: this CPU (or build) has no AVX2+FMA; use generic or auto";
  } else if (req == "generic") {
    c.isa = Isa::Generic;
  } else {
    c.error = "PRUNECAL_ISA: expected auto, avx512, avx2, neon or generic";
  }
#if defined(__x86_64__) && !defined(_WIN32)
  if (!env_on("PRUNECAL_NO_JIT")) {
    if (c.isa == Isa::Avx512 && vl) c.jit = Isa::Avx512;
    else if (c.isa == Isa::Avx2 || c.isa == Isa::Avx512) c.jit = Isa::Avx2;
  }
#else
  (void)vl;
#endif
  return c;
}
}  // namespace

const IsaConfig& isa_config() {
  static const IsaConfig c = make_config();
  return c;
}

const char* isa_name(Isa i) {
  return i == Isa::Avx512 ? "avx512" : i == Isa::Avx2 ? "avx2" : i == Isa::Neon ? "neon" : "generic";
}

bool cpu_has_avx2_fma() {
  static const bool ok = cpu(Feature::Avx2Fma);
  return ok;
}

const KernelSet& select_kernels(const char* isa) {
  const std::string s = isa ? isa : "auto";
#if defined(PRUNECAL_HAVE_NEON)
  // (AArch64: NEON is part of the baseline ISA; 'auto' follows the process's ISA decision, so
  // PRUNECAL_ISA=generic runs the portable kernels there too)
  if (s == "neon" || (s == "auto" && isa_config().isa == Isa::Neon)) return neon_kernels();
#else
  if (s == "neon") throw std::invalid_argument("isa: 'neon' is not supported by this CPU or build (AArch64 only)");
#endif

  if (s == "generic") return generic_kernels();
  if (s == "auto") {
#if defined(PRUNECAL_HAVE_AVX2_TU)
    if (isa_config().isa == Isa::Avx2 || isa_config().isa == Isa::Avx512) return avx2_kernels();
#endif
    return generic_kernels();
  }
  if (s == "avx2") {
#if defined(PRUNECAL_HAVE_AVX2_TU)
    if (cpu_has_avx2_fma()) return avx2_kernels();
#endif
    throw std::invalid_argument("isa: 'avx2' is not supported by this CPU or build");
  }
  throw std::invalid_argument("isa: expected 'auto', 'avx2', 'neon' or 'generic', got '" + s + "'");
}

}  // namespace prunecal
