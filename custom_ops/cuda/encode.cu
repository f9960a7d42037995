// TurboQuantEncode on CUDA: encode_kernel (warp per vector, every case) and the launchers that pick it
// or encode_fast_kernel (encode_fast.cuh).
#include <math.h>
#include <stdlib.h>

#include "codec.cuh"
#include "encode_fast.cuh"

namespace tq {
namespace cuda {

constexpr int kEncWarps = 8;

// Dynamic shared memory layout of encode_kernel (floats):
//   [0,256) codebook, [256,512) boundaries, per warp 64 code words, per warp 256 scratch floats,
//   then (dense rotation in shared memory) R^T [d*d].
__host__ __device__ inline size_t encode_smem_bytes(int d, bool dense_smem) {
  return sizeof(float) * (512 + kEncWarps * (64 + 256) + (dense_smem ? (size_t)d * d : 0));
}

template <typename Tin, int E, bool HAD>
__global__ void __launch_bounds__(kEncWarps * 32) encode_kernel(const Tin* __restrict__ x, int64_t n, int d,
                                                             const float* __restrict__ rot,
                                                             const float* __restrict__ cb_g, int bits, int qjl,
                                                             const float* __restrict__ S, int m, RowSink out,
                                                             float inv_sqrt_d, int dense_smem) {
  extern __shared__ float4 smem4[];
  float* sm = reinterpret_cast<float*>(smem4);
  const int K = 1 << bits;
  float* cb = sm;
  float* bnd = sm + 256;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  uint32_t* cw = reinterpret_cast<uint32_t*>(sm + 512) + warp * 64;
  float* buf = sm + 512 + kEncWarps * 64 + warp * 256;
  float* Rt = sm + 512 + kEncWarps * (64 + 256);
  for (int k = threadIdx.x; k < K; k += blockDim.x) cb[k] = cb_g[k];
  for (int k = threadIdx.x; k < K - 1; k += blockDim.x) bnd[k] = __fmul_rn(__fadd_rn(cb_g[k], cb_g[k + 1]), 0.5f);
  if (!HAD && dense_smem) {
    for (int idx = threadIdx.x; idx < d * d; idx += blockDim.x) {
      int i = idx / d, j = idx - i * d;
      Rt[j * d + i] = rot[idx];
    }
  }
  __syncthreads();
  float sgn_reg[E];  // Hadamard signs, loaded once per warp
#pragma unroll
  for (int e = 0; e < E; ++e) sgn_reg[e] = (HAD && e * 32 + lane < d) ? rot[e * 32 + lane] : 0.f;
  for (int64_t v = (int64_t)blockIdx.x * kEncWarps + warp; v < n; v += (int64_t)gridDim.x * kEncWarps) {
    const Tin* xv = x + v * d;
    float z[E];
#pragma unroll
    for (int e = 0; e < E; ++e) {
      int i = e * 32 + lane;
      z[e] = (i < d) ? to_f<Tin>(xv[i]) : 0.f;
    }
    encode_warp<E, HAD>(z, d, rot, (!HAD && dense_smem) ? Rt : nullptr, sgn_reg, cb, bnd, bits, qjl, S, m,
                        reinterpret_cast<uint32_t*>(sink_row(out, v)), inv_sqrt_d, buf, cw, lane);
  }
}

template <typename Tin, int E, bool HAD>
static int run_encode_t(const Tin* x, int64_t n, int d, const float* rot, const float* cb, int bits, int qjl,
                        const float* S, int m, const RowSink& sink, cudaStream_t stream, const char** msg) {
  bool dense_smem = !HAD && encode_smem_bytes(d, true) <= (size_t)smem_optin_limit();
  size_t smem = encode_smem_bytes(d, dense_smem);
  auto kern = encode_kernel<Tin, E, HAD>;
  static int raised[64] = {0};
  if (smem > 48 * 1024) {
    cudaError_t e = raise_smem_once((const void*)kern, (int)smem, raised);
    if (e != cudaSuccess) { *msg = cudaGetErrorString(e); return (int)e; }
  }
  int64_t blocks = (n + kEncWarps - 1) / kEncWarps;
  int64_t cap = (int64_t)num_sms() * (dense_smem ? 4 : 8);
  if (blocks > cap) blocks = cap;
  if (blocks < 1) blocks = 1;
  float inv_sqrt_d = HAD ? (float)(1.0 / sqrt((double)d)) : 1.0f;
  kern<<<(unsigned)blocks, kEncWarps * 32, smem, stream>>>(x, n, d, rot, cb, bits, qjl, S, m, sink, inv_sqrt_d,
                                                          dense_smem ? 1 : 0);
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) { *msg = cudaGetErrorString(e); return (int)e; }
  return 0;
}

template <typename Tin, int D, int BITS>
static int run_encode_fast_t(const Tin* x, int64_t n, const float* rot, const float* cb, const RowSink& sink,
                             cudaStream_t stream, const char** msg) {
  auto kern = encode_fast_kernel<Tin, D, BITS>;
  constexpr size_t smem = fast_encode_smem_bytes<Tin, D>();
  static int raised[64] = {0}, resident[64] = {0};
  cudaError_t e = raise_smem_once((const void*)kern, (int)smem, raised);
  if (e != cudaSuccess) { *msg = cudaGetErrorString(e); return (int)e; }
  const int64_t tiles = (n + FastEncLayout<Tin, D>::VPW - 1) / FastEncLayout<Tin, D>::VPW;
  int64_t blocks = (tiles + kFastEncWarps - 1) / kFastEncWarps;
  const int64_t cap = (int64_t)num_sms() * blocks_per_sm_once((const void*)kern, kFastEncWarps * 32, smem, resident);
  if (blocks > cap) blocks = cap;
  // Tuning knob: TQ_CUDA_ENCODE_SEARCH=1 keeps the binary code search (docs/cuda.md, "Encode").
  static const bool binary = getenv("TQ_CUDA_ENCODE_SEARCH") && atoi(getenv("TQ_CUDA_ENCODE_SEARCH")) == 1;
  kern<<<(unsigned)blocks, kFastEncWarps * 32, smem, stream>>>(x, n, rot, cb, sink, (float)(1.0 / sqrt((double)D)),
                                                               binary ? 0 : 1);
  e = cudaGetLastError();
  if (e != cudaSuccess) { *msg = cudaGetErrorString(e); return (int)e; }
  return 0;
}

template <typename Tin, int D>
static int run_encode_fast_d(const Tin* x, int64_t n, const float* rot, const float* cb, int bits,
                             const RowSink& sink, cudaStream_t stream, const char** msg) {
  switch (bits) {
    case 2: return run_encode_fast_t<Tin, D, 2>(x, n, rot, cb, sink, stream, msg);
    case 3: return run_encode_fast_t<Tin, D, 3>(x, n, rot, cb, sink, stream, msg);
    default: return run_encode_fast_t<Tin, D, 4>(x, n, rot, cb, sink, stream, msg);
  }
}

// encode_fast_kernel for the arguments fast_encode_ok accepts.
template <typename Tin>
static int run_encode_fast(const Tin* x, int64_t n, int d, const float* rot, const float* cb, int bits,
                           const RowSink& sink, cudaStream_t stream, const char** msg) {
  switch (d) {
    case 32: return run_encode_fast_d<Tin, 32>(x, n, rot, cb, bits, sink, stream, msg);
    case 64: return run_encode_fast_d<Tin, 64>(x, n, rot, cb, bits, sink, stream, msg);
    case 128: return run_encode_fast_d<Tin, 128>(x, n, rot, cb, bits, sink, stream, msg);
    default: return run_encode_fast_d<Tin, 256>(x, n, rot, cb, bits, sink, stream, msg);
  }
}

template <typename Tin>
static int run_encode_e(const Tin* x, int64_t n, int d, const float* rot, int rot_rank, const float* cb, int bits,
                        int qjl, const float* S, int m, const RowSink& sink, cudaStream_t stream, const char** msg) {
  if (fast_encode_ok(x, d, rot_rank, bits, qjl)) return run_encode_fast<Tin>(x, n, d, rot, cb, bits, sink, stream, msg);
  int E = (d + 31) / 32;
  bool had = rot_rank == 1;
#define TQ_ENC_CASE(EE)                                                                                     \
  case EE:                                                                                                  \
    return had ? run_encode_t<Tin, EE, true>(x, n, d, rot, cb, bits, qjl, S, m, sink, stream, msg)         \
               : run_encode_t<Tin, EE, false>(x, n, d, rot, cb, bits, qjl, S, m, sink, stream, msg);
  switch (E) {
    TQ_ENC_CASE(1)
    TQ_ENC_CASE(2)
    TQ_ENC_CASE(3)
    TQ_ENC_CASE(4)
    TQ_ENC_CASE(8)
    default:
      *msg = "head_dim not supported by the CUDA kernels (supported: d <= 128, or 225..256)";
      return -1;
  }
#undef TQ_ENC_CASE
}

int launch_encode(const void* x, int x_dtype, int64_t n, int d, const float* rot, int rot_rank, const float* cb,
                  int bits, int qjl, const float* S, int m, const RowSink& sink, cudaStream_t stream,
                  const char** msg) {
  if (n <= 0) return 0;
  if (rot_rank == 1 && !is_pow2(d)) { *msg = "rotation of rank 1 needs d a power of two"; return -1; }
  if (qjl && (m < 1 || m > 256 || S == nullptr)) { *msg = "qjl_matrix: m must be in [1, 256]"; return -1; }
  switch (x_dtype) {
    case kF32: return run_encode_e<float>((const float*)x, n, d, rot, rot_rank, cb, bits, qjl, S, m, sink, stream, msg);
    case kF16: return run_encode_e<__half>((const __half*)x, n, d, rot, rot_rank, cb, bits, qjl, S, m, sink, stream, msg);
    case kBF16:
      return run_encode_e<__nv_bfloat16>((const __nv_bfloat16*)x, n, d, rot, rot_rank, cb, bits, qjl, S, m, sink,
                                         stream, msg);
    default: *msg = "x dtype must be float32, float16 or bfloat16"; return -1;
  }
}

}  // namespace cuda
}  // namespace tq
