// Host/device-shared per-element logic of binned Best Buddies through shifted Gram matrices (issue 10).
//
// With the log-bin of SEMANTICS.md §4, bin b of cell i is the level-l(b) map (l = 0: raw keys, l = 1: the
// border-shrunk 3x3 average, ...) read at the clamped cell i + o_b, and the same o_b applies to both images, so
//
//     binned1[i] . binned2[j] = sum_b G_l(b)[clamp1(i + o_b), clamp2(j + o_b)],   G_l = L1_l . L2_l^T.
//
// A tile of G_l holds the image-1 grid rows [r_lo[l], ...) (all w1 cells of each row, row-major) by the image-2
// grid rows [c_lo[l], ...) (all w2 cells of each row), leading dimension ld[l]. binned_dot() sums the bins in bin
// order starting from 0.0f; the C++ kernel's vectorised loop adds the same terms in the same order (bit-identical).
#pragma once

#include "dtype_common.cuh"
#include "log_bin_common.cuh"

#define DF_BBB_MAX_LEVELS 4

namespace dinofeat {

struct BinnedGeom {
  int h1, w1;  // image-1 grid
  int h2, w2;  // image-2 grid
  int levels;  // hierarchy: bins 0 .. 8 * levels
  int r_lo[DF_BBB_MAX_LEVELS];  // first image-1 grid row held by the G tile of each level
  int c_lo[DF_BBB_MAX_LEVELS];  // first image-2 grid row held by the G tile of each level
  i64 ld[DF_BBB_MAX_LEVELS];    // leading dimension (floats) of each G tile
  const float* g[DF_BBB_MAX_LEVELS];
};

// Number of words of the flat geometry layout (the CUDA kernels take the geometry as an int64 array):
// [h1, w1, h2, w2, levels, r_lo[M], c_lo[M], ld[M]] with M = DF_BBB_MAX_LEVELS; pointers are passed separately.
#define DF_BBB_GEOM_WORDS (5 + 3 * DF_BBB_MAX_LEVELS)

DF_HD inline BinnedGeom binned_geom_from_words(const i64* w, const float* g0, const float* g1, const float* g2,
                                               const float* g3) {
  BinnedGeom g;
  g.h1 = static_cast<int>(w[0]);
  g.w1 = static_cast<int>(w[1]);
  g.h2 = static_cast<int>(w[2]);
  g.w2 = static_cast<int>(w[3]);
  g.levels = static_cast<int>(w[4]);
  for (int k = 0; k < DF_BBB_MAX_LEVELS; ++k) {
    g.r_lo[k] = static_cast<int>(w[5 + k]);
    g.c_lo[k] = static_cast<int>(w[5 + DF_BBB_MAX_LEVELS + k]);
    g.ld[k] = w[5 + 2 * DF_BBB_MAX_LEVELS + k];
  }
  g.g[0] = g0;
  g.g[1] = g1;
  g.g[2] = g2;
  g.g[3] = g3;
  return g;
}

// The G row of bin b for image-1 cell (y1, x1), positioned at the first cell of the image-2 grid row that bin b
// reads for output row y2: element [clamped(x2, o.dx, w2)] of it is the bin's term of binned1[(y1,x1)].binned2[(y2,x2)].
DF_HD inline const float* binned_bin_row(const BinnedGeom& g, const BinOffset& o, int y1, int x1, int y2) {
  const int k = o.level;
  const i64 row = static_cast<i64>(clamped(y1, o.dy, g.h1) - g.r_lo[k]) * g.w1 + clamped(x1, o.dx, g.w1);
  const i64 col = static_cast<i64>(clamped(y2, o.dy, g.h2) - g.c_lo[k]) * g.w2;
  return g.g[k] + row * g.ld[k] + col;
}

// binned1[(y1,x1)] . binned2[(y2,x2)] from the G tiles (bins summed in order, from 0.0f).
DF_HD inline float binned_dot(const BinnedGeom& g, int y1, int x1, int y2, int x2) {
  float acc = 0.0f;
  const int nb = num_bins(g.levels);
  for (int b = 0; b < nb; ++b) {
    const BinOffset o = bin_offset(b);
    acc += binned_bin_row(g, o, y1, x1, y2)[clamped(x2, o.dx, g.w2)];
  }
  return acc;
}

// Squared L2 norm of the binned row of cell (y, x) from per-cell squared norms of each level map
// (sq[level * h * w + cell]), summed in bin order in double.
DF_HD inline double binned_sqnorm(const double* sq, int y, int x, int h, int w, int levels) {
  double s = 0.0;
  const int nb = num_bins(levels);
  for (int b = 0; b < nb; ++b) {
    const BinOffset o = bin_offset(b);
    s += sq[static_cast<i64>(o.level) * h * w + static_cast<i64>(clamped(y, o.dy, h)) * w + clamped(x, o.dx, w)];
  }
  return s;
}

// First image-1 / image-2 grid row a G tile of `level` must hold for output rows starting at `row0`, and one past
// the last for output rows ending before `row1` (clamped to the grid of n rows).
DF_HD inline int binned_halo_lo(int row0, int level) { return max_i(row0 - pow3(level), 0); }
DF_HD inline int binned_halo_hi(int row1, int level, int n) { return min_i(row1 + pow3(level), n); }

}  // namespace dinofeat
