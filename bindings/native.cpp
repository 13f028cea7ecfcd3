// pybind11 module dinofeat._native: thin, checking wrappers over the CPU kernels (cpu_kernels.hpp).
// The Python side (dinofeat/kernels/cpu.py) validates user input; the checks here only guard the C++ contract
// (dtype, C-contiguity, shapes) and raise ValueError when it is broken.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <optional>
#include <string>
#include <vector>

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

// The running maxima a fold updates in place: row_val / row_idx (rows entries), col_val / col_idx (cols entries),
// checked, with their data pointers taken while the GIL is held.
struct Running {
  F32 rv;
  I64 ri;
  F32 cv;
  I64 ci;
  float* row_val;
  int64_t* row_idx;
  float* col_val;
  int64_t* col_idx;
  Running(const py::handle& rv_obj, const py::handle& ri_obj, const py::handle& cv_obj, const py::handle& ci_obj,
          int64_t rows, int64_t cols, const std::string& fn)
      : rv(exact<float>(rv_obj, "row_val", 1)),
        ri(exact<int64_t>(ri_obj, "row_idx", 1)),
        cv(exact<float>(cv_obj, "col_val", 1)),
        ci(exact<int64_t>(ci_obj, "col_idx", 1)) {
    if (rv.shape(0) != rows || ri.shape(0) != rows)
      throw py::value_error(fn + ": row_val / row_idx need " + std::to_string(rows) + " entries");
    if (cv.shape(0) != cols || ci.shape(0) != cols)
      throw py::value_error(fn + ": col_val / col_idx need " + std::to_string(cols) + " entries");
    row_val = rv.mutable_data();
    row_idx = ri.mutable_data();
    col_val = cv.mutable_data();
    col_idx = ci.mutable_data();
  }
};

py::tuple log_bin(const py::handle& x_obj, int hp, int wp, int hierarchy, bool want_norm, const py::handle& out_obj,
                  const py::handle& work_obj) {
  auto x = exact<float>(x_obj, "x", 3);
  const int64_t b = x.shape(0), t = x.shape(1), c = x.shape(2);
  if (hp < 0 || wp < 0 || static_cast<int64_t>(hp) * wp != t) throw py::value_error("log_bin: hp * wp != T");
  if (hierarchy < 1 || hierarchy > DF_LOG_BIN_MAX_LEVELS)
    throw py::value_error("log_bin: hierarchy must be in 1..DF_LOG_BIN_MAX_LEVELS");
  const int64_t nb = 1 + 8 * hierarchy;
  // out / work: the caller's buffers when given (reused: no first-touch page faults), else numpy allocations
  // (numpy asks for huge pages on big buffers: fewer page faults)
  F32 out = out_obj.is_none() ? F32({b, t, nb * c}) : exact<float>(out_obj, "out", 3);
  if (out.shape(0) != b || out.shape(1) != t || out.shape(2) != nb * c) throw py::value_error("log_bin: out shape");
  std::optional<F32> norm;
  if (want_norm) norm.emplace(std::vector<py::ssize_t>{b, t});
  const int64_t n_work = std::max<int64_t>((hierarchy - 1) * b * t * c, 1);
  F32 work = work_obj.is_none() ? F32({n_work}) : exact<float>(work_obj, "workspace", 1);
  if (work.shape(0) < n_work) throw py::value_error("log_bin: workspace too small");
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
  const Running run(rv_obj, ri_obj, cv_obj, ci_obj, rows, cols, "bb_epilogue");
  const float* sp = s.data();
  py::gil_scoped_release nogil;
  dinofeat::cpu::bb_epilogue(sp, rows, cols, cols, row0, rs, cs, run.row_val, run.row_idx, run.col_val, run.col_idx);
}

// ---- binned Best Buddies (issue 10)

F32 box_average(const py::handle& x_obj, int hp, int wp, int level) {
  auto x = exact<float>(x_obj, "x", 3);
  const int64_t b = x.shape(0), t = x.shape(1), c = x.shape(2);
  if (hp < 0 || wp < 0 || static_cast<int64_t>(hp) * wp != t) throw py::value_error("box_average: hp * wp != T");
  if (level < 1 || level >= DF_LOG_BIN_MAX_LEVELS)
    throw py::value_error("box_average: level must be in 1..DF_LOG_BIN_MAX_LEVELS - 1");
  F32 out({b, t, c});
  const float* xp = x.data();
  float* op = out.mutable_data();
  py::gil_scoped_release nogil;
  if (b * t * c != 0) dinofeat::cpu::box_average(xp, op, b, hp, wp, c, level);
  return out;
}

