// Launchers for the encode / decode kernels.
#include <math.h>
#include <stdlib.h>

#include "tq_codec.cuh"
#include "tq_encode_fast.cuh"

namespace tq {
namespace cuda {

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
