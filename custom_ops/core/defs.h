// Shared by the CPU (g++) and CUDA (nvcc) builds: TQ_HD marks functions callable on both sides.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define TQ_HD __host__ __device__
#else
#define TQ_HD
#endif

namespace tq {

// Exact float32 arithmetic for the bit-exact encode path (docs/ops.md 1.3). On the device the _rn
// intrinsics are never contracted into FMA; on the host the build uses -ffp-contract=off.
TQ_HD inline float fmul(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
TQ_HD inline float fadd(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
TQ_HD inline float fsub(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}

// A float is finite iff its exponent bits are not all ones (works under any fast-math setting).
TQ_HD inline bool is_finite_bits(float x) {
  union { float f; uint32_t u; } v{x};
  return (v.u & 0x7f800000u) != 0x7f800000u;
}

}  // namespace tq
