// CPU (OpenMP) implementations of dinofeat's kernels, sharing per-element logic with the CUDA kernels through
// dinofeat/kernels/*_common.cuh. Exposed to Python by native.cpp as dinofeat._native.
#pragma once

#include <cstdint>

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

int max_threads();

}  // namespace dinofeat::cpu
