// pybind11 door to Plan (csrc/plan.h): built op by op by prunecal.sparse.plan, then run as one
// call per batch with the GIL released. Arrays are checked here (TypeError for a dtype,
// ValueError for a shape); plan-structure errors from plan.cpp (std::invalid_argument) reach
// Python as ValueError.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <string>
#include <vector>

#include "plan.h"

namespace py = pybind11;
using prunecal::Plan;

namespace {

// dtype T by equivalence (an unpickled float32 dtype is not the same object as numpy's own)
template <typename T>
bool has_dtype(const py::array& a) {
  return py::isinstance<py::array_t<T>>(a) && a.dtype().itemsize() == py::ssize_t(sizeof(T));
}

template <typename T>
std::vector<T> vec(const py::array& a, const char* name, int ndim) {
  if (!has_dtype<T>(a))
    throw py::type_error(std::string(name) + ": expected dtype " + std::string(py::str(py::dtype::of<T>())) +
                         ", got " + std::string(py::str(a.dtype())));
  if (ndim >= 0 && a.ndim() != ndim)
    throw py::value_error(std::string(name) + ": expected a " + std::to_string(ndim) + "-D array");
  if (!(a.flags() & py::array::c_style)) throw py::value_error(std::string(name) + ": expected a C-contiguous array");
  std::vector<T> v(size_t(a.size()));
  if (a.size()) std::memcpy(v.data(), a.data(), sizeof(T) * size_t(a.size()));
  return v;
}

std::vector<float> opt_bias(const py::object& b) {
  if (b.is_none()) return {};
  return vec<float>(b.cast<py::array>(), "bias", 1);
}

template <typename F>
auto wrap(F&& f) {
  try {
    return f();
  } catch (const std::invalid_argument& e) {
    throw py::value_error(e.what());
  }
}

}  // namespace

