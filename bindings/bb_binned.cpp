// CPU binned Best Buddies through shifted Gram tiles (issue 10): the fused shift-add + scale + max/argmax fold of
// one (image-1 rows x image-2 rows) output tile, and the binned row norms. The Gram tiles themselves come from the
// BLAS torch ships (dinofeat/kernels/cpu.py); per-element indexing is dinofeat/kernels/bb_binned_common.cuh, shared
// with the CUDA kernel.
//
// Threading: output cells of image 1 are split into one contiguous range per thread. Each thread keeps partial
// column maxima over the tile's image-2 cells; partials are merged in thread (= row) order with a strict '>', so ties
// resolve to the lowest row, and row maxima are scanned in increasing column order with a strict '>' (lowest column).
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "bb_binned_common.cuh"
#include "best_buddies_common.cuh"
#include "cpu_kernels.hpp"

namespace dinofeat::cpu {

namespace {

// acc[x2] += row[clamped(x2, dx, w2)] for x2 in 0..w2-1 (the interior is a contiguous, vectorisable run).
inline void add_shifted(float* acc, const float* row, int dx, int w2) {
  const int lo = std::min(std::max(-dx, 0), w2);       // x2 < lo reads row[0]
  const int hi = std::max(std::min(w2 - dx, w2), lo);  // x2 >= hi reads row[w2 - 1]
  for (int x = 0; x < lo; ++x) acc[x] += row[0];
  const float* src = row + dx;
#pragma omp simd
  for (int x = lo; x < hi; ++x) acc[x] += src[x];
  for (int x = hi; x < w2; ++x) acc[x] += row[w2 - 1];
}

}  // namespace

void bb_binned_fold(const BinnedGeom& g, int a0, int a1, int b0, int b1, const float* row_scale,
                    const float* col_scale, float* row_val, int64_t* row_idx, float* col_val, int64_t* col_idx) {
  const int64_t i0 = static_cast<int64_t>(a0) * g.w1, i1 = static_cast<int64_t>(a1) * g.w1;
  const int64_t j0 = static_cast<int64_t>(b0) * g.w2, ncols = static_cast<int64_t>(b1 - b0) * g.w2;
  if (i1 <= i0 || ncols <= 0) return;
  const int nt = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(max_threads(), i1 - i0)));
  const float neg_inf = -std::numeric_limits<float>::infinity();
  std::vector<float> part_val(static_cast<size_t>(nt * ncols), neg_inf);
  std::vector<int64_t> part_idx(static_cast<size_t>(nt * ncols), -1);
  const int nb = num_bins(g.levels);
  BinOffset offs[1 + 8 * DF_BBB_MAX_LEVELS];
  for (int b = 0; b < nb; ++b) offs[b] = bin_offset(b);

#pragma omp parallel num_threads(nt)
  {
#ifdef _OPENMP
    const int tid = omp_get_thread_num();
#else
    const int tid = 0;
#endif
    const int64_t lo = i0 + (i1 - i0) * tid / nt, hi = i0 + (i1 - i0) * (tid + 1) / nt;
    std::vector<float> acc(static_cast<size_t>(g.w2));
    float* pv = part_val.data() + static_cast<size_t>(tid) * ncols;
    int64_t* pi = part_idx.data() + static_cast<size_t>(tid) * ncols;
    for (int64_t i = lo; i < hi; ++i) {
      const int y1 = static_cast<int>(i / g.w1), x1 = static_cast<int>(i % g.w1);
      const float a = row_scale[i];
      float best = neg_inf;
      int64_t arg = -1;
      for (int y2 = b0; y2 < b1; ++y2) {
        std::fill(acc.begin(), acc.end(), 0.0f);
        for (int b = 0; b < nb; ++b) add_shifted(acc.data(), binned_bin_row(g, offs[b], y1, x1, y2), offs[b].dx, g.w2);
        const int64_t jb = static_cast<int64_t>(y2) * g.w2;  // global index of (y2, 0)
        const float* cs = col_scale + jb;
        float* cv = pv + (jb - j0);
        int64_t* ci = pi + (jb - j0);
        float* v = acc.data();
#pragma omp simd
        for (int x = 0; x < g.w2; ++x) v[x] = v[x] * a * cs[x];
        float m = neg_inf;
#pragma omp simd reduction(max : m)
        for (int x = 0; x < g.w2; ++x) m = std::max(m, v[x]);
        if (m > best) {
          int x = 0;
          while (!(v[x] == m)) ++x;  // first index of the maximum
          best = m;
          arg = jb + x;
        }
#pragma omp simd
        for (int x = 0; x < g.w2; ++x) {
          const bool up = v[x] > cv[x];
          cv[x] = up ? v[x] : cv[x];
          ci[x] = up ? i : ci[x];
        }
      }
      if (best > row_val[i]) {  // tiles of image-2 rows come in increasing order: ties keep the lower column
        row_val[i] = best;
        row_idx[i] = arg;
      }
    }
  }
  for (int t = 0; t < nt; ++t) {  // threads hold increasing row ranges: strict '>' keeps the lowest row
    const float* pv = part_val.data() + static_cast<size_t>(t) * ncols;
    const int64_t* pi = part_idx.data() + static_cast<size_t>(t) * ncols;
    for (int64_t j = 0; j < ncols; ++j) {
      if (pv[j] > col_val[j0 + j]) {
        col_val[j0 + j] = pv[j];
        col_idx[j0 + j] = pi[j];
      }
    }
  }
}

void bb_binned_inv_norms(const float* const* levels, int levels_n, int h, int w, int64_t ch, float* inv_norm) {
  const int64_t cells = static_cast<int64_t>(h) * w;
  std::vector<double> sq(static_cast<size_t>(levels_n * cells));
  for (int k = 0; k < levels_n; ++k) squared_norms(levels[k], sq.data() + k * cells, cells, ch);
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < cells; ++r) {
    const int y = static_cast<int>(r / w), x = static_cast<int>(r % w);
    const float n = std::max(static_cast<float>(std::sqrt(binned_sqnorm(sq.data(), y, x, h, w, levels_n))), DF_COS_EPS);
    inv_norm[r] = 1.0f / n;
  }
}

}  // namespace dinofeat::cpu
