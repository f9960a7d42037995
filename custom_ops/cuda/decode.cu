// TurboQuantDecode on CUDA: decode_kernel (warp per vector) and its launcher.
#include <math.h>

#include "codec.cuh"

namespace tq {
namespace cuda {

constexpr int kDecWarps = 8;

template <typename Tout, int E, bool HAD>
__global__ void __launch_bounds__(kDecWarps * 32) decode_kernel(const uint8_t* __restrict__ rows, int64_t n, int d,
                                                             const float* __restrict__ rot,
                                                             const float* __restrict__ cb_g, int bits, int Rk,
                                                             Tout* __restrict__ out, float inv_sqrt_d) {
  __shared__ float cb[256];
  __shared__ float bufs[kDecWarps][256];
  const int K = 1 << bits;
  for (int k = threadIdx.x; k < K; k += blockDim.x) cb[k] = cb_g[k];
  __syncthreads();
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  float* buf = bufs[warp];
  for (int64_t v = (int64_t)blockIdx.x * kDecWarps + warp; v < n; v += (int64_t)gridDim.x * kDecWarps) {
    const uint32_t* row = reinterpret_cast<const uint32_t*>(rows + v * Rk);
    float scale = __uint_as_float(__ldg(row));
    float y[E];
#pragma unroll
    for (int e = 0; e < E; ++e) {
      int i = e * 32 + lane;
      y[e] = (i < d) ? cb[get_bits(row + 1, i * bits, bits)] : 0.f;
    }
    Tout* o = out + v * d;
    if (HAD) {
      warp_fwht<E>(y, d, lane);
#pragma unroll
      for (int e = 0; e < E; ++e) {
        int i = e * 32 + lane;
        if (i < d) o[i] = from_f<Tout>(y[e] * inv_sqrt_d * rot[i] * scale);
      }
    } else {
#pragma unroll
      for (int e = 0; e < E; ++e) {
        int i = e * 32 + lane;
        if (i < d) buf[i] = y[e];
      }
      __syncwarp();
#pragma unroll
      for (int e = 0; e < E; ++e) {
        int j = e * 32 + lane;
        if (j < d) {
          float acc = 0.f;
          for (int i = 0; i < d; ++i) acc += __ldg(rot + (size_t)i * d + j) * buf[i];
          o[j] = from_f<Tout>(acc * scale);
        }
      }
      __syncwarp();
    }
  }
}

template <typename Tout>
static int run_decode_e(const uint8_t* rows, int64_t n, int d, const float* rot, int rot_rank, const float* cb,
                        int bits, int Rk, Tout* out, cudaStream_t stream, const char** msg) {
  int E = (d + 31) / 32;
  bool had = rot_rank == 1;
  int64_t blocks = (n + kDecWarps - 1) / kDecWarps;
  int64_t cap = (int64_t)num_sms() * 8;
  if (blocks > cap) blocks = cap;
  float inv_sqrt_d = had ? (float)(1.0 / sqrt((double)d)) : 1.0f;
#define TQ_DEC_CASE(EE)                                                                                   \
  case EE:                                                                                                \
    if (had)                                                                                              \
      decode_kernel<Tout, EE, true><<<(unsigned)blocks, kDecWarps * 32, 0, stream>>>(rows, n, d, rot, cb, bits, Rk, \
                                                                                      out, inv_sqrt_d);   \
    else                                                                                                  \
      decode_kernel<Tout, EE, false><<<(unsigned)blocks, kDecWarps * 32, 0, stream>>>(rows, n, d, rot, cb, bits, Rk, \
                                                                                       out, inv_sqrt_d);  \
    break;
  switch (E) {
    TQ_DEC_CASE(1)
    TQ_DEC_CASE(2)
    TQ_DEC_CASE(3)
    TQ_DEC_CASE(4)
    TQ_DEC_CASE(8)
    default:
      *msg = "head_dim not supported by the CUDA kernels (supported: d <= 128, or 225..256)";
      return -1;
  }
#undef TQ_DEC_CASE
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) { *msg = cudaGetErrorString(e); return (int)e; }
  return 0;
}

int launch_decode(const uint8_t* rows, int64_t n, int d, const float* rot, int rot_rank, const float* cb, int bits,
                  int Rk, void* out, int out_dtype, cudaStream_t stream, const char** msg) {
  if (n <= 0) return 0;
  if (rot_rank == 1 && !is_pow2(d)) { *msg = "rotation of rank 1 needs d a power of two"; return -1; }
  switch (out_dtype) {
    case kF32: return run_decode_e<float>(rows, n, d, rot, rot_rank, cb, bits, Rk, (float*)out, stream, msg);
    case kF16: return run_decode_e<__half>(rows, n, d, rot, rot_rank, cb, bits, Rk, (__half*)out, stream, msg);
    case kBF16:
      return run_decode_e<__nv_bfloat16>(rows, n, d, rot, rot_rank, cb, bits, Rk, (__nv_bfloat16*)out, stream, msg);
    default: *msg = "output dtype must be float32, float16 or bfloat16"; return -1;
  }
}

}  // namespace cuda
}  // namespace tq
