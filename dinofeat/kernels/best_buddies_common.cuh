// Host/device-shared logic of Best Buddies: order-preserving packed (value, index) keys.
//
// pack_key(v, i) = (ordered_bits(v) << 32) | (0xFFFFFFFF - i): comparing keys as unsigned 64-bit integers
// compares values first (total order of floats, -0 folded onto +0) and, on equal values, prefers the LOWEST
// index. So atomicMax over keys computes (max, first argmax), the tie rule of torch.max. Key 0 is below every
// real key (even -inf) and marks "nothing seen yet".
#pragma once

#include "dtype_common.cuh"

namespace dinofeat {

// torch CosineSimilarity eps: rows are divided by max(||x||, eps).
#define DF_COS_EPS 1e-8f

DF_HD inline unsigned int ordered_bits(float v) {
  unsigned int u = float_bits(v);
  if ((u & 0x7fffffffu) == 0u) u = 0u;  // -0 == +0
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

DF_HD inline float ordered_bits_to_float(unsigned int k) {
  return bits_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

DF_HD inline u64 pack_key(float v, unsigned int index) {
  return (static_cast<u64>(ordered_bits(v)) << 32) | static_cast<u64>(0xffffffffu - index);
}

DF_HD inline unsigned int key_index(u64 key) { return 0xffffffffu - static_cast<unsigned int>(key & 0xffffffffull); }

DF_HD inline float key_value(u64 key) { return ordered_bits_to_float(static_cast<unsigned int>(key >> 32)); }

DF_HD inline u64 max_u64(u64 a, u64 b) { return a > b ? a : b; }

#if defined(__CUDACC__) || defined(DF_CUDA_SHIM)
// Max of v over the 32 lanes of the warp (every lane gets it). All 32 lanes must call it (the epilogues of
// best_buddies.cu and bb_binned.cu reduce a row's keys with it: one shared atomicMax per warp and row).
__device__ inline u64 warp_max_u64(u64 v) {
  for (int offset = 16; offset > 0; offset >>= 1) v = max_u64(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// The key folding both epilogues share (bb_epilogue, bbb_fused): a block owns a tile of `tile_rows` rows by
// blockDim.x columns, keeps the tile's row keys in shared s_row, and each thread its column's key.
// Start of the block: s_row cleared (every thread calls it).
__device__ inline void tile_keys_clear(u64* s_row, int tile_rows) {
  for (int k = threadIdx.x; k < tile_rows; k += blockDim.x) s_row[k] = 0ull;
  __syncthreads();
}

// Row r of the tile: every thread of the block calls it with its key (0 = nothing); the warp's max is folded into
// s_row[r] with one shared atomicMax per warp.
__device__ inline void tile_keys_row(u64* s_row, int r, u64 rk) {
  rk = warp_max_u64(rk);
  if ((threadIdx.x & 31) == 0 && rk != 0ull) atomicMax(&s_row[r], rk);
}

// End of the block (every thread calls it): the thread's column key into *col_key (when active) and the tile's rn
// row keys into row_keys[0 .. rn).
__device__ inline void tile_keys_flush(const u64* s_row, int rn, u64* row_keys, bool active, u64* col_key, u64 ck) {
  if (active) atomicMax(col_key, ck);
  __syncthreads();
  for (int k = threadIdx.x; k < rn; k += blockDim.x) atomicMax(&row_keys[k], s_row[k]);
}
#endif

}  // namespace dinofeat
