// CPU Best-Buddies pieces: row norms and the epilogue that folds one GEMM chunk of S into running row/column
// max/argmax. The GEMM itself runs in the BLAS torch ships (called from dinofeat/kernels/cpu.py).
//
// Epilogue threading: the columns are split into one contiguous range per thread; each thread walks every row of
// the chunk over its range (vectorisable max / select loops), keeps per-row partial maxima, and owns its columns'
// running maxima outright. Row partials are merged in thread (= column) order with a strict '>', so ties resolve to
// the lowest column; rows are visited in increasing order with a strict '>' for columns, so ties resolve to the
// lowest row. Results are deterministic and independent of the thread count.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "best_buddies_common.cuh"
#include "cpu_kernels.hpp"

namespace dinofeat::cpu {

int max_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

int thread_id() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

void row_norms(const float* x, float* norms, int64_t rows, int64_t ch) {
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    norms[r] = std::max(static_cast<float>(std::sqrt(squared_norm(x + r * ch, ch))), DF_COS_EPS);
  }
}

void bb_epilogue(const float* s, int64_t rows, int64_t cols, int64_t ld, int64_t row0, const float* row_scale,
                 const float* col_scale, float* row_val, int64_t* row_idx, float* col_val, int64_t* col_idx) {
  if (rows <= 0 || cols <= 0) return;
  const int64_t min_cols_per_thread = 256;
  const int nt = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(max_threads(), cols / min_cols_per_thread)));
  const float neg_inf = -std::numeric_limits<float>::infinity();
  std::vector<float> part_val(static_cast<size_t>(nt * rows), neg_inf);
  std::vector<int64_t> part_idx(static_cast<size_t>(nt * rows), -1);

#pragma omp parallel num_threads(nt)
  {
    const int tid = thread_id();
    const int64_t j0 = cols * tid / nt, j1 = cols * (tid + 1) / nt, n = j1 - j0;
    std::vector<float> v(static_cast<size_t>(n));
    float* cv = col_val + j0;
    int64_t* ci = col_idx + j0;
    const float* cs = col_scale ? col_scale + j0 : nullptr;
    for (int64_t r = 0; r < rows; ++r) {
      const float* srow = s + r * ld + j0;
      const float a = row_scale ? row_scale[r] : 1.0f;
      float* vp = v.data();
      if (cs) {
#pragma omp simd
        for (int64_t j = 0; j < n; ++j) vp[j] = srow[j] * a * cs[j];
      } else if (row_scale) {
#pragma omp simd
        for (int64_t j = 0; j < n; ++j) vp[j] = srow[j] * a;
      } else {
#pragma omp simd
        for (int64_t j = 0; j < n; ++j) vp[j] = srow[j];
      }
      const int64_t gi = row0 + r;
      float m = neg_inf;
#pragma omp simd reduction(max : m)
      for (int64_t j = 0; j < n; ++j) m = std::max(m, vp[j]);
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) {
        const bool up = vp[j] > cv[j];
        cv[j] = up ? vp[j] : cv[j];
        ci[j] = up ? gi : ci[j];
      }
      int64_t arg = 0;
      while (arg < n && !(vp[arg] == m)) ++arg;  // first index of the maximum (m is one of the values)
      part_val[static_cast<size_t>(tid * rows + r)] = m;
      part_idx[static_cast<size_t>(tid * rows + r)] = j0 + arg;
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    float best = part_val[static_cast<size_t>(r)];
    int64_t arg = part_idx[static_cast<size_t>(r)];
    for (int t = 1; t < nt; ++t) {
      const float v = part_val[static_cast<size_t>(t * rows + r)];
      if (v > best) {
        best = v;
        arg = part_idx[static_cast<size_t>(t * rows + r)];
      }
    }
    row_val[r] = best;
    row_idx[r] = arg;
  }
}

}  // namespace dinofeat::cpu
