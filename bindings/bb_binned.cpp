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
    const int tid = thread_id();
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

void bb_binned_inv_norms(const float* x, int h, int w, int64_t ch, int levels_n, float* inv_norm) {
  // Level maps are box averages of x, made a band of grid rows at a time (the band plus its halo rows, ~1 MB),
  // so that no (T, C) level map is ever held (~0.5 MB here): box_average on a band treats its first / last rows as borders, which
  // is exact for the band's own rows whenever the halo rows exist (and the true border otherwise).
  const int64_t cells = static_cast<int64_t>(h) * w, row_len = static_cast<int64_t>(w) * ch;
  std::vector<double> sq(static_cast<size_t>(levels_n * cells));
  squared_norms(x, sq.data(), cells, ch);
  for (int k = 1; k < levels_n; ++k) {
    const int rad = box_radius(k);
    const int band = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(h, (int64_t{1} << 16) / std::max<int64_t>(row_len, 1))));
    std::vector<float> buf(static_cast<size_t>(std::min(h, band + 2 * rad) * row_len));
    for (int y0 = 0; y0 < h; y0 += band) {
      const int y1 = std::min(y0 + band, h), lo = std::max(y0 - rad, 0), hi = std::min(y1 + rad, h);
      box_average(x + lo * row_len, buf.data(), 1, hi - lo, w, ch, k);
      squared_norms(buf.data() + (y0 - lo) * row_len, sq.data() + k * cells + static_cast<int64_t>(y0) * w,
                    static_cast<int64_t>(y1 - y0) * w, ch);
    }
  }
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < cells; ++r) {
    const int y = static_cast<int>(r / w), x_ = static_cast<int>(r % w);
    const float n = std::max(static_cast<float>(std::sqrt(binned_sqnorm(sq.data(), y, x_, h, w, levels_n))), DF_COS_EPS);
    inv_norm[r] = 1.0f / n;
  }
}

void bb_binned_box_gram(const float* g0, int64_t ld0, int r_lo0, int c_lo0, int h1, int w1, int h2, int w2,
                        int level, int r_lo, int r_hi, int c_lo, int c_hi, float* out) {
  // G_level[i, j] = sum over the level's box of i (image 1) and of j (image 2) of G_0, divided once by the
  // product of the two valid counts: A1 . A2^T with A = box average of the keys, without forming A. The sums of a
  // box are taken in a fixed order (rows, then cells), so equal exact quotients give equal floats (ties stay ties).
  const int rad = box_radius(level);
  const int64_t cols0 = ld0, ncols = static_cast<int64_t>(c_hi - c_lo) * w2;
  const int64_t rows = static_cast<int64_t>(r_hi - r_lo) * w1;
#pragma omp parallel
  {
    std::vector<float> vs(static_cast<size_t>(cols0)), us(static_cast<size_t>(w2));
    float* v = vs.data();
    float* u = us.data();
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const int y1 = r_lo + static_cast<int>(r / w1), x1 = static_cast<int>(r % w1);
      const int ya = box_lo(y1, rad), yb = box_hi(y1, rad, h1), xa = box_lo(x1, rad), xb = box_hi(x1, rad, w1);
      bool first = true;
      for (int yy = ya; yy <= yb; ++yy) {  // image-1 box: sum of up to (2 rad + 1)^2 rows of G_0
        for (int xx = xa; xx <= xb; ++xx) {
          const float* src = g0 + (static_cast<int64_t>(yy - r_lo0) * w1 + xx) * ld0;
          if (first) {
            std::copy(src, src + cols0, v);
            first = false;
          } else {
#pragma omp simd
            for (int64_t c = 0; c < cols0; ++c) v[c] += src[c];
          }
        }
      }
      const float cnt1 = static_cast<float>((yb - ya + 1) * (xb - xa + 1));
      float* dst = out + r * ncols;
      for (int y2 = c_lo; y2 < c_hi; ++y2) {  // image-2 box on the summed row: grid rows, then cells
        const int qa = box_lo(y2, rad), qb = box_hi(y2, rad, h2);
        const float* first_row = v + static_cast<int64_t>(qa - c_lo0) * w2;
        std::copy(first_row, first_row + w2, u);
        for (int qq = qa + 1; qq <= qb; ++qq) {
          const float* s = v + static_cast<int64_t>(qq - c_lo0) * w2;
#pragma omp simd
          for (int x = 0; x < w2; ++x) u[x] += s[x];
        }
        float* d = dst + static_cast<int64_t>(y2 - c_lo) * w2;
        const int cy = qb - qa + 1;
        for (int x2 = 0; x2 < w2; ++x2) {
          const int pa = box_lo(x2, rad), pb = box_hi(x2, rad, w2);
          float acc = u[pa];
          for (int p = pa + 1; p <= pb; ++p) acc += u[p];
          d[x2] = acc / (cnt1 * static_cast<float>(cy * (pb - pa + 1)));
        }
      }
    }
  }
}

}  // namespace dinofeat::cpu
