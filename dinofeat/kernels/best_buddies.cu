// CUDA kernels of Best Buddies (SEMANTICS.md §6). Launched from dinofeat/kernels/cuda.py; the GEMM of each chunk of
// S = n1 @ n2.T is done by cuBLAS (CuPy) between bb_normalize and bb_epilogue.
//
//   bb_row_norm<Tin>:          one block per row (grid-stride): norms[r] = max(||x_r||_2, 1e-8) in fp32.
//                              blockDim.x must be a power of two <= DF_BB_MAX_THREADS.
//   bb_normalize<Tin, Tout>:   out = x / norms[row], cast to the GEMM input type (fp32 / fp16 / bf16).
//   bb_epilogue:               consumes one fp32 chunk S[rows, cols] (leading dim ld) of global rows row0.., and
//                              folds it into packed (value, index) keys: row_keys[row0 + r] (argmax over columns) and
//                              col_keys[j] (argmax over rows) with 64-bit atomicMax (ties -> lowest index).
//                              Row keys are reduced within the warp first (xor shuffles), so each warp does one
//                              shared atomicMax per row instead of 32. Optional per-row / per-column scales
//                              (S * rs[r] * cs[j]) when use_scale != 0 (the fp32 path: no normalised copies).
//                              Grid (ceil(cols / blockDim.x), ceil(rows / DF_BB_TILE_ROWS)); blockDim.x must be a
//                              multiple of 32 (full warps).
//
// Ties across chunks: a tie (equal float value) always resolves to the lowest index, in every chunk and across
// chunks, because keys compare exactly. What is NOT guaranteed is that cuBLAS computes the same float for the same
// dot product in two GEMMs of different shapes (chunk sizes select different kernels and summation orders): two
// products that are mathematically equal may differ by an ulp and then the larger wins, not the lower index.
// Exact ties are only guaranteed where the products are exact in fp32 (e.g. small integers).
//   bb_unpack_keys:            keys -> (int64 index, fp32 value); key 0 (nothing seen) -> (-1, -inf).
//   bb_mutual:                 mask[i] = nn1[i] >= 0 && nn2[nn1[i]] == i.
#include "best_buddies_common.cuh"
#include "dtype_common.cuh"

#define DF_BB_MAX_THREADS 256
#define DF_BB_TILE_ROWS 32

namespace dinofeat {

template <class Tin>
__global__ void bb_row_norm(const Tin* __restrict__ x, float* __restrict__ norms, i64 rows, int channels) {
  __shared__ float red[DF_BB_MAX_THREADS];
  for (i64 r = blockIdx.x; r < rows; r += gridDim.x) {  // uniform per block
    const Tin* row = x + r * channels;
    float ss = 0.0f;
    for (int c = threadIdx.x; c < channels; c += blockDim.x) {
      const float v = to_float(row[c]);
      ss += v * v;
    }
    const float total = block_sum(red, ss);
    if (threadIdx.x == 0) norms[r] = fmaxf(sqrtf(total), DF_COS_EPS);
    __syncthreads();  // red is rewritten by the next row
  }
}

template <class Tin, class Tout>
__global__ void bb_normalize(const Tin* __restrict__ x, const float* __restrict__ norms, Tout* __restrict__ out,
                             i64 rows, int channels) {
  const i64 total = rows * channels;
  const i64 stride = static_cast<i64>(gridDim.x) * blockDim.x;
  for (i64 i = static_cast<i64>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
    out[i] = from_float<Tout>(to_float(x[i]) / norms[i / channels]);
  }
}

__global__ void bb_epilogue(const float* __restrict__ s, i64 ld, int rows, int cols, i64 row0,
                            const float* __restrict__ row_scale, const float* __restrict__ col_scale, int use_scale,
                            u64* __restrict__ row_keys, u64* __restrict__ col_keys) {
  __shared__ u64 s_row[DF_BB_TILE_ROWS];
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  const int r0 = blockIdx.y * DF_BB_TILE_ROWS;
  const int rn = min_i(DF_BB_TILE_ROWS, rows - r0);  // uniform over the block
  const bool active = j < cols;
  tile_keys_clear(s_row, DF_BB_TILE_ROWS);
  const float cs = (use_scale && active) ? col_scale[j] : 1.0f;
  u64 ck = 0ull;
  for (int r = 0; r < rn; ++r) {  // every thread runs every row: the shuffles need all 32 lanes
    u64 rk = 0ull;                // 0 = "nothing", below every real key
    if (active) {
      float v = s[static_cast<i64>(r0 + r) * ld + j];
      if (use_scale) v = v * row_scale[r0 + r] * cs;
      ck = max_u64(ck, pack_key(v, static_cast<unsigned int>(row0 + r0 + r)));
      rk = pack_key(v, static_cast<unsigned int>(j));
    }
    tile_keys_row(s_row, r, rk);
  }
  tile_keys_flush(s_row, rn, row_keys + row0 + r0, active, col_keys + (active ? j : 0), ck);
}

__global__ void bb_unpack_keys(const u64* __restrict__ keys, i64 n, i64* __restrict__ index,
                               float* __restrict__ value) {
  const i64 stride = static_cast<i64>(gridDim.x) * blockDim.x;
  for (i64 i = static_cast<i64>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const u64 k = keys[i];
    index[i] = k ? static_cast<i64>(key_index(k)) : -1;
    value[i] = k ? key_value(k) : -bits_float(0x7f800000u);
  }
}

__global__ void bb_mutual(const i64* __restrict__ nn1, const i64* __restrict__ nn2, i64 n1, bool* __restrict__ mask) {
  const i64 stride = static_cast<i64>(gridDim.x) * blockDim.x;
  for (i64 i = static_cast<i64>(blockIdx.x) * blockDim.x + threadIdx.x; i < n1; i += stride) {
    const i64 j = nn1[i];
    mask[i] = j >= 0 && nn2[j] == i;
  }
}

}  // namespace dinofeat
