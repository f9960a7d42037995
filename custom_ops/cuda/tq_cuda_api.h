/* TurboQuant CUDA kernels: a plain C ABI (device pointers, sizes, a cudaStream_t).
 *
 * The one door into the CUDA code: used by the ONNX Runtime CUDA EP adapters (custom_ops/ort/cuda_*_op.cc),
 * the TensorRT plugins (custom_ops/trt/) and, through ctypes, by tests/gpu/ and benchmarks/gpu/ without
 * ONNX Runtime. Semantics: docs/ops.md; design and tuning:
 * docs/cuda.md. Every function returns 0 on success, else a nonzero code with a message in
 * tq_cuda_last_error() (thread-local). Nothing here synchronizes the stream.
 *
 * dtype codes are ONNX's: 1 = float32, 10 = float16, 16 = bfloat16.
 */
#ifndef TQ_CUDA_API_H_
#define TQ_CUDA_API_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Exported only from the standalone kernel library (tests/gpu/build.sh defines TQ_CUDA_STANDALONE);
 * inside libtq_ort_ops RegisterCustomOps stays the only exported symbol. */
#if defined(TQ_CUDA_STANDALONE) && defined(_WIN32)
#define TQ_CUDA_EXPORT __declspec(dllexport)
#elif defined(TQ_CUDA_STANDALONE)
#define TQ_CUDA_EXPORT __attribute__((visibility("default")))
#else
#define TQ_CUDA_EXPORT
#endif

TQ_CUDA_EXPORT const char* tq_cuda_last_error(void);

TQ_CUDA_EXPORT int tq_cuda_row_bytes(int d, int bits, int use_qjl, int m);

/* rows[n, row_bytes] = encode(x[n, d]). rotation: [d] (rot_rank 1, d a power of two) or [d, d]. */
TQ_CUDA_EXPORT int tq_cuda_encode(const void* x, int x_dtype, int64_t n, int d, const float* rotation,
                                  int rot_rank, const float* codebook, int bits, int use_qjl,
                                  const float* qjl, int m, uint8_t* rows, void* stream);

/* out[n, d] (out_dtype) = decode(rows[n, row_bytes]). */
TQ_CUDA_EXPORT int tq_cuda_decode(const uint8_t* rows, int64_t n, int d, const float* rotation, int rot_rank,
                                  const float* codebook, int bits, int use_qjl, int m, void* out,
                                  int out_dtype, void* stream);

/* TurboQuantAttention. All fields are 8 bytes wide (ctypes-friendly). */
typedef struct TqAttnParams {
  const void* query;          /* T [B, S, Hq*d] */
  const void* key;            /* T [B, S, Hkv*d] */
  const void* value;          /* T [B, S, Hkv*d] */
  const void* past_key;       /* uint8 [B, Hkv, P, Rk] (may equal present_key: shared buffer) */
  const void* past_value;     /* uint8 [B, Hkv, P, Rv] or T [B, Hkv, P, d] (value_bits = 0) */
  void* present_key;          /* uint8 [B, Hkv, Pp, Rk] */
  void* present_value;        /* uint8 [B, Hkv, Pp, Rv] or T [B, Hkv, Pp, d] */
  const int32_t* seqlens_k;   /* int32 [B], device */
  const float* rotation;      /* [d] or [d, d] */
  const float* key_codebook;  /* [2^key_bits] */
  const float* value_codebook;/* [2^value_bits] or NULL */
  const float* qjl;           /* [m, d] or NULL */
  const void* cos_cache;      /* T [max_pos, d/2] or NULL */
  const void* sin_cache;
  void* output;               /* T [B, S, Hq*d] */
  int64_t dtype;              /* T: 1, 10 or 16 */
  int64_t B, S, Hq, Hkv, d, P, Pp;
  int64_t rot_rank, key_bits, value_bits, use_qjl, m;
  int64_t do_rotary, max_pos, local_window;
  double scale;               /* 0 -> 1/sqrt(d) */
  double softcap;             /* 0 -> none */
  int64_t force_path;         /* 0 auto, 1 simple kernel, 2 split-K decode kernel (tests) */
  /* Recent window (docs/ops.md 4): R = recent_window > 0 reads cached positions
   * [max(0, past_len - R), past_len) exactly from the rings (position j in slot j % R) and writes the
   * last R valid new tokens after attention. R = 0: every ring pointer is ignored. */
  const void* past_key_recent;     /* T [B, Hkv, R, d], required when R > 0 */
  const void* past_value_recent;   /* T [B, Hkv, R, d], required when R > 0 and value_bits > 0; with
                                      value_bits = 0 never read: copied to present_value_recent if
                                      non-NULL, else present_value_recent is zeroed */
  void* present_key_recent;        /* T [B, Hkv, R, d] (== past_key_recent: shared buffer); NULL: not produced */
  void* present_value_recent;      /* likewise */
  int64_t recent_window;           /* R >= 0 */
} TqAttnParams;

/* Bytes of device scratch tq_cuda_attention needs (pass at least this much, 256-byte aligned). */
TQ_CUDA_EXPORT size_t tq_cuda_attention_workspace(const TqAttnParams* p);
TQ_CUDA_EXPORT int tq_cuda_attention(const TqAttnParams* p, void* workspace, size_t workspace_bytes,
                                     void* stream);

#ifdef __cplusplus
}
#endif

#endif /* TQ_CUDA_API_H_ */
