// CUDA kernels of the log-bin descriptor (SEMANTICS.md §4). Launched from dinofeat/kernels/cuda.py.
//
//   log_bin_hsum<Tin>:        horizontal box sums of every level >= 1 (separable pass 1, fp32 scratch
//                             hsum[level-1][b][y][x][c]); grid-stride, 1-D launch.
//   log_bin_fused<Tin, Tout>: one block per token (grid-stride over B*T tokens), threads over channels: writes all
//                             bins (level 0 gathered from the input, levels >= 1 finished from hsum with the vertical
//                             pass of the clamped neighbour's box), and optionally the fp32 L2 norm of the output row.
//                             blockDim.x must be a power of two <= DF_LOG_BIN_MAX_THREADS.
#include "dtype_common.cuh"
#include "log_bin_common.cuh"

#define DF_LOG_BIN_MAX_THREADS 256

namespace dinofeat {

template <class Tin>
__global__ void log_bin_hsum(const Tin* __restrict__ in, float* __restrict__ hsum, int batch, int hp, int wp,
                             int channels, int hierarchy) {
  const i64 total = static_cast<i64>(hierarchy - 1) * batch * hp * wp * channels;
  const i64 stride = static_cast<i64>(gridDim.x) * blockDim.x;
  for (i64 i = static_cast<i64>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
    const int c = static_cast<int>(i % channels);
    i64 r = i / channels;
    const int x = static_cast<int>(r % wp);
    r /= wp;
    const int y = static_cast<int>(r % hp);
    r /= hp;
    const int b = static_cast<int>(r % batch);
    const int level = 1 + static_cast<int>(r / batch);
    const int rad = box_radius(level);
    const Tin* row = in + (static_cast<i64>(b) * hp + y) * wp * channels + c;
    float s = 0.0f;
    for (int xx = box_lo(x, rad); xx <= box_hi(x, rad, wp); ++xx) s += to_float(row[static_cast<i64>(xx) * channels]);
    hsum[i] = s;
  }
}

template <class Tin, class Tout>
__global__ void log_bin_fused(const Tin* __restrict__ in, const float* __restrict__ hsum, Tout* __restrict__ out,
                              float* __restrict__ norm_out, int want_norm, int batch, int hp, int wp, int channels,
                              int hierarchy) {
  __shared__ float red[DF_LOG_BIN_MAX_THREADS];
  const int nb = num_bins(hierarchy);
  const i64 tokens = static_cast<i64>(hp) * wp;
  const i64 cells = static_cast<i64>(batch) * tokens;
  for (i64 bt = blockIdx.x; bt < cells; bt += gridDim.x) {  // uniform per block: __syncthreads below is safe
    const int b = static_cast<int>(bt / tokens);
    const int t = static_cast<int>(bt % tokens);
    const int y = t / wp;
    const int x = t % wp;
    Tout* orow = out + bt * nb * channels;
    float ss = 0.0f;
    for (int bin = 0; bin < nb; ++bin) {
      const BinOffset o = bin_offset(bin);
      const int cy = clamped(y, o.dy, hp);
      const int cx = clamped(x, o.dx, wp);
      Tout* dst = orow + static_cast<i64>(bin) * channels;
      if (o.level == 0) {
        const Tin* src = in + ((static_cast<i64>(b) * hp + cy) * wp + cx) * channels;
        for (int c = threadIdx.x; c < channels; c += blockDim.x) {
          const float v = to_float(src[c]);
          ss += v * v;
          dst[c] = from_float<Tout>(v);
        }
      } else {
        const int rad = box_radius(o.level);
        const int y0 = box_lo(cy, rad);
        const int y1 = box_hi(cy, rad, hp);
        const float count = static_cast<float>(box_count(cy, cx, rad, hp, wp));
        const float* hs = hsum + ((static_cast<i64>(o.level - 1) * batch + b) * tokens + cx) * channels;
        const i64 row_stride = static_cast<i64>(wp) * channels;
        for (int c = threadIdx.x; c < channels; c += blockDim.x) {
          float s = 0.0f;
          for (int yy = y0; yy <= y1; ++yy) s += hs[yy * row_stride + c];
          const float v = s / count;
          ss += v * v;
          dst[c] = from_float<Tout>(v);
        }
      }
    }
    if (want_norm) {
      const float total = block_sum(red, ss);
      if (threadIdx.x == 0) norm_out[bt] = sqrtf(total);
      __syncthreads();  // red is rewritten by the next token
    }
  }
}

}  // namespace dinofeat
