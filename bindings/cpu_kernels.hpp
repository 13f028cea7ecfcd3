// CPU (OpenMP) implementations of dinofeat's kernels, sharing per-element logic with the CUDA kernels through
// dinofeat/kernels/*_common.cuh. Exposed to Python by native.cpp as dinofeat._native.
#pragma once

#include <cstdint>

#include "bb_binned_common.cuh"

namespace dinofeat::cpu {

// in: (batch, hp*wp, channels) float32 row-major; out: (batch, hp*wp, channels*(1+8*hierarchy)) float32;
// norm: (batch, hp*wp) float32 L2 norm of every output row, or nullptr;
// workspace: (hierarchy-1) * batch * hp*wp * channels floats (the box-averaged maps), unused for hierarchy 1.
void log_bin(const float* in, float* out, float* norm, float* workspace, int64_t batch, int hp, int wp,
             int64_t channels, int hierarchy);

// norms[r] = max(||x_r||_2, 1e-8) for x: (rows, channels) float32 (sum of squares in double).
void row_norms(const float* x, float* norms, int64_t rows, int64_t channels);

// Fold one tile s: (rows, cols) float32 (leading dim ld) of global rows row0.. into
//   row_val/row_idx[r] = max/argmax over the tile's columns of row r (written; the index is tile-local: the caller
//                        merges the column tiles of a row, see dinofeat/kernels/cpu.py), and
//   col_val/col_idx[j] = running max/argmax over rows (updated; init to -inf / -1; row_idx is global row0 + r).
// Values are s[r, j] * row_scale[r] * col_scale[j] when the scales are given (nullptr = 1). Ties -> lowest index.
void bb_epilogue(const float* s, int64_t rows, int64_t cols, int64_t ld, int64_t row0, const float* row_scale,
                 const float* col_scale, float* row_val, int64_t* row_idx, float* col_val, int64_t* col_idx);

// pooled (batch, hp*wp, channels) = AvgPool2d(3^level, 1, 3^level // 2, count_include_pad=False) of in, as log_bin.
void box_average(const float* in, float* pooled, int64_t batch, int hp, int wp, int64_t channels, int level);

// out[r] = ||maps[r]||^2 in double for (n_rows, channels) float32 maps.
void squared_norms(const float* maps, double* out, int64_t n_rows, int64_t channels);

// Binned Best Buddies (bb_binned.cpp): fold the output tile image-1 grid rows [a0, a1) x image-2 grid rows [b0, b1)
// of S = binned1 . binned2^T * row_scale * col_scale (from the G tiles of `g`) into row_val/row_idx (T1, running
// over tiles of image-2 rows visited in increasing order) and col_val/col_idx (T2, running over image-1 rows visited
// in increasing order); strict '>' everywhere, so ties go to the lowest index. Init: -inf / -1.
void bb_binned_fold(const BinnedGeom& g, int a0, int a1, int b0, int b1, const float* row_scale,
                    const float* col_scale, float* row_val, int64_t* row_idx, float* col_val, int64_t* col_idx);

// inv_norm[cell] = 1 / max(||binned row of cell||, 1e-8) from the level maps levels[k]: (h*w, channels) float32.
// 1 / max(|binned row|, eps) of every cell from the keys x (T, C) on an h x w grid (levels made band by band).
void bb_binned_inv_norms(const float* x, int h, int w, int64_t channels, int levels_n, float* inv_norm);
// The G tile of `level` (image-1 grid rows [r_lo, r_hi) x image-2 grid rows [c_lo, c_hi), all cells, row-major) from
// a G_0 tile (image-1 rows from r_lo0, image-2 rows from c_lo0, leading dimension ld0) holding the box halo.
void bb_binned_box_gram(const float* g0, int64_t ld0, int r_lo0, int c_lo0, int h1, int w1, int h2, int w2, int level,
                        int r_lo, int r_hi, int c_lo, int c_hi, float* out);

int max_threads();
// This thread's number inside an OpenMP parallel region, 0 .. max_threads() - 1 (0 without OpenMP).
int thread_id();

// ||p||^2 of one row of `channels` floats, summed in double (vectorised): row_norms, squared_norms.
inline double squared_norm(const float* p, int64_t channels) {
  double s = 0.0;
#pragma omp simd reduction(+ : s)
  for (int64_t c = 0; c < channels; ++c) s += static_cast<double>(p[c]) * p[c];
  return s;
}

}  // namespace dinofeat::cpu
