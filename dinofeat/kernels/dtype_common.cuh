// Host/device-shared basics for dinofeat kernels: qualifiers, float bit casts, float16/bfloat16 storage types.
//
// Compiles under nvcc, NVRTC (no system headers) and a plain C++ compiler (g++/clang++, with or without the
// CUDA CPU-execution shim in tests/kernels/cuda_shim). float16/bfloat16 are handled as 16-bit storage with
// explicit round-to-nearest-even conversions, so no cuda_fp16.h / cuda_bf16.h is needed anywhere.
#pragma once

#if defined(__CUDACC__) || defined(DF_CUDA_SHIM)
#define DF_HD __host__ __device__
#else
#define DF_HD
#endif

namespace dinofeat {

typedef unsigned long long u64;
typedef long long i64;

// 16-bit storage types (layout-compatible with IEEE binary16 / bfloat16 arrays).
struct f16 {
  unsigned short bits;
};
struct bf16 {
  unsigned short bits;
};

DF_HD inline unsigned int float_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  unsigned int u;
  __builtin_memcpy(&u, &f, sizeof(u));
  return u;
#endif
}

DF_HD inline float bits_float(unsigned int u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  __builtin_memcpy(&f, &u, sizeof(f));
  return f;
#endif
}

DF_HD inline float half_bits_to_float(unsigned short h) {
  const unsigned int sign = (static_cast<unsigned int>(h) & 0x8000u) << 16;
  const unsigned int expo = (static_cast<unsigned int>(h) >> 10) & 0x1fu;
  const unsigned int mant = static_cast<unsigned int>(h) & 0x3ffu;
  if (expo == 0x1fu) return bits_float(sign | 0x7f800000u | (mant << 13));  // inf / nan
  if (expo == 0u) {                                                            // zero / subnormal
    const float v = static_cast<float>(mant) * 5.9604644775390625e-8f;        // mant * 2^-24 (exact)
    return sign ? -v : v;
  }
  return bits_float(sign | ((expo + 112u) << 23) | (mant << 13));
}

// Round-to-nearest-even float -> binary16 (overflow -> inf, nan stays nan).
DF_HD inline unsigned short float_to_half_bits(float f) {
  unsigned int u = float_bits(f);
  const unsigned int sign = u & 0x80000000u;
  u ^= sign;
  unsigned int o;
  if (u >= (143u << 23)) {  // |f| >= 65536: inf or nan
    o = (u > 0x7f800000u) ? 0x7e00u : 0x7c00u;
  } else if (u < (113u << 23)) {  // result is subnormal or zero: align mantissa with a magic add
    const float magic = bits_float(126u << 23);  // 0.5
    const float r = bits_float(u) + magic;
    o = float_bits(r) - (126u << 23);
  } else {
    const unsigned int odd = (u >> 13) & 1u;
    u += (static_cast<unsigned int>(15 - 127) << 23) + 0xfffu + odd;
    o = u >> 13;
  }
  return static_cast<unsigned short>(o | (sign >> 16));
}

DF_HD inline float bf16_bits_to_float(unsigned short h) { return bits_float(static_cast<unsigned int>(h) << 16); }

DF_HD inline unsigned short float_to_bf16_bits(float f) {
  unsigned int u = float_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<unsigned short>((u >> 16) | 0x40u);  // quiet nan
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<unsigned short>(u >> 16);
}

DF_HD inline float to_float(float v) { return v; }
DF_HD inline float to_float(f16 v) { return half_bits_to_float(v.bits); }
DF_HD inline float to_float(bf16 v) { return bf16_bits_to_float(v.bits); }

template <class T>
struct FromFloat;
template <>
struct FromFloat<float> {
  DF_HD static float cvt(float v) { return v; }
};
template <>
struct FromFloat<f16> {
  DF_HD static f16 cvt(float v) {
    f16 r;
    r.bits = float_to_half_bits(v);
    return r;
  }
};
template <>
struct FromFloat<bf16> {
  DF_HD static bf16 cvt(float v) {
    bf16 r;
    r.bits = float_to_bf16_bits(v);
    return r;
  }
};

template <class T>
DF_HD inline T from_float(float v) {
  return FromFloat<T>::cvt(v);
}

#if defined(__CUDACC__) || defined(DF_CUDA_SHIM)
// Sum of v over the threads of the block, through shared `red` (at least blockDim.x floats; blockDim.x a power of
// two). Every thread must call it and gets the sum; it ends on a barrier, so red may be reused only after the
// caller's next __syncthreads() (bb_row_norm, log_bin_fused).
__device__ inline float block_sum(float* red, float v) {
  red[threadIdx.x] = v;
  __syncthreads();
  for (unsigned int half = blockDim.x / 2; half > 0; half >>= 1) {
    if (threadIdx.x < half) red[threadIdx.x] += red[threadIdx.x + half];
    __syncthreads();
  }
  return red[0];
}
#endif

DF_HD inline int min_i(int a, int b) { return a < b ? a : b; }
DF_HD inline int max_i(int a, int b) { return a > b ? a : b; }
DF_HD inline int clamp_i(int v, int lo, int hi) { return v < lo ? lo : (v > hi ? hi : v); }

}  // namespace dinofeat
