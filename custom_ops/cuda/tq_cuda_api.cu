// extern "C" entry points over the CUDA kernels (see tq_cuda_api.h).
#include <string.h>

#include <string>

#include "codec.cuh"
#include "core/layout.h"
#include "tq_cuda_api.h"

namespace tq {
namespace cuda {
size_t attention_workspace(const TqAttnParams* p);
int attention(const TqAttnParams* p, void* ws, size_t ws_bytes, cudaStream_t stream, const char** msg);
}  // namespace cuda
}  // namespace tq

namespace {
thread_local std::string g_err;
int fail(int rc, const char* msg) {
  g_err = msg ? msg : "unknown error";
  return rc ? rc : -1;
}
}  // namespace

extern "C" {

const char* tq_cuda_last_error(void) { return g_err.c_str(); }

int tq_cuda_row_bytes(int d, int bits, int use_qjl, int m) { return tq::cuda::row_bytes(d, bits, use_qjl, m); }

int tq_cuda_encode(const void* x, int x_dtype, int64_t n, int d, const float* rotation, int rot_rank,
                   const float* codebook, int bits, int use_qjl, const float* qjl, int m, uint8_t* rows,
                   void* stream) {
  if (!tq::valid_bits(bits)) return fail(-1, "bits must be one of 1, 2, 3, 4, 5, 6, 8");
  if (rot_rank != 1 && rot_rank != 2) return fail(-1, "rotation rank must be 1 or 2");
  const char* msg = nullptr;
  tq::cuda::RowSink sink{rows, tq::cuda::row_bytes(d, bits, use_qjl, m), 0, 1, 1, 1, nullptr};
  int rc = tq::cuda::launch_encode(x, x_dtype, n, d, rotation, rot_rank, codebook, bits, use_qjl, qjl, m, sink,
                                   (cudaStream_t)stream, &msg);
  return rc ? fail(rc, msg) : 0;
}

int tq_cuda_decode(const uint8_t* rows, int64_t n, int d, const float* rotation, int rot_rank, const float* codebook,
                   int bits, int use_qjl, int m, void* out, int out_dtype, void* stream) {
  if (!tq::valid_bits(bits)) return fail(-1, "bits must be one of 1, 2, 3, 4, 5, 6, 8");
  if (rot_rank != 1 && rot_rank != 2) return fail(-1, "rotation rank must be 1 or 2");
  const char* msg = nullptr;
  int rc = tq::cuda::launch_decode(rows, n, d, rotation, rot_rank, codebook, bits,
                                   tq::cuda::row_bytes(d, bits, use_qjl, m), out, out_dtype, (cudaStream_t)stream, &msg);
  return rc ? fail(rc, msg) : 0;
}

size_t tq_cuda_attention_workspace(const TqAttnParams* p) { return tq::cuda::attention_workspace(p); }

int tq_cuda_attention(const TqAttnParams* p, void* workspace, size_t workspace_bytes, void* stream) {
  if (!tq::valid_bits((int)p->key_bits)) return fail(-1, "key_bits must be one of 1, 2, 3, 4, 5, 6, 8");
  if (p->value_bits != 0 && !tq::valid_bits((int)p->value_bits)) return fail(-1, "value_bits must be 0 or one of 1, 2, 3, 4, 5, 6, 8");
  const char* msg = nullptr;
  int rc = tq::cuda::attention(p, workspace, workspace_bytes, (cudaStream_t)stream, &msg);
  return rc ? fail(rc, msg) : 0;
}

}  // extern "C"
