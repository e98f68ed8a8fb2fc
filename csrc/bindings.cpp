// Thin pybind11 door to the native kernels. Binds numpy arrays / buffers only (no torch in
// the build). Every argument is checked here: bad dtype -> TypeError, bad shape / value ->
// ValueError; nothing reaches a kernel unchecked. Compute runs with the GIL released.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <atomic>
#include <chrono>
#include <thread>
#include <cstring>
#include <string>
#include <vector>

#include "common.h"
#include "thread_pool.h"
#include "jit_conv.h"
#include "packed_weight.h"

namespace py = pybind11;
using prunecal::PackedWeight;
void bind_plan(py::module_& m);  // csrc/plan_bindings.cpp
void bind_train(py::module_& m);  // csrc/train_bindings.cpp

namespace {

[[noreturn]] void value_error(const std::string& m) { throw py::value_error(m); }

template <typename T>
const char* dtype_name();
template <>
const char* dtype_name<float>() { return "float32"; }
template <>
const char* dtype_name<int32_t>() { return "int32"; }

template <typename T>
void check_array(const py::array& a, const char* name, int ndim) {
  // (isinstance compares dtypes by equivalence: an unpickled float32 dtype is not the same object)
  if (!py::isinstance<py::array_t<T>>(a) || a.dtype().itemsize() != py::ssize_t(sizeof(T)))
    throw py::type_error(std::string(name) + ": expected dtype " + dtype_name<T>() + ", got " +
                         std::string(py::str(a.dtype())));
  if (ndim >= 0 && a.ndim() != ndim)
    value_error(std::string(name) + ": expected a " + std::to_string(ndim) + "-D array, got " +
                std::to_string(a.ndim()) + "-D");
  if (!(a.flags() & py::array::c_style))
    value_error(std::string(name) + ": expected a C-contiguous array");
}

template <typename T>
std::vector<T> to_vector(const py::array& a, const char* name, int ndim) {
  check_array<T>(a, name, ndim);
  std::vector<T> v(size_t(a.size()));
  if (a.size()) std::memcpy(v.data(), a.data(), sizeof(T) * size_t(a.size()));
  return v;
}

const float* optional_bias(const py::object& bias, int rows) {
  if (bias.is_none()) return nullptr;
  if (!py::isinstance<py::array>(bias)) throw py::type_error("bias: expected a numpy array or None");
  py::array b = bias.cast<py::array>();
  check_array<float>(b, "bias", 1);
  if (b.shape(0) != rows)
    value_error("bias: expected " + std::to_string(rows) + " values, got " + std::to_string(b.shape(0)));
  return static_cast<const float*>(b.data());
}

int check_threads(int threads) {
  if (threads < 1 || threads > 1024) value_error("threads: expected 1..1024, got " + std::to_string(threads));
  return threads;
}

// out: float32, C-contiguous, writeable, of `shape`, not overlapping the x_bytes at x0.
void check_out(const py::array& out, const void* x, int64_t x_bytes, const std::vector<py::ssize_t>& shape) {
  check_array<float>(out, "out", int(shape.size()));
  if (!out.writeable()) value_error("out: array is read-only");
  for (size_t i = 0; i < shape.size(); ++i)
    if (out.shape(i) != shape[i]) value_error("out: wrong shape for this convolution / layer");
  const char *o0 = static_cast<const char*>(out.data()), *x0 = static_cast<const char*>(x);
  if (out.nbytes() && x_bytes && o0 < x0 + x_bytes && x0 < o0 + out.nbytes()) value_error("out: must not overlap x");
}
void check_out(const py::array& out, const py::array& x, const std::vector<py::ssize_t>& shape) {
  check_out(out, x.data(), int64_t(x.nbytes()), shape);
}

// out[:] = conv2d(x) for x a C-contiguous float32 (N, C, H, W) buffer at xp; the checks every
// conv2d entry shares, then the kernels with the GIL released.
void conv2d_into(PackedWeight& w, const float* xp, py::ssize_t N, py::ssize_t C, py::ssize_t H, py::ssize_t W,
                 py::array& out, const float* b, int stride, int padding, int dilation, int groups, bool relu,
                 int threads, const std::string& isa) {
  if (stride < 1) value_error("stride: must be >= 1, got " + std::to_string(stride));
  if (padding < 0) value_error("padding: must be >= 0, got " + std::to_string(padding));
  if (dilation < 1) value_error("dilation: must be >= 1, got " + std::to_string(dilation));
  if (groups < 1 || w.rows() % groups)
    value_error("groups: " + std::to_string(groups) + " must be >= 1 and divide C_out=" + std::to_string(w.rows()));
  if (C != py::ssize_t(w.cin_per_group()) * groups)
    value_error("x: expected " + std::to_string(int64_t(w.cin_per_group()) * groups) +
                " input channels (C_in/groups=" + std::to_string(w.cin_per_group()) +
                " x groups=" + std::to_string(groups) + "), got " + std::to_string(C));
  if (N < 0 || H <= 0 || W <= 0 || H >= (1 << 20) || W >= (1 << 20) || N >= (int64_t(1) << 31))
    value_error("x: bad spatial size or batch");
  const prunecal::KernelSet& k = prunecal::select_kernels(isa.c_str());
  threads = check_threads(threads);
  auto g = w.geometry(int(H), int(W), stride, padding, dilation);  // validates geometry
  check_out(out, xp, int64_t(N) * C * H * W * int64_t(sizeof(float)), {N, w.rows(), g->Ho, g->Wo});
  float* yp = static_cast<float*>(out.mutable_data());
  py::gil_scoped_release nogil;
  w.conv2d(xp, int(N), int(C), int(H), int(W), yp, b, stride, padding, dilation, groups, relu, threads, k);
}


}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "prunecal native sparse inference core (CSR/BSR direct sparse convolution, sparse linear)";
  m.attr("__version__") = "0.1.0";
  // the ISA path is decided here, once, at load (csrc/common.h isa_config)
  if (const char* err = prunecal::isa_config().error) throw py::import_error(std::string("prunecal._C: ") + err);
  try {
    prunecal::thread_runtime_init();  // (a malformed PRUNECAL_THREAD_RUNTIME refuses the load too)
  } catch (const std::invalid_argument& e) {
    throw py::import_error(std::string("prunecal._C: ") + e.what());
  }

  m.def("cpu_features", [] {
    py::dict d;
    d["avx2_fma"] = prunecal::cpu_has_avx2_fma();
#if defined(PRUNECAL_HAVE_AVX2_TU)
    d["avx2_compiled"] = true;
#else
    d["avx2_compiled"] = false;
#endif
#if defined(PRUNECAL_HAVE_NEON)
    d["neon_compiled"] = true;  // (AArch64: NEON is part of the baseline, always used by 'auto')
#else
    d["neon_compiled"] = false;
#endif
    d["isa"] = prunecal::select_kernels("auto").name;
    return d;
  }, "CPU features seen at run time and the kernel set 'auto' picks ('avx2', 'neon' or 'generic').");
  m.def("jit_available", [] { return prunecal::JitConv::available(); },
        "Whether generated conv kernels are used (x86-64 with AVX2+FMA or AVX-512F/VL, PRUNECAL_NO_JIT "
        "unset or '0', PRUNECAL_ISA not 'generic').");
  m.def("isa", [] { return std::string(prunecal::select_kernels("auto").name); },
        "Name of the kernel set used by default ('avx2', 'neon' or 'generic'); isa_path() names the whole path.");
  m.def("thread_runtime", [] { return prunecal::thread_runtime(); },
        "What multi-threaded calls run on now: 'openmp (<library>)' when an OpenMP runtime is loaded "
        "in the process (torch's) and PRUNECAL_THREAD_RUNTIME is auto or openmp; 'pool' (also "
        "'pool (a forked child)'); 'none (...)' when openmp is asked for and none is loaded.");
  m.def(
      "_parallel_for_check",
      [](int threads, int64_t n_tasks, int64_t fail_task, bool rendezvous) {
        // the thread door itself, for its tests: each task's run count and worker; with
        // rendezvous, each task first waits (<= 10 s) until min(threads, n_tasks) tasks started
        if (threads < 1 || n_tasks < 0) throw std::invalid_argument("threads >= 1, n_tasks >= 0");
        std::vector<std::atomic<int>> runs(static_cast<size_t>(n_tasks));
        std::vector<int> worker(runs.size(), -1);
        std::atomic<int64_t> started{0};
        std::atomic<bool> met{true};
        const int64_t want = std::min<int64_t>(threads, n_tasks);
        {
          py::gil_scoped_release nogil;
          prunecal::parallel_for(threads, n_tasks, [&](int64_t t, int w) {
            if (t == fail_task) throw std::runtime_error("task " + std::to_string(t) + " failed");
            if (rendezvous) {
              started.fetch_add(1);
              const auto t0 = std::chrono::steady_clock::now();
              while (started.load() < want) {
                if (std::chrono::steady_clock::now() - t0 > std::chrono::seconds(10)) {
                  met.store(false);
                  break;
                }
                std::this_thread::yield();
              }
            }
            runs[size_t(t)].fetch_add(1);
            worker[size_t(t)] = w;
          });
        }
        std::vector<int> counts(runs.size());
        for (size_t i = 0; i < runs.size(); ++i) counts[i] = runs[i].load();
        return py::make_tuple(counts, worker, rendezvous ? met.load() : true);
      },
      py::arg("threads"), py::arg("n_tasks"), py::arg("fail_task") = -1, py::arg("rendezvous") = false,
      "Test hook: n_tasks tasks through the native thread door; (runs per task, worker of each, "
      "whether the rendezvous was met).");
  m.def("isa_path", [] { return std::string(prunecal::isa_name(prunecal::isa_config().isa)); },
        "The ISA path this process runs, chosen once at load: 'avx512', 'avx2', 'neon' or 'generic' "
        "(PRUNECAL_ISA, PRUNECAL_NO_AVX512, CPUID).");
  m.def("isa_config", [] {
    const auto& c = prunecal::isa_config();
    py::dict d;
    d["isa"] = prunecal::isa_name(c.isa);
    d["jit"] = c.jit == prunecal::Isa::Generic ? "none" : prunecal::isa_name(c.jit);
    d["requested"] = c.requested;
    d["kernels"] = prunecal::select_kernels("auto").name;
    return d;
  }, "The process's ISA decision: {'isa': path, 'jit': generated-kernel code ('avx512', 'avx2' or "
     "'none'), 'requested': PRUNECAL_ISA or 'auto', 'kernels': the default kernel set}.");

  py::class_<PackedWeight>(m, "PackedWeight",
      "Validated, kernel-ready copy of a CSR / BSR weight (C_out, C_in/groups, kh, kw); "
      "caches per-input-geometry offsets.")
      .def(py::init([](const std::string& kind, const py::array& values, const py::array& indptr,
                       const py::array& indices, const std::vector<int>& shape, int block_rows) {
             if (shape.size() != 4) value_error("shape: expected (C_out, C_in/groups, kh, kw)");
             if (kind == "bsr") check_array<float>(values, "values", 2);
             auto v = to_vector<float>(values, "values", kind == "bsr" ? 2 : 1);
             auto p = to_vector<int32_t>(indptr, "indptr", 1);
             auto i = to_vector<int32_t>(indices, "indices", 1);
             if (kind == "bsr" && values.shape(1) != block_rows)
               value_error("values: expected shape (n_blocks, block_rows)");
             std::array<int, 4> s{shape[0], shape[1], shape[2], shape[3]};
             return new PackedWeight(kind, std::move(v), std::move(p), std::move(i), s, block_rows);
           }),
           py::arg("kind"), py::arg("values"), py::arg("indptr"), py::arg("indices"), py::arg("shape"),
           py::arg("block_rows") = 1)
      .def_property_readonly("kind", &PackedWeight::kind)
      .def_property_readonly("shape", [](const PackedWeight& w) {
        return py::make_tuple(w.rows(), w.cin_per_group(), w.kh(), w.kw());
      })
      .def_property_readonly("nnz", &PackedWeight::nnz)
      .def_property_readonly("block_rows", &PackedWeight::block_rows)
      .def("conv2d",
           [](PackedWeight& w, const py::array& x, py::array out, const py::object& bias, int stride,
              int padding, int dilation, int groups, bool relu, int threads, const std::string& isa) {
             check_array<float>(x, "x", 4);
             const float* b = optional_bias(bias, w.rows());
             conv2d_into(w, static_cast<const float*>(x.data()), x.shape(0), x.shape(1), x.shape(2), x.shape(3), out,
                         b, stride, padding, dilation, groups, relu, threads, isa);
           },
           py::arg("x"), py::arg("out"), py::arg("bias") = py::none(), py::arg("stride") = 1,
           py::arg("padding") = 0, py::arg("dilation") = 1, py::arg("groups") = 1, py::arg("relu") = false,
           py::arg("threads") = 1, py::arg("isa") = "auto",
           "out[:] = conv2d(x) with x (N, C_in, H, W) and out (N, C_out, Ho, Wo) float32 C-contiguous.")
      .def("_conv2d_ptr",
           [](PackedWeight& w, uintptr_t x, py::ssize_t N, py::ssize_t C, py::ssize_t H, py::ssize_t W, py::array out,
              uintptr_t bias, int stride, int padding, int dilation, int groups, bool relu, int threads,
              const std::string& isa) {
             if (!x) value_error("x: null address");
             conv2d_into(w, reinterpret_cast<const float*>(x), N, C, H, W, out, reinterpret_cast<const float*>(bias),
                         stride, padding, dilation, groups, relu, threads, isa);
           },
           py::arg("x"), py::arg("N"), py::arg("C"), py::arg("H"), py::arg("W"), py::arg("out"), py::arg("bias"), py::arg("stride"), py::arg("padding"),
           py::arg("dilation"), py::arg("groups"), py::arg("relu"), py::arg("threads"), py::arg("isa"),
           "Internal (prunecal.sparse.ops): conv2d with x and bias given as addresses (torch data_ptr(); "
           "bias 0: none) of C-contiguous float32 buffers of (N, C_in, H, W) and (C_out,) that the "
           "caller has checked and keeps alive during the call. The addresses themselves cannot be "
           "checked here: use sparse_conv2d or conv2d unless you hold such buffers.")
      .def("output_hw",
           [](PackedWeight& w, int H, int W, int stride, int padding, int dilation) {
             if (stride < 1 || padding < 0 || dilation < 1) value_error("bad stride/padding/dilation");
             if (H <= 0 || W <= 0) value_error("input: H and W must be positive");
             auto g = w.geometry(H, W, stride, padding, dilation);
             return py::make_tuple(g->Ho, g->Wo);
           },
           py::arg("H"), py::arg("W"), py::arg("stride") = 1, py::arg("padding") = 0, py::arg("dilation") = 1)
      .def("jit_kernels",
           [](PackedWeight& w, int H, int W, int stride, int padding, int dilation) {
             if (stride < 1 || padding < 0 || dilation < 1) value_error("bad stride/padding/dilation");
             if (H <= 0 || W <= 0) value_error("input: H and W must be positive");
             auto g = w.geometry(H, W, stride, padding, dilation);
             const prunecal::JitConv* j = w.kind() == "csr" ? w.jit(*g) : nullptr;
             return j ? py::make_tuple(j->n_groups(), j->vec()) : py::make_tuple(0, 0);
           },
           py::arg("H"), py::arg("W"), py::arg("stride") = 1, py::arg("padding") = 0, py::arg("dilation") = 1,
           "(channel groups, outputs per tile) of the generated conv kernels conv2d uses for this input "
           "geometry (groups=1, CSR, isa 'avx2'), (0, 0) where it uses the fixed kernels.")
      .def("linear",
           [](PackedWeight& w, const py::array& x, py::array out, const py::object& bias, bool relu,
              int threads, const std::string& isa) {
             if (w.kh() != 1 || w.kw() != 1) value_error("weight: not a linear (out, in) weight");
             check_array<float>(x, "x", 2);
             if (x.shape(1) != w.cols())
               value_error("x: expected " + std::to_string(w.cols()) + " input features, got " +
                           std::to_string(x.shape(1)));
             const prunecal::KernelSet& k = prunecal::select_kernels(isa.c_str());
             const float* b = optional_bias(bias, w.rows());
             threads = check_threads(threads);
             check_out(out, x, {x.shape(0), w.rows()});
             const float* xp = static_cast<const float*>(x.data());
             float* yp = static_cast<float*>(out.mutable_data());
             const int64_t N = x.shape(0);
             py::gil_scoped_release nogil;
             w.linear(xp, N, yp, b, relu, threads, k);
           },
           py::arg("x"), py::arg("out"), py::arg("bias") = py::none(), py::arg("relu") = false,
           py::arg("threads") = 1, py::arg("isa") = "auto",
           "out[:] = x @ W.T (+ bias) with x (N, in) and out (N, out) float32 C-contiguous.");
  bind_plan(m);
  bind_train(m);
}