F32 bb_binned_inv_norms(const py::handle& x_obj, int hp, int wp, int hierarchy) {
  auto x = exact<float>(x_obj, "x", 2);
  if (hierarchy < 1 || hierarchy > DF_BBB_MAX_LEVELS) throw py::value_error("bb_binned_inv_norms: hierarchy 1..DF_BBB_MAX_LEVELS");
  if (hp < 1 || wp < 1 || x.shape(0) != static_cast<int64_t>(hp) * wp) throw py::value_error("bb_binned_inv_norms: rows != hp*wp");
  F32 out({static_cast<int64_t>(hp) * wp});
  const float* xp = x.data();
  float* op = out.mutable_data();
  const int64_t ch = x.shape(1);
  py::gil_scoped_release nogil;
  dinofeat::cpu::bb_binned_inv_norms(xp, hp, wp, ch, hierarchy, op);
  return out;
}

void bb_binned_box_gram(const py::handle& g0_obj, int r_lo0, int c_lo0, int h1, int w1, int h2, int w2, int level,
                        int r_lo, int r_hi, int c_lo, int c_hi, const py::handle& out_obj) {
  auto g0 = exact<float>(g0_obj, "g0", 2);
  auto out = exact<float>(out_obj, "out", 2);
  if (level < 1 || level >= DF_BBB_MAX_LEVELS || h1 < 1 || w1 < 1 || h2 < 1 || w2 < 1 || r_lo < 0 || r_hi > h1 ||
      r_lo >= r_hi || c_lo < 0 || c_hi > h2 || c_lo >= c_hi)
    throw py::value_error("bb_binned_box_gram: level or output rows outside the grids");
  const int rad = dinofeat::box_radius(level);
  // memory safety: G_0 must hold every row / column the boxes read, the output exactly the requested tile
  const int need_r0 = dinofeat::box_lo(r_lo, rad), need_r1 = dinofeat::box_hi(r_hi - 1, rad, h1) + 1;
  const int need_c0 = dinofeat::box_lo(c_lo, rad), need_c1 = dinofeat::box_hi(c_hi - 1, rad, h2) + 1;
  if (r_lo0 < 0 || c_lo0 < 0 || r_lo0 > need_r0 || c_lo0 > need_c0 ||
      g0.shape(0) < static_cast<int64_t>(need_r1 - r_lo0) * w1 || g0.shape(1) < static_cast<int64_t>(need_c1 - c_lo0) * w2)
    throw py::value_error("bb_binned_box_gram: the G_0 tile does not hold the boxes of the output tile");
  if (out.shape(0) != static_cast<int64_t>(r_hi - r_lo) * w1 || out.shape(1) != static_cast<int64_t>(c_hi - c_lo) * w2)
    throw py::value_error("bb_binned_box_gram: out must be ((r_hi - r_lo) * w1, (c_hi - c_lo) * w2)");
  const float* gp = g0.data();
  float* op = out.mutable_data();
  const int64_t ld0 = g0.shape(1);
  py::gil_scoped_release nogil;
  dinofeat::cpu::bb_binned_box_gram(gp, ld0, r_lo0, c_lo0, h1, w1, h2, w2, level, r_lo, r_hi, c_lo, c_hi, op);
}

