// Shared device helpers for the TurboQuant CUDA kernels (docs/cuda.md, docs/ops.md).
// Self-contained: row layout, bit extraction, dtype conversion, warp FWHT, device queries. Nothing
// here depends on ONNX Runtime.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

namespace tq {
namespace cuda {

constexpr unsigned kFull = 0xffffffffu;

// ONNX element type codes used across the C ABI.
enum DType : int { kF32 = 1, kF16 = 10, kBF16 = 16 };

__host__ __device__ inline int pad4(int x) { return (x + 3) & ~3; }
__host__ __device__ inline int code_bytes(int d, int b) { return pad4((d * b + 7) / 8); }
__host__ __device__ inline int sign_bytes(int m) { return pad4((m + 7) / 8); }
__host__ __device__ inline int row_bytes(int d, int b, int qjl, int m) {
  return 4 + code_bytes(d, b) + (qjl ? 4 + sign_bytes(m) : 0);
}
// Offsets in 32-bit words.
__host__ __device__ inline int rnorm_word(int d, int b) { return 1 + code_bytes(d, b) / 4; }
__host__ __device__ inline int signs_word(int d, int b) { return 2 + code_bytes(d, b) / 4; }

template <typename T> __device__ __forceinline__ float to_f(T v);
template <> __device__ __forceinline__ float to_f<float>(float v) { return v; }
template <> __device__ __forceinline__ float to_f<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_f<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

__device__ __forceinline__ bool finitef(float x) { return fabsf(x) <= 3.402823466e38f; }

// nbits (<= 32) of an LSB-first bit stream held in 32-bit little-endian words, starting at bit
// `bit`. Reads the second word only when the field straddles (never past the last needed word).
__device__ __forceinline__ uint32_t get_bits(const uint32_t* w, int bit, int nbits) {
  int wi = bit >> 5, sh = bit & 31;
  uint32_t lo = w[wi];
  uint32_t hi = (sh + nbits > 32) ? w[wi + 1] : 0u;
  uint32_t v = __funnelshift_r(lo, hi, sh);
  return nbits >= 32 ? v : (v & ((1u << nbits) - 1u));
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o; o >>= 1) v += __shfl_xor_sync(kFull, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o; o >>= 1) v = fmaxf(v, __shfl_xor_sync(kFull, v, o));
  return v;
}

// In-place FWHT over a warp-distributed vector: element i = e*32 + lane lives in v[e].
// Stages h = 1, 2, 4, ..., d/2 in that order, each butterfly one rounded add / sub (exact,
// docs/ops.md 1.1). d is a power of two, d <= 32*E. Lanes >= d (d < 32) hold junk that never
// mixes into valid lanes.
template <int E>
__device__ __forceinline__ void warp_fwht(float (&v)[E], int d, int lane) {
  for (int h = 1; h < d && h < 32; h <<= 1) {
    const float sgn = (lane & h) ? -1.f : 1.f;
#pragma unroll
    for (int e = 0; e < E; ++e) {
      // (lane & h) ? p - v : v + p, as one fma(sgn, v, p): sgn * v is exact (sgn = +-1), so the fma
      // rounds exactly the one sum the spec rounds (bit-identical, zero signs included).
      float p = __shfl_xor_sync(kFull, v[e], h);
      v[e] = __fmaf_rn(sgn, v[e], p);
    }
  }
#pragma unroll
  for (int he = 1; he < E; he <<= 1) {
    if (he * 32 >= d) break;
#pragma unroll
    for (int e = 0; e < E; ++e) {
      if ((e & he) == 0 && e + he < E) {
        float a = v[e], b = v[e + he];
        v[e] = __fadd_rn(a, b);
        v[e + he] = __fsub_rn(a, b);
      }
    }
  }
}

// cp.async (sm_80+): global -> shared copies that bypass registers, completed per commit group.
__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return (uint32_t)__cvta_generic_to_shared(p);
}
__device__ __forceinline__ void cp_async16(void* s, const void* g) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_u32(s)), "l"(g));
}
__device__ __forceinline__ void cp_async4(void* s, const void* g) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(smem_u32(s)), "l"(g));
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

inline bool is_pow2(int d) { return d >= 2 && (d & (d - 1)) == 0; }

// Host side: device queries and launch settings shared by the launchers.
// An attribute of the current device, queried once per device (`fallback` when the query fails).
template <cudaDeviceAttr A>
inline int device_attr(int fallback) {
  static int cached[64] = {0};  // value + 1; 0: not queried yet
  int dev = 0;
  cudaGetDevice(&dev);
  if (dev < 0 || dev >= 64) dev = 0;
  if (!cached[dev]) {
    int v = 0;
    cached[dev] = 1 + (cudaDeviceGetAttribute(&v, A, dev) == cudaSuccess && v > 0 ? v : fallback);
  }
  return cached[dev] - 1;
}
inline int num_sms() { return device_attr<cudaDevAttrMultiProcessorCount>(80); }
inline int smem_optin_limit() { return device_attr<cudaDevAttrMaxSharedMemoryPerBlockOptin>(48 * 1024); }

// Resident blocks per SM of a kernel at this block size and shared memory, queried once per device
// (at least 1); `cache` is the caller's record for that kernel and launch shape.
inline int blocks_per_sm_once(const void* kern, int threads, size_t smem, int (&cache)[64]) {
  int dev = 0;
  cudaGetDevice(&dev);
  int& c = cache[dev >= 0 && dev < 64 ? dev : 0];
  if (!c) {
    int b = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&b, kern, threads, smem) != cudaSuccess) b = 1;
    c = b > 0 ? b : 1;
  }
  return c;
}

// Raise a kernel's dynamic shared-memory limit to `smem` once per size seen and device (a host call per
// launch costs ORT time); `raised` is the caller's record for that kernel.
inline cudaError_t raise_smem_once(const void* kern, int smem, int (&raised)[64]) {
  int dev = 0;
  cudaGetDevice(&dev);
  if (dev >= 0 && dev < 64 && smem <= raised[dev]) return cudaSuccess;
  cudaError_t e = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (e == cudaSuccess && dev >= 0 && dev < 64) raised[dev] = smem;
  return e;
}

}  // namespace cuda
}  // namespace tq
