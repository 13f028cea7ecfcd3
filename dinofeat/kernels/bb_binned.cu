// CUDA kernels of binned Best Buddies through shifted Gram tiles (issue 10). Launched from
// dinofeat/kernels/cuda.py (best_buddies_binned_cupy); the Gram tiles G_l = L1_l[rows] . L2_l^T come from cuBLAS
// (CuPy matmul) between bbb_inv_norm and bbb_fused. Per-element logic: bb_binned_common.cuh (shared with the C++).
//
//   bbb_box_average<Tin>:  out (T, C) fp32 = the 3^level box average (valid-count normalised) of in (T, C) on an
//                          (hp, wp) grid (level 0: a cast). Grid-stride, 1-D launch.
//   bbb_cell_sqnorm:       sq[cell] = ||map[cell]||^2 in double, one thread per cell (grid-stride).
//   bbb_inv_norm:          inv[cell] = 1 / max(sqrt(sum over bins of sq[level][clamped cell]), 1e-8).
//   bbb_fused:             one output tile (image-1 grid rows [a0, a1) x image-2 grid rows [b0, b1)): the 1+8h shifted
//                          Gram terms summed per element (binned_dot), scaled by inv1[i] * inv2[j], folded into
//                          packed (value, index) keys row_keys[i] / col_keys[j] with 64-bit atomicMax (ties -> lowest
//                          index; unpacked by bb_unpack_keys). Row keys are reduced within the warp first (xor
//                          shuffles, warp_max_u64), so each warp does one shared atomicMax per row instead of 32.
//                          Geometry: int64 words (DF_BBB_GEOM_WORDS) + the level tiles g0..g3 (unused ones may repeat
//                          g0). Grid (ceil(ncols / blockDim.x), ceil(nrows / DF_BBB_TILE_ROWS)); blockDim.x a multiple
//                          of 32 (full warps), <= DF_BBB_MAX_THREADS.
#include "bb_binned_common.cuh"
#include "best_buddies_common.cuh"
#include "dtype_common.cuh"
#include "log_bin_common.cuh"

#define DF_BBB_MAX_THREADS 256
#define DF_BBB_TILE_ROWS 32

namespace dinofeat {

template <class Tin>
__global__ void bbb_box_average(const Tin* __restrict__ in, float* __restrict__ out, int hp, int wp, int channels,
                                int level) {
  const i64 total = static_cast<i64>(hp) * wp * channels;
  const i64 stride = static_cast<i64>(gridDim.x) * blockDim.x;
  const int rad = box_radius(level);
  for (i64 i = static_cast<i64>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
    const int c = static_cast<int>(i % channels);
    const i64 cell = i / channels;
    const int y = static_cast<int>(cell / wp), x = static_cast<int>(cell % wp);
    float s = 0.0f;
    for (int yy = box_lo(y, rad); yy <= box_hi(y, rad, hp); ++yy)
      for (int xx = box_lo(x, rad); xx <= box_hi(x, rad, wp); ++xx)
        s += to_float(in[(static_cast<i64>(yy) * wp + xx) * channels + c]);
    out[i] = s / static_cast<float>(box_count(y, x, rad, hp, wp));
  }
}

__global__ void bbb_cell_sqnorm(const float* __restrict__ map, double* __restrict__ sq, i64 cells, int channels) {
  const i64 stride = static_cast<i64>(gridDim.x) * blockDim.x;
  for (i64 r = static_cast<i64>(blockIdx.x) * blockDim.x + threadIdx.x; r < cells; r += stride) {
    const float* p = map + r * channels;
    double s = 0.0;
    for (int c = 0; c < channels; ++c) s += static_cast<double>(p[c]) * p[c];
    sq[r] = s;
  }
}

__global__ void bbb_inv_norm(const double* __restrict__ sq, float* __restrict__ inv, int hp, int wp, int levels) {
  const i64 cells = static_cast<i64>(hp) * wp;
  const i64 stride = static_cast<i64>(gridDim.x) * blockDim.x;
  for (i64 r = static_cast<i64>(blockIdx.x) * blockDim.x + threadIdx.x; r < cells; r += stride) {
    const double s = binned_sqnorm(sq, static_cast<int>(r / wp), static_cast<int>(r % wp), hp, wp, levels);
    inv[r] = 1.0f / fmaxf(static_cast<float>(sqrt(s)), DF_COS_EPS);
  }
}

__global__ void bbb_fused(const i64* __restrict__ geom, const float* g0, const float* g1, const float* g2,
                          const float* g3, int a0, int a1, int b0, int b1, const float* __restrict__ inv1,
                          const float* __restrict__ inv2, u64* __restrict__ row_keys, u64* __restrict__ col_keys) {
  __shared__ u64 s_row[DF_BBB_TILE_ROWS];
  const BinnedGeom g = binned_geom_from_words(geom, g0, g1, g2, g3);
  const i64 i_first = static_cast<i64>(a0) * g.w1, nrows = static_cast<i64>(a1 - a0) * g.w1;
  const i64 j_first = static_cast<i64>(b0) * g.w2, ncols = static_cast<i64>(b1 - b0) * g.w2;
  const i64 jl = static_cast<i64>(blockIdx.x) * blockDim.x + threadIdx.x;
  const i64 r0 = static_cast<i64>(blockIdx.y) * DF_BBB_TILE_ROWS;
  const int rn = static_cast<int>(nrows - r0 < DF_BBB_TILE_ROWS ? nrows - r0 : DF_BBB_TILE_ROWS);
  tile_keys_clear(s_row, DF_BBB_TILE_ROWS);
  const bool active = jl < ncols;
  const i64 j = j_first + (active ? jl : 0);
  const int y2 = static_cast<int>(j / g.w2), x2 = static_cast<int>(j % g.w2);
  const float cs = active ? inv2[j] : 0.0f;
  u64 ck = 0ull;
  for (int r = 0; r < rn; ++r) {  // every thread runs every row (rn is uniform): the shuffles need all 32 lanes
    u64 rk = 0ull;                // 0 = "nothing", below every real key
    if (active) {
      const i64 i = i_first + r0 + r;
      const float v = binned_dot(g, static_cast<int>(i / g.w1), static_cast<int>(i % g.w1), y2, x2) * inv1[i] * cs;
      ck = max_u64(ck, pack_key(v, static_cast<unsigned int>(i)));
      rk = pack_key(v, static_cast<unsigned int>(j));
    }
    tile_keys_row(s_row, r, rk);
  }
  tile_keys_flush(s_row, rn, row_keys + i_first + r0, active, col_keys + j, ck);
}

}  // namespace dinofeat