void bb_binned_fold(const py::list& tiles_obj, const std::vector<int>& r_lo, const std::vector<int>& c_lo, int h1,
                    int w1, int h2, int w2, int a0, int a1, int b0, int b1, const py::handle& rs_obj,
                    const py::handle& cs_obj, const py::handle& rv_obj, const py::handle& ri_obj,
                    const py::handle& cv_obj, const py::handle& ci_obj) {
  const int n = static_cast<int>(tiles_obj.size());
  if (n < 1 || n > DF_BBB_MAX_LEVELS || static_cast<int>(r_lo.size()) != n || static_cast<int>(c_lo.size()) != n)
    throw py::value_error("bb_binned_fold: 1..DF_BBB_MAX_LEVELS tiles with one r_lo and c_lo each");
  if (h1 < 1 || w1 < 1 || h2 < 1 || w2 < 1 || a0 < 0 || a1 > h1 || a0 > a1 || b0 < 0 || b1 > h2 || b0 > b1)
    throw py::value_error("bb_binned_fold: output tile outside the grids");
  dinofeat::BinnedGeom g{};
  g.h1 = h1;
  g.w1 = w1;
  g.h2 = h2;
  g.w2 = w2;
  g.levels = n;
  std::vector<F32> keep;
  for (int k = 0; k < n; ++k) {
    keep.push_back(exact<float>(tiles_obj[k], "tiles[k]", 2));
    const auto& t = keep.back();
    // the tile must hold every cell the output tile reads (memory safety of the fold)
    const int64_t need_rows = static_cast<int64_t>(dinofeat::binned_halo_hi(a1, k, h1) - r_lo[k]) * w1;
    const int64_t need_cols = static_cast<int64_t>(dinofeat::binned_halo_hi(b1, k, h2) - c_lo[k]) * w2;
    if (a1 > a0 && b1 > b0 &&
        (r_lo[k] < 0 || c_lo[k] < 0 || r_lo[k] > dinofeat::binned_halo_lo(a0, k) ||
         c_lo[k] > dinofeat::binned_halo_lo(b0, k) || t.shape(0) < need_rows || t.shape(1) < need_cols))
      throw py::value_error("bb_binned_fold: G tile of level " + std::to_string(k) + " does not cover the output tile");
    g.r_lo[k] = r_lo[k];
    g.c_lo[k] = c_lo[k];
    g.ld[k] = t.shape(1);
    g.g[k] = t.data();
  }
  auto rs = exact<float>(rs_obj, "row_scale", 1);
  auto cs = exact<float>(cs_obj, "col_scale", 1);
  const int64_t t1 = static_cast<int64_t>(h1) * w1, t2 = static_cast<int64_t>(h2) * w2;
  const Running run(rv_obj, ri_obj, cv_obj, ci_obj, t1, t2, "bb_binned_fold");
  if (rs.shape(0) != t1 || cs.shape(0) != t2) throw py::value_error("bb_binned_fold: row_scale needs T1, col_scale T2");
  const float* rsp = rs.data();
  const float* csp = cs.data();
  py::gil_scoped_release nogil;
  dinofeat::cpu::bb_binned_fold(g, a0, a1, b0, b1, rsp, csp, run.row_val, run.row_idx, run.col_val, run.col_idx);
}

}  // namespace

PYBIND11_MODULE(_native, m) {
  m.doc() = "dinofeat CPU kernels (private; use dinofeat.kernels)";
  m.def("log_bin", &log_bin, py::arg("x"), py::arg("hp"), py::arg("wp"), py::arg("hierarchy"),
        py::arg("want_norm"), py::arg("out") = py::none(), py::arg("workspace") = py::none(),
        "x (B, T, C) float32 -> (out (B, T, C*(1+8h)) float32, norm (B, T) float32 or None)");
  m.def("row_norms", &row_norms, py::arg("x"), "x (T, C) float32 -> max(||x_r||, 1e-8) (T,) float32");
  m.def("bb_epilogue", &bb_epilogue, py::arg("s"), py::arg("row0"), py::arg("row_scale"), py::arg("col_scale"),
        py::arg("row_val"), py::arg("row_idx"), py::arg("col_val"), py::arg("col_idx"),
        "Fold one chunk s (rows, T2) of S (global rows row0..) into row results and running column maxima");
  m.def("box_average", &box_average, py::arg("x"), py::arg("hp"), py::arg("wp"), py::arg("level"),
        "x (B, T, C) float32 -> the 3^level box average (valid-count normalised) of each map, as log_bin's levels");
  m.def("bb_binned_inv_norms", &bb_binned_inv_norms, py::arg("x"), py::arg("hp"), py::arg("wp"),
        py::arg("hierarchy"), "keys (T, C) float32 -> 1 / max(||binned row||, 1e-8) (T,) float32");
  m.def("bb_binned_box_gram", &bb_binned_box_gram, py::arg("g0"), py::arg("r_lo0"), py::arg("c_lo0"), py::arg("h1"),
        py::arg("w1"), py::arg("h2"), py::arg("w2"), py::arg("level"), py::arg("r_lo"), py::arg("r_hi"),
        py::arg("c_lo"), py::arg("c_hi"), py::arg("out"),
        "G tile of a level from a G_0 tile with its box halo (A1 . A2^T without the level maps), into out");
  m.def("bb_binned_fold", &bb_binned_fold, py::arg("tiles"), py::arg("r_lo"), py::arg("c_lo"), py::arg("h1"),
        py::arg("w1"), py::arg("h2"), py::arg("w2"), py::arg("a0"), py::arg("a1"), py::arg("b0"), py::arg("b1"),
        py::arg("row_scale"), py::arg("col_scale"), py::arg("row_val"), py::arg("row_idx"), py::arg("col_val"),
        py::arg("col_idx"), "Fold one output tile of binned S from shifted Gram tiles into running maxima");
  m.def("max_threads", &dinofeat::cpu::max_threads, "OpenMP threads the kernels use");
}
