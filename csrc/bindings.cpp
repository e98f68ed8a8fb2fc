// Thin pybind11 door to the native kernels: argument checks live in the kernel families' entry points.
#include <pybind11/pybind11.h>

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "prunecal native sparse inference core";
  m.attr("__version__") = "0.1.0";
}
