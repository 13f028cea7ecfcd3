// ctypes entry points that launch dinofeat's CUDA kernels through the CPU shim, in the same sequence and with the
// same arguments as dinofeat/kernels/cuda.py (the GEMM between bb_normalize and bb_epilogue is done by the test).
// Build: g++ -std=c++20 -pthread -shared -fPIC -I<shim> -I<dinofeat/kernels> shim_harness.cpp
#include "cuda_shim.h"

// clang-format off
#include "log_bin.cu"
#include "best_buddies.cu"
#include "bb_binned.cu"
// clang-format on

using cuda_shim::launch;
using dinofeat::bf16;
using dinofeat::f16;
using dinofeat::i64;
using dinofeat::u64;

namespace {

template <class F>
void with_type(int code, F f) {  // 0 float32, 1 float16, 2 bfloat16
  if (code == 0) f(static_cast<float*>(nullptr));
  else if (code == 1) f(static_cast<f16*>(nullptr));
  else f(static_cast<bf16*>(nullptr));
}

unsigned int grid_for(i64 n, unsigned int block, unsigned int cap) {
  i64 g = (n + block - 1) / block;
  if (g < 1) g = 1;
  return static_cast<unsigned int>(g < cap ? g : cap);
}

}  // namespace

extern "C" {

// log_bin_hsum + log_bin_fused; fused launched with `block` threads and min(B*T, grid_cap) blocks.
int df_log_bin(const void* in, int in_t, void* out, int out_t, float* norm, int want_norm, int batch, int hp,
               int wp, int ch, int hierarchy, unsigned int block, unsigned int grid_cap) {
  const i64 n_h = static_cast<i64>(hierarchy - 1) * batch * hp * wp * ch;
  std::vector<float> hsum(static_cast<size_t>(n_h > 0 ? n_h : 1));
  float dummy = 0.0f;
  with_type(in_t, [&](auto* ti) {
    using Tin = std::remove_pointer_t<decltype(ti)>;
    const Tin* x = static_cast<const Tin*>(in);
    if (n_h > 0) launch(dim3(grid_for(n_h, 64, grid_cap)), dim3(64), dinofeat::log_bin_hsum<Tin>, x, hsum.data(), batch,
                        hp, wp, ch, hierarchy);
    with_type(out_t, [&](auto* to) {
      using Tout = std::remove_pointer_t<decltype(to)>;
      const i64 cells = static_cast<i64>(batch) * hp * wp;
      launch(dim3(static_cast<unsigned int>(cells < grid_cap ? cells : grid_cap)), dim3(block),
             dinofeat::log_bin_fused<Tin, Tout>, x, static_cast<const float*>(hsum.data()), static_cast<Tout*>(out),
             want_norm ? norm : &dummy, want_norm, batch, hp, wp, ch, hierarchy);
    });
  });
  return 0;
}

int df_bb_row_norm(const void* x, int in_t, float* norms, i64 rows, int ch, unsigned int block, unsigned int grid) {
  with_type(in_t, [&](auto* ti) {
    using Tin = std::remove_pointer_t<decltype(ti)>;
    launch(dim3(grid), dim3(block), dinofeat::bb_row_norm<Tin>, static_cast<const Tin*>(x), norms, rows, ch);
  });
  return 0;
}

int df_bb_normalize(const void* x, int in_t, const float* norms, void* out, int out_t, i64 rows, int ch,
                    unsigned int block, unsigned int grid) {
  with_type(in_t, [&](auto* ti) {
    using Tin = std::remove_pointer_t<decltype(ti)>;
    with_type(out_t, [&](auto* to) {
      using Tout = std::remove_pointer_t<decltype(to)>;
      launch(dim3(grid), dim3(block), dinofeat::bb_normalize<Tin, Tout>, static_cast<const Tin*>(x), norms,
             static_cast<Tout*>(out), rows, ch);
    });
  });
  return 0;
}

int df_bb_epilogue(const float* s, i64 ld, int rows, int cols, i64 row0, const float* row_scale,
                   const float* col_scale, int use_scale, u64* row_keys, u64* col_keys, unsigned int block) {
  const dim3 grid((cols + block - 1) / block, (rows + DF_BB_TILE_ROWS - 1) / DF_BB_TILE_ROWS);
  launch(grid, dim3(block), dinofeat::bb_epilogue, s, ld, rows, cols, row0, row_scale, col_scale, use_scale,
         row_keys, col_keys);
  return 0;
}

int df_bb_unpack(const u64* keys, i64 n, i64* index, float* value, unsigned int block, unsigned int grid) {
  launch(dim3(grid), dim3(block), dinofeat::bb_unpack_keys, keys, n, index, value);
  return 0;
}

int df_bb_mutual(const i64* nn1, const i64* nn2, i64 n1, bool* mask, unsigned int block, unsigned int grid) {
  launch(dim3(grid), dim3(block), dinofeat::bb_mutual, nn1, nn2, n1, mask);
  return 0;
}

// binned Best Buddies (bb_binned.cu), launched as best_buddies_binned_cupy does.
int df_bbb_box_average(const void* in, int in_t, float* out, int hp, int wp, int ch, int level, unsigned int block,
                       unsigned int grid_cap) {
  with_type(in_t, [&](auto* ti) {
    using Tin = std::remove_pointer_t<decltype(ti)>;
    launch(dim3(grid_for(static_cast<i64>(hp) * wp * ch, block, grid_cap)), dim3(block), dinofeat::bbb_box_average<Tin>,
           static_cast<const Tin*>(in), out, hp, wp, ch, level);
  });
  return 0;
}

// levels: `n_levels` (hp*wp, ch) float32 maps back to back; inv: (hp*wp,) float32.
int df_bbb_inv_norm(const float* levels, int n_levels, int hp, int wp, int ch, float* inv, unsigned int block,
                    unsigned int grid_cap) {
  const i64 cells = static_cast<i64>(hp) * wp;
  std::vector<double> sq(static_cast<size_t>(n_levels * cells));
  for (int k = 0; k < n_levels; ++k)
    launch(dim3(grid_for(cells, block, grid_cap)), dim3(block), dinofeat::bbb_cell_sqnorm, levels + k * cells * ch,
           sq.data() + k * cells, cells, ch);
  launch(dim3(grid_for(cells, block, grid_cap)), dim3(block), dinofeat::bbb_inv_norm,
         static_cast<const double*>(sq.data()), inv, hp, wp, n_levels);
  return 0;
}

int df_bbb_fused(const i64* geom, const float* g0, const float* g1, const float* g2, const float* g3, int a0, int a1,
                 int b0, int b1, const float* inv1, const float* inv2, u64* row_keys, u64* col_keys,
                 unsigned int block) {
  const i64 nrows = static_cast<i64>(a1 - a0) * geom[1], ncols = static_cast<i64>(b1 - b0) * geom[3];
  const dim3 grid(static_cast<unsigned int>((ncols + block - 1) / block),
                  static_cast<unsigned int>((nrows + DF_BBB_TILE_ROWS - 1) / DF_BBB_TILE_ROWS));
  launch(grid, dim3(block), dinofeat::bbb_fused, geom, g0, g1, g2, g3, a0, a1, b0, b1, inv1, inv2, row_keys,
         col_keys);
  return 0;
}

// atomicMax calls (shared and global memory) since the previous call of this function.
unsigned long long df_atomic_max_calls() { return cuda_shim::g_atomic_max_calls.exchange(0); }

// Host-side checks of the shared headers.
unsigned long long df_pack_key(float v, unsigned int idx) { return dinofeat::pack_key(v, idx); }
unsigned short df_float_to_half(float v) { return dinofeat::float_to_half_bits(v); }
float df_half_to_float(unsigned short h) { return dinofeat::half_bits_to_float(h); }
unsigned short df_float_to_bf16(float v) { return dinofeat::float_to_bf16_bits(v); }
int df_bin_offset(int bin, int* level, int* dy, int* dx) {
  const dinofeat::BinOffset o = dinofeat::bin_offset(bin);
  *level = o.level;
  *dy = o.dy;
  *dx = o.dx;
  return 0;
}

}  // extern "C"