void bind_plan(py::module_& m) {
  m.def("plan_avx512_active", &prunecal::plan_avx512_active,
        "True when plans use the AVX-512F fixed-shape CSR tiles (CPU support, PRUNECAL_NO_AVX512 unset).");
  py::class_<Plan>(m, "Plan",
                   "Native execution plan of a whole network: ops over numbered per-image activation "
                   "buffers (padded-plane layout), run as one call per batch. Built by "
                   "prunecal.sparse.plan.compile_plan.")
      .def(py::init<bool>(), py::arg("jit") = true,
           "jit: use generated conv kernels where the CPU allows (AVX-512F/VL, PRUNECAL_NO_JIT unset).")
      .def("add_buffer", [](Plan& p, int C, int H, int W, int P) { return wrap([&] { return p.add_buffer(C, H, W, P); }); },
           py::arg("C"), py::arg("H"), py::arg("W"), py::arg("P") = 0,
           "A new activation buffer (C, H, W) with a P-wide zero border; returns its id.")
      .def("set_io", [](Plan& p, int i, int o) { wrap([&] { p.set_io(i, o); return 0; }); }, py::arg("input"),
           py::arg("output"))
      .def("add_conv",
           [](Plan& p, const std::string& name, const std::string& kind, const py::array& values,
              const py::array& indptr, const py::array& indices, const std::vector<int>& shape, int block_rows,
              const py::object& bias, int stride, int pad, int dil, int groups, bool relu, int in, int out,
              int residual) {
             if (shape.size() != 4) throw py::value_error("shape: expected (C_out, C_in/groups, kh, kw)");
             auto v = vec<float>(values, "values", kind == "bsr" ? 2 : 1);
             if (kind == "bsr" && values.shape(1) != block_rows)
               throw py::value_error("values: expected shape (n_blocks, block_rows)");
             auto ip = vec<int32_t>(indptr, "indptr", 1);
             auto ix = vec<int32_t>(indices, "indices", 1);
             auto b = opt_bias(bias);
             wrap([&] {
               p.add_conv(name,
                          prunecal::WeightArgs{kind, std::move(v), std::move(ip), std::move(ix),
                                               {shape[0], shape[1], shape[2], shape[3]}, block_rows, std::move(b)},
                          prunecal::ConvArgs{stride, pad, dil, groups, relu, residual}, in, out);
               return 0;
             });
           },
           py::arg("name"), py::arg("kind"), py::arg("values"), py::arg("indptr"), py::arg("indices"), py::arg("shape"),
           py::arg("block_rows"), py::arg("bias"), py::arg("stride"), py::arg("pad"), py::arg("dil"), py::arg("groups"),
           py::arg("relu"), py::arg("input"), py::arg("output"), py::arg("residual") = -1,
           "Conv op; with residual >= 0: output = relu?(conv + bias + residual buffer).")
      .def("add_linear",
           [](Plan& p, const std::string& name, const py::array& values, const py::array& indptr,
              const py::array& indices, int out_features, int in_features, const py::object& bias, bool relu, int in,
              int out) {
             auto v = vec<float>(values, "values", 1);
             auto ip = vec<int32_t>(indptr, "indptr", 1);
             auto ix = vec<int32_t>(indices, "indices", 1);
             auto b = opt_bias(bias);
             wrap([&] {
               p.add_linear(name,
                            prunecal::WeightArgs{"csr", std::move(v), std::move(ip), std::move(ix),
                                                 {out_features, in_features, 1, 1}, 1, std::move(b)},
                            relu, in, out);
               return 0;
             });
           },
           py::arg("name"), py::arg("values"), py::arg("indptr"), py::arg("indices"), py::arg("out_features"),
           py::arg("in_features"), py::arg("bias"), py::arg("relu"), py::arg("input"), py::arg("output"))
      .def("add_add", [](Plan& p, const std::string& n, int a, int b, int o, bool r) { wrap([&] { p.add_add(n, a, b, o, r); return 0; }); },
           py::arg("name"), py::arg("a"), py::arg("b"), py::arg("output"), py::arg("relu"))
      .def("add_relu", [](Plan& p, const std::string& n, int i, int o) { wrap([&] { p.add_relu(n, i, o); return 0; }); },
           py::arg("name"), py::arg("input"), py::arg("output"))
      .def("add_shortcut",
           [](Plan& p, const std::string& n, int i, int o, int s, int l) { wrap([&] { p.add_shortcut(n, i, o, s, l); return 0; }); },
           py::arg("name"), py::arg("input"), py::arg("output"), py::arg("stride"), py::arg("left"))
      .def("add_avgpool", [](Plan& p, const std::string& n, int i, int o) { wrap([&] { p.add_avgpool(n, i, o); return 0; }); },
           py::arg("name"), py::arg("input"), py::arg("output"))
      .def("add_maxpool",
           [](Plan& p, const std::string& n, int i, int o, int k, int s, int pad) { wrap([&] { p.add_maxpool(n, i, o, k, s, pad); return 0; }); },
           py::arg("name"), py::arg("input"), py::arg("output"), py::arg("kernel"), py::arg("stride"), py::arg("pad"))
      .def("add_clamp",
           [](Plan& p, const std::string& n, int i, int o, float lo, float hi) { wrap([&] { p.add_clamp(n, i, o, lo, hi); return 0; }); },
           py::arg("name"), py::arg("input"), py::arg("output"), py::arg("lo"), py::arg("hi"))
      .def("describe", &Plan::describe, "One line per op.")
      .def("profile",
           [](Plan& p, const py::array& x, int reps, const std::string& isa) {
             if (p.input() < 0) throw py::value_error("plan: input not set");
             if (!has_dtype<float>(x) || !(x.flags() & py::array::c_style))
               throw py::type_error("x: expected a C-contiguous float32 array");
             const auto& si = p.buffer(p.input());
             if (x.ndim() != 4 || x.shape(1) != si.C || x.shape(2) != si.H || x.shape(3) != si.W)
               throw py::value_error("x: wrong shape for this plan");
             if (reps < 1) throw py::value_error("reps: must be >= 1");
             const prunecal::KernelSet& k = wrap([&]() -> const prunecal::KernelSet& { return prunecal::select_kernels(isa.c_str()); });
             const float* xp = static_cast<const float*>(x.data());
             const int64_t N = x.shape(0);
             py::gil_scoped_release nogil;
             return p.profile(xp, N, reps, k);
           },
           py::arg("x"), py::arg("reps") = 1, py::arg("isa") = "auto",
           "CPU seconds per op (one thread), summed over reps x N images; the last two entries are the "
           "input load and the output store. Image by image: the lanes section's ops are timed as they "
           "run without it (PRUNECAL_PLAN_LANES=0).")
      .def_property_readonly("n_ops", [](const Plan& p) { return p.ops().size(); })
      .def_property_readonly("n_buffers", &Plan::n_buffers)
      .def_property_readonly("arena_bytes", &Plan::arena_bytes, "Bytes of one worker's activation arena.")
      .def_property_readonly("lane_bytes", [](const Plan& p) { return wrap([&] { return p.lane_bytes(); }); },
                             "Bytes of one worker's lanes buffers (the lanes section; 0 without one), "
                             "allocated on its first block of images.")
      .def_property_readonly("input_shape", [](const Plan& p) {
        if (p.input() < 0) throw py::value_error("plan: input not set");
        const auto& s = p.buffer(p.input());
        return py::make_tuple(s.C, s.H, s.W);
      })
      .def_property_readonly("output_features", [](const Plan& p) {
        if (p.output() < 0) throw py::value_error("plan: output not set");
        return p.buffer(p.output()).features();
      })
      .def("run",
           [](Plan& p, const py::array& x, py::array out, int threads, const std::string& mode, const std::string& isa) {
             if (p.input() < 0 || p.output() < 0) throw py::value_error("plan: input/output not set");
             if (!has_dtype<float>(x))
               throw py::type_error("x: expected dtype float32, got " + std::string(py::str(x.dtype())));
             if (!has_dtype<float>(out)) throw py::type_error("out: expected dtype float32");
             if (!(x.flags() & py::array::c_style) || !(out.flags() & py::array::c_style))
               throw py::value_error("x / out: expected C-contiguous arrays");
             if (!out.writeable()) throw py::value_error("out: array is read-only");
             const auto& si = p.buffer(p.input());
             if (x.ndim() != 4 || x.shape(1) != si.C || x.shape(2) != si.H || x.shape(3) != si.W)
               throw py::value_error("x: expected shape (N, " + std::to_string(si.C) + ", " + std::to_string(si.H) + ", " +
                                     std::to_string(si.W) + "), got a " + std::to_string(x.ndim()) + "-D array of another shape");
             const int64_t N = x.shape(0), F = p.buffer(p.output()).features();
             if (out.ndim() != 2 || out.shape(0) != N || out.shape(1) != F)
               throw py::value_error("out: expected shape (" + std::to_string(N) + ", " + std::to_string(F) + ")");
             const char *o0 = static_cast<const char*>(out.data()), *x0 = static_cast<const char*>(x.data());
             if (out.nbytes() && x.nbytes() && o0 < x0 + x.nbytes() && x0 < o0 + out.nbytes())
               throw py::value_error("out: must not overlap x");
             if (threads < 1 || threads > 1024) throw py::value_error("threads: expected 1..1024");
             int m = 0;
             if (mode == "image") m = 1;
             else if (mode == "op") m = 2;
             else if (mode != "auto") throw py::value_error("mode: expected 'auto', 'image' or 'op', got '" + mode + "'");
             const prunecal::KernelSet& k = wrap([&]() -> const prunecal::KernelSet& { return prunecal::select_kernels(isa.c_str()); });
             const float* xp = static_cast<const float*>(x.data());
             float* yp = static_cast<float*>(out.mutable_data());
             py::gil_scoped_release nogil;
             p.run(xp, N, yp, threads, m, k);
           },
           py::arg("x"), py::arg("out"), py::arg("threads") = 1, py::arg("mode") = "auto", py::arg("isa") = "auto",
           "out[:] = network(x): x float32 (N, C, H, W), out float32 (N, features). mode 'image' runs the "
           "whole plan per image on each worker; 'op' splits each conv over threads; 'auto' picks.");
}
