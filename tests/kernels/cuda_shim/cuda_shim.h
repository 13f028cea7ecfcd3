// CUDA CPU-execution shim: compile dinofeat's .cu kernels with a plain C++20 compiler and run them on the host.
//
// Model: one host std::thread per CUDA thread of a block; the blocks of a grid run one after another (each thread
// loops over all blocks, with a barrier between blocks). __syncthreads is a std::barrier over the block's threads,
// __shared__ variables are function-local statics (shared by the block's threads, reused block after block), and the
// atomics are std::atomic_ref operations. See README.md for what this does not model.
#pragma once

#define DF_CUDA_SHIM 1

#include <math.h>

#include <atomic>
#include <barrier>
#include <cstdint>
#include <cstring>
#include <thread>
#include <type_traits>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static

struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};

namespace cuda_shim {
inline thread_local dim3 tl_thread_idx;
inline thread_local dim3 tl_block_idx;
inline dim3 g_block_dim;
inline dim3 g_grid_dim;
inline std::barrier<>* g_barrier = nullptr;
inline std::vector<unsigned long long> g_shfl_slots;  // one exchange slot per thread of the running block
}  // namespace cuda_shim

#define threadIdx (::cuda_shim::tl_thread_idx)
#define blockIdx (::cuda_shim::tl_block_idx)
#define blockDim (::cuda_shim::g_block_dim)
#define gridDim (::cuda_shim::g_grid_dim)

inline void __syncthreads() { ::cuda_shim::g_barrier->arrive_and_wait(); }

#define warpSize 32

// Warp shuffle (xor butterfly) through a per-block exchange buffer between two block barriers: the WHOLE block must
// call it the same number of times (uniform control flow), which dinofeat's kernels guarantee where they shuffle.
// Warps are 32 consecutive linear thread ids; a source lane outside the block returns the caller's own value.
template <class T>
inline T __shfl_xor_sync(unsigned int /*mask*/, T v, int lane_mask) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>);
  const unsigned int tid = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  const unsigned int n = blockDim.x * blockDim.y * blockDim.z;
  unsigned long long bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  ::cuda_shim::g_shfl_slots[tid] = bits;
  __syncthreads();
  const unsigned int src = (tid & ~31u) | ((tid & 31u) ^ (static_cast<unsigned int>(lane_mask) & 31u));
  T out = v;
  if (src < n) std::memcpy(&out, &::cuda_shim::g_shfl_slots[src], sizeof(T));
  __syncthreads();
  return out;
}

namespace cuda_shim {
inline std::atomic<unsigned long long> g_atomic_max_calls{0};  // atomicMax calls since the last reset (any memory)
}  // namespace cuda_shim

template <class T>
inline T shim_atomic_max(T* address, T val) {
  ::cuda_shim::g_atomic_max_calls.fetch_add(1, std::memory_order_relaxed);
  std::atomic_ref<T> ref(*address);
  T old = ref.load();
  while (old < val && !ref.compare_exchange_weak(old, val)) {
  }
  return old;
}

inline unsigned long long atomicMax(unsigned long long* a, unsigned long long v) { return shim_atomic_max(a, v); }
inline unsigned int atomicMax(unsigned int* a, unsigned int v) { return shim_atomic_max(a, v); }
inline int atomicMax(int* a, int v) { return shim_atomic_max(a, v); }
inline long long atomicMax(long long* a, long long v) { return shim_atomic_max(a, v); }
inline float atomicAdd(float* a, float v) { return std::atomic_ref<float>(*a).fetch_add(v); }
inline int atomicAdd(int* a, int v) { return std::atomic_ref<int>(*a).fetch_add(v); }
inline unsigned int atomicAdd(unsigned int* a, unsigned int v) { return std::atomic_ref<unsigned int>(*a).fetch_add(v); }
inline unsigned long long atomicAdd(unsigned long long* a, unsigned long long v) {
  return std::atomic_ref<unsigned long long>(*a).fetch_add(v);
}

namespace cuda_shim {

// Run kernel<<<grid, block>>>(args...) to completion on the host.
template <class Kernel, class... Args>
void launch(dim3 grid, dim3 block, Kernel kernel, Args... args) {
  const unsigned int nthreads = block.x * block.y * block.z;
  g_block_dim = block;
  g_grid_dim = grid;
  std::barrier<> bar(static_cast<std::ptrdiff_t>(nthreads));
  g_barrier = &bar;
  g_shfl_slots.assign(nthreads, 0ull);
  std::vector<std::thread> threads;
  threads.reserve(nthreads);
  for (unsigned int tid = 0; tid < nthreads; ++tid) {
    threads.emplace_back([=, &bar]() {
      tl_thread_idx = dim3(tid % block.x, (tid / block.x) % block.y, tid / (block.x * block.y));
      for (unsigned int bz = 0; bz < grid.z; ++bz)
        for (unsigned int by = 0; by < grid.y; ++by)
          for (unsigned int bx = 0; bx < grid.x; ++bx) {
            tl_block_idx = dim3(bx, by, bz);
            kernel(args...);
            bar.arrive_and_wait();  // the block is done before any thread starts the next one
          }
    });
  }
  for (auto& t : threads) t.join();
  g_barrier = nullptr;
}

}  // namespace cuda_shim
