// pybind11 door of the sparse training conv (csrc/train_conv.h): prunecal._C.TrainConv.
// Tensors travel as addresses (torch data_ptr()) of buffers prunecal.sparse.train has checked;
// everything checkable here (sizes, parameters, null addresses, thread count, isa) is checked
// and raises ValueError / TypeError. Compute runs with the GIL released.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <cstring>
#include <string>
#include <vector>

#include "train_conv.h"

namespace py = pybind11;
using prunecal::TrainConv;

namespace {

std::vector<int32_t> int32_vector(const py::array& a, const char* name) {
  if (!py::isinstance<py::array_t<int32_t>>(a) || a.dtype().itemsize() != 4)
    throw py::type_error(std::string(name) + ": expected dtype int32, got " + std::string(py::str(a.dtype())));
  if (a.ndim() != 1) throw py::value_error(std::string(name) + ": expected a 1-D array");
  if (!(a.flags() & py::array::c_style)) throw py::value_error(std::string(name) + ": expected a C-contiguous array");
  std::vector<int32_t> v(size_t(a.size()));
  if (a.size()) std::memcpy(v.data(), a.data(), 4 * size_t(a.size()));
  return v;
}

void check_call(const TrainConv& c, uintptr_t a, const char* name, py::ssize_t N, py::ssize_t C, int threads) {
  if (!a) throw py::value_error(std::string(name) + ": null address");
  if (N < 0 || N >= (py::ssize_t(1) << 31)) throw py::value_error("x: bad batch size");
  if (C != c.cin())
    throw py::value_error("x: expected " + std::to_string(c.cin()) + " input channels, got " + std::to_string(C));
  if (threads < 1 || threads > 1024) throw py::value_error("threads: expected 1..1024, got " + std::to_string(threads));
}

template <typename T>
T* ptr(uintptr_t a) { return reinterpret_cast<T*>(a); }

}  // namespace

void bind_train(py::module_& m) {
  py::class_<TrainConv>(m, "TrainConv",
      "Fixed CSR pattern of a conv weight (C_out, C_in/groups, kh, kw) for training: forward, input "
      "gradient and weight gradient at the stored nonzeros, values passed per call (O(nnz) each).")
      .def(py::init([](const py::array& indptr, const py::array& indices, const std::vector<int>& shape, int groups) {
             if (shape.size() != 4) throw py::value_error("shape: expected (C_out, C_in/groups, kh, kw)");
             return new TrainConv(int32_vector(indptr, "indptr"), int32_vector(indices, "indices"),
                                  {shape[0], shape[1], shape[2], shape[3]}, groups);
           }),
           py::arg("indptr"), py::arg("indices"), py::arg("shape"), py::arg("groups") = 1)
      .def_property_readonly("shape", [](const TrainConv& c) {
        return py::make_tuple(c.shape()[0], c.shape()[1], c.shape()[2], c.shape()[3]);
      })
      .def_property_readonly("nnz", &TrainConv::nnz)
      .def_property_readonly("groups", &TrainConv::groups)
      .def("output_hw",
           [](TrainConv& c, int H, int W, int stride, int padding) {
             auto g = c.geometry(H, W, stride, padding);
             return py::make_tuple(g->Ho, g->Wo);
           },
           py::arg("H"), py::arg("W"), py::arg("stride") = 1, py::arg("padding") = 0,
           "(Ho, Wo) for an H x W input; ValueError for impossible geometries.")
      .def("_forward_ptr",
           [](TrainConv& c, uintptr_t x, py::ssize_t N, py::ssize_t C, int H, int W, uintptr_t val, uintptr_t y,
              int stride, int padding, int threads, const std::string& isa, bool nhwc) {
             check_call(c, x, "x", N, C, threads);
             if (!val && c.nnz()) throw py::value_error("values: null address");
             if (!y) throw py::value_error("out: null address");
             const auto& k = prunecal::select_train_kernels(isa.c_str());
             c.geometry(H, W, stride, padding);
             py::gil_scoped_release nogil;
             c.forward(ptr<const float>(x), int(N), H, W, ptr<const float>(val), ptr<float>(y), stride, padding,
                       threads, k, nhwc);
           },
           py::arg("x"), py::arg("N"), py::arg("C"), py::arg("H"), py::arg("W"), py::arg("values"), py::arg("out"),
           py::arg("stride"), py::arg("padding"), py::arg("threads"), py::arg("isa") = "auto", py::arg("nhwc") = false,
           "Internal (prunecal.sparse.train): out (N, C_out, Ho, Wo) = conv2d(x (N, C_in, H, W)) with the "
           "nnz float32 values; addresses of C-contiguous float32 buffers the caller checked and keeps alive "
           "(nhwc: x and out stored (N, H, W, C), torch channels_last). "
           "ValueError when x holds NaN / Inf.")
      .def("_backward_ptr",
           [](TrainConv& c, uintptr_t x, uintptr_t dy, py::ssize_t N, py::ssize_t C, int H, int W, uintptr_t val,
              uintptr_t dx, uintptr_t dval, int stride, int padding, int threads, const std::string& isa, bool nhwc) {
             check_call(c, dy, "grad_output", N, C, threads);
             if (dval && !x) throw py::value_error("x: null address");
             if (!val && c.nnz()) throw py::value_error("values: null address");
             const auto& k = prunecal::select_train_kernels(isa.c_str());
             c.geometry(H, W, stride, padding);
             py::gil_scoped_release nogil;
             c.backward(ptr<const float>(x), ptr<const float>(dy), int(N), H, W, ptr<const float>(val), ptr<float>(dx),
                        ptr<float>(dval), stride, padding, threads, k, nhwc);
           },
           py::arg("x"), py::arg("grad_output"), py::arg("N"), py::arg("C"), py::arg("H"), py::arg("W"),
           py::arg("values"), py::arg("grad_x"), py::arg("grad_values"), py::arg("stride"), py::arg("padding"),
           py::arg("threads"), py::arg("isa") = "auto", py::arg("nhwc") = false,
           "Internal (prunecal.sparse.train): grad_x (N, C_in, H, W) and grad_values (nnz,) (address 0: "
           "not computed) from x and grad_output (N, C_out, Ho, Wo); addresses and nhwc as in _forward_ptr. "
           "ValueError when grad_output holds NaN / Inf.");
  m.def("train_isa", [](const std::string& isa) { return std::string(prunecal::select_train_kernels(isa.c_str()).name); },
        py::arg("isa") = "auto", "Kernel set the training conv uses for `isa` ('avx512', 'avx2' or 'generic').");
}
