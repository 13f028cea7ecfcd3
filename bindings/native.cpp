// pybind11 module dinofeat._native: thin, checking wrappers over the CPU kernels (cpu_kernels.hpp).
// The Python side (dinofeat/kernels/cpu.py) validates user input; the checks here only guard the C++ contract
// (dtype, C-contiguity, shapes) and raise ValueError when it is broken.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <optional>
#include <string>

#include "cpu_kernels.hpp"

namespace py = pybind11;
using F32 = py::array_t<float, py::array::c_style>;
using I64 = py::array_t<int64_t, py::array::c_style>;

namespace {

// Accept only an existing float32 C-contiguous array (no silent conversion copies).
template <class T>
py::array_t<T, py::array::c_style> exact(const py::handle& obj, const char* name, int ndim) {
  if (!py::isinstance<py::array_t<T, py::array::c_style>>(obj)) {
    throw py::value_error(std::string(name) + ": expected a C-contiguous numpy array of " +
                          py::str(py::dtype::of<T>()).cast<std::string>());
  }
  auto a = py::reinterpret_borrow<py::array_t<T, py::array::c_style>>(obj);
  if (a.ndim() != ndim) {
    throw py::value_error(std::string(name) + ": expected " + std::to_string(ndim) + " dimensions, got " +
                          std::to_string(a.ndim()));
  }
  return a;
}

py::tuple log_bin(const py::handle& x_obj, int hp, int wp, int hierarchy, bool want_norm) {
  auto x = exact<float>(x_obj, "x", 3);
  const int64_t b = x.shape(0), t = x.shape(1), c = x.shape(2);
  if (hp < 0 || wp < 0 || static_cast<int64_t>(hp) * wp != t) throw py::value_error("log_bin: hp * wp != T");
  if (hierarchy < 1 || hierarchy > 16) throw py::value_error("log_bin: hierarchy must be in 1..16");
  const int64_t nb = 1 + 8 * hierarchy;
  F32 out({b, t, nb * c});
  std::optional<F32> norm;
  if (want_norm) norm.emplace(std::vector<py::ssize_t>{b, t});
  // box-averaged maps, allocated by numpy (which asks for huge pages on big buffers: fewer page faults)
  F32 work({std::max<int64_t>((hierarchy - 1) * b * t * c, 1)});
  const float* xp = x.data();
  float* op = out.mutable_data();
  float* np_ = norm ? norm->mutable_data() : nullptr;
  float* wk = work.mutable_data();
  {
    py::gil_scoped_release nogil;
    dinofeat::cpu::log_bin(xp, op, np_, wk, b, hp, wp, c, hierarchy);
  }
  if (norm) return py::make_tuple(out, *norm);
  return py::make_tuple(out, py::none());
}

F32 row_norms(const py::handle& x_obj) {
  auto x = exact<float>(x_obj, "x", 2);
  F32 out({x.shape(0)});
  const float* xp = x.data();
  float* op = out.mutable_data();
  const int64_t rows = x.shape(0), ch = x.shape(1);
  py::gil_scoped_release nogil;
  dinofeat::cpu::row_norms(xp, op, rows, ch);
  return out;
}

void bb_epilogue(const py::handle& s_obj, int64_t row0, const py::handle& rs_obj, const py::handle& cs_obj,
                 const py::handle& rv_obj, const py::handle& ri_obj, const py::handle& cv_obj,
                 const py::handle& ci_obj) {
  auto s = exact<float>(s_obj, "s", 2);
  const int64_t rows = s.shape(0), cols = s.shape(1);
  const float* rs = nullptr;
  const float* cs = nullptr;
  std::optional<F32> rs_a, cs_a;
  if (!rs_obj.is_none()) {
    rs_a = exact<float>(rs_obj, "row_scale", 1);
    if (rs_a->shape(0) != rows) throw py::value_error("bb_epilogue: row_scale must have s.shape[0] entries");
    rs = rs_a->data();
  }
  if (!cs_obj.is_none()) {
    cs_a = exact<float>(cs_obj, "col_scale", 1);
    if (cs_a->shape(0) != cols) throw py::value_error("bb_epilogue: col_scale must have s.shape[1] entries");
    cs = cs_a->data();
  }
  auto rv = exact<float>(rv_obj, "row_val", 1);
  auto ri = exact<int64_t>(ri_obj, "row_idx", 1);
  auto cv = exact<float>(cv_obj, "col_val", 1);
  auto ci = exact<int64_t>(ci_obj, "col_idx", 1);
  if (rv.shape(0) != rows || ri.shape(0) != rows) throw py::value_error("bb_epilogue: row outputs need s.shape[0]");
  if (cv.shape(0) != cols || ci.shape(0) != cols) throw py::value_error("bb_epilogue: col state needs s.shape[1]");
  const float* sp = s.data();
  float* rvp = rv.mutable_data();
  int64_t* rip = ri.mutable_data();
  float* cvp = cv.mutable_data();
  int64_t* cip = ci.mutable_data();
  py::gil_scoped_release nogil;
  dinofeat::cpu::bb_epilogue(sp, rows, cols, cols, row0, rs, cs, rvp, rip, cvp, cip);
}

}  // namespace

PYBIND11_MODULE(_native, m) {
  m.doc() = "dinofeat CPU kernels (private; use dinofeat.kernels)";
  m.def("log_bin", &log_bin, py::arg("x"), py::arg("hp"), py::arg("wp"), py::arg("hierarchy"),
        py::arg("want_norm"),
        "x (B, T, C) float32 -> (out (B, T, C*(1+8h)) float32, norm (B, T) float32 or None)");
  m.def("row_norms", &row_norms, py::arg("x"), "x (T, C) float32 -> max(||x_r||, 1e-8) (T,) float32");
  m.def("bb_epilogue", &bb_epilogue, py::arg("s"), py::arg("row0"), py::arg("row_scale"), py::arg("col_scale"),
        py::arg("row_val"), py::arg("row_idx"), py::arg("col_val"), py::arg("col_idx"),
        "Fold one chunk s (rows, T2) of S (global rows row0..) into row results and running column maxima");
  m.def("max_threads", &dinofeat::cpu::max_threads, "OpenMP threads the kernels use");
}
