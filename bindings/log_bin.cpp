// CPU log-bin: box averages of every level >= 1 by two separable passes (float32, into the caller's workspace),
// then one contiguous copy
// of C channels per (token, bin). The L2 norm of an output row is the sqrt of the sum of the squared norms of its
// 1+8h source rows (precomputed per cell and level, in double).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "cpu_kernels.hpp"
#include "log_bin_common.cuh"

namespace dinofeat::cpu {

// pooled[b, y, x, :] = AvgPool(3^level, stride 1, count_include_pad=False) of in[b] (channels-last), one output
// row at a time: vertical window sums into a per-thread row buffer, then horizontal window sums / valid count.
void box_average(const float* in, float* pooled, int64_t batch, int hp, int wp, int64_t ch, int level) {
  const int rad = box_radius(level);
  const int64_t row_len = static_cast<int64_t>(wp) * ch;
  const int64_t plane = static_cast<int64_t>(hp) * row_len;
#pragma omp parallel
  {
    std::vector<float> vs(static_cast<size_t>(row_len));
    float* v = vs.data();
#pragma omp for collapse(2) schedule(static)
    for (int64_t b = 0; b < batch; ++b) {
      for (int y = 0; y < hp; ++y) {
        const int y0 = box_lo(y, rad), y1 = box_hi(y, rad, hp);
        const float* src = in + b * plane + static_cast<int64_t>(y0) * row_len;
        std::memcpy(v, src, sizeof(float) * static_cast<size_t>(row_len));
        for (int yy = y0 + 1; yy <= y1; ++yy) {
          const float* s = in + b * plane + static_cast<int64_t>(yy) * row_len;
#pragma omp simd
          for (int64_t i = 0; i < row_len; ++i) v[i] += s[i];
        }
        float* dst = pooled + b * plane + static_cast<int64_t>(y) * row_len;
        for (int x = 0; x < wp; ++x) {
          float* d = dst + static_cast<int64_t>(x) * ch;
          const int x0 = box_lo(x, rad), x1 = box_hi(x, rad, wp);
          std::memcpy(d, v + static_cast<int64_t>(x0) * ch, sizeof(float) * static_cast<size_t>(ch));
          for (int xx = x0 + 1; xx <= x1; ++xx) {
            const float* s = v + static_cast<int64_t>(xx) * ch;
#pragma omp simd
            for (int64_t c = 0; c < ch; ++c) d[c] += s[c];
          }
          const float count = static_cast<float>(box_count(y, x, rad, hp, wp));
#pragma omp simd
          for (int64_t c = 0; c < ch; ++c) d[c] /= count;
        }
      }
    }
  }
}

namespace {

// Copy n floats; the output is written once and not read back soon, so use streaming (non-temporal) stores when
// the destination is 16-byte aligned: no read-for-ownership of the large output, about half the memory traffic.
inline void copy_row(float* dst, const float* src, int64_t n) {
#if defined(__SSE2__)
  if ((reinterpret_cast<uintptr_t>(dst) & 15u) == 0) {
    int64_t c = 0;
    for (; c + 4 <= n; c += 4) _mm_stream_ps(dst + c, _mm_loadu_ps(src + c));
    for (; c < n; ++c) dst[c] = src[c];
    return;
  }
#endif
  std::memcpy(dst, src, sizeof(float) * static_cast<size_t>(n));
}

inline void store_fence() {
#if defined(__SSE2__)
  _mm_sfence();
#endif
}

}  // namespace

void squared_norms(const float* maps, double* out, int64_t n_rows, int64_t ch) {
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < n_rows; ++r) out[r] = squared_norm(maps + r * ch, ch);
}

void log_bin(const float* in, float* out, float* norm, float* workspace, int64_t batch, int hp, int wp, int64_t ch,
             int hierarchy) {
  const int64_t tokens = static_cast<int64_t>(hp) * wp;
  const int64_t plane = tokens * ch;
  const int nb = num_bins(hierarchy);
  if (batch * plane == 0) return;
  // level maps: level 0 is the input itself
  std::vector<const float*> level(hierarchy);
  level[0] = in;
  for (int k = 1; k < hierarchy; ++k) {
    float* dst = workspace + (k - 1) * batch * plane;
    box_average(in, dst, batch, hp, wp, ch, k);
    level[k] = dst;
  }
  std::vector<double> sq;
  if (norm) {
    sq.resize(static_cast<size_t>(hierarchy * batch * tokens));
    for (int k = 0; k < hierarchy; ++k) squared_norms(level[k], sq.data() + k * batch * tokens, batch * tokens, ch);
  }
  BinOffset offs[1 + 8 * DF_LOG_BIN_MAX_LEVELS];
  for (int i = 0; i < nb; ++i) offs[i] = bin_offset(i);
#pragma omp parallel
  {
#pragma omp for schedule(static) nowait
  for (int64_t bt = 0; bt < batch * tokens; ++bt) {
    const int64_t b = bt / tokens;
    const int t = static_cast<int>(bt % tokens);
    const int y = t / wp, x = t % wp;
    float* orow = out + bt * nb * ch;
    double ss = 0.0;
    for (int i = 0; i < nb; ++i) {
      const BinOffset& o = offs[i];
      const int64_t cell = b * tokens + static_cast<int64_t>(clamped(y, o.dy, hp)) * wp + clamped(x, o.dx, wp);
      copy_row(orow + i * ch, level[o.level] + cell * ch, ch);
      if (norm) ss += sq[static_cast<size_t>(o.level * batch * tokens + cell)];
    }
    if (norm) norm[bt] = static_cast<float>(std::sqrt(ss));
  }
  store_fence();  // make this thread's streaming stores visible before the implicit barrier
  }
}

}  // namespace dinofeat::cpu
