// TurboQuantAttention, steps 1-2 of the simple path (attention_dispatch.cu): q, k -> float32 with
// exact RoPE, the new values copied (value_bits = 0), and the recent window's ring writes.
#pragma once

#include "attention_common.cuh"

namespace tq {
namespace cuda {

// ---------------------------------------------------------------------------------------------
// 1. prep: q, k -> float32 (+ exact RoPE, same rounding as tq_ort.codec.apply_rotary).
template <typename T>
__global__ void prep_qk_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ cosc,
                               const T* __restrict__ sinc, const int32_t* __restrict__ seqlens, float* qf, float* kf,
                               int B, int S, int Hq, int Hkv, int d, int rotary, int max_pos) {
  const int H = Hq + Hkv;
  const int64_t total = (int64_t)B * S * H * d;
  const int half = d / 2;
  for (int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
       idx += (int64_t)gridDim.x * blockDim.x) {
    int c = (int)(idx % d);
    int64_t t = idx / d;
    int h = (int)(t % H);
    int64_t bs = t / H;  // b*S + i
    int i = (int)(bs % S), b = (int)(bs / S);
    const T* src = h < Hq ? q + (bs * Hq + h) * d : k + (bs * Hkv + (h - Hq)) * d;
    float* dst = h < Hq ? qf + (bs * Hq + h) * d : kf + (bs * Hkv + (h - Hq)) * d;
    float v = to_f<T>(src[c]);
    if (rotary) {
      int L = seqlens[b] + 1;
      int past = L >= S ? L - S : 0;
      int pos = past + i;
      if (pos >= max_pos) pos = max_pos - 1;
      if (pos < 0) pos = 0;
      int cc = c < half ? c : c - half;
      float co = to_f<T>(cosc[(int64_t)pos * half + cc]), si = to_f<T>(sinc[(int64_t)pos * half + cc]);
      if (c < half) {
        float x2 = to_f<T>(src[c + half]);
        v = __fsub_rn(__fmul_rn(v, co), __fmul_rn(x2, si));
      } else {
        float x1 = to_f<T>(src[c - half]);
        v = __fadd_rn(__fmul_rn(v, co), __fmul_rn(x1, si));
      }
    }
    dst[c] = v;
  }
}

// value_bits = 0: copy the new values (T) into present_value [B, Hkv, Pp, d].
template <typename T>
__global__ void copy_values_kernel(const T* __restrict__ v, T* __restrict__ pv, const int32_t* __restrict__ seqlens,
                                   int B, int S, int Hkv, int d, int Pp) {
  const int64_t total = (int64_t)B * S * Hkv * d;
  for (int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
       idx += (int64_t)gridDim.x * blockDim.x) {
    int c = (int)(idx % d);
    int64_t t = idx / d;
    int g = (int)(t % Hkv);
    int64_t bs = t / Hkv;
    int i = (int)(bs % S), b = (int)(bs / S);
    int L, past, nvalid;
    if (!batch_geometry(seqlens, b, S, Pp, L, past, nvalid)) continue;
    pv[(((int64_t)b * Hkv + g) * Pp + past + i) * d + c] = v[idx];
  }
}

// Recent window, after attention: the new token at position p goes to ring slot p % R iff it is
// valid (p < L) and among the last R (p >= L - R); kf holds the keys after RoPE (float32), written
// as T. Those positions are distinct modulo R, so no two threads write one slot.
template <typename T>
__global__ void ring_write_kernel(const float* __restrict__ kf, const T* __restrict__ v, const int32_t* __restrict__ seqlens,
                                  T* pkr, T* pvr, int B, int S, int Hkv, int d, int Pp, int R) {
  const int64_t total = (int64_t)B * S * Hkv * d;
  for (int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
       idx += (int64_t)gridDim.x * blockDim.x) {
    int c = (int)(idx % d);
    int64_t t = idx / d;
    int g = (int)(t % Hkv);
    int64_t bs = t / Hkv;
    int i = (int)(bs % S), b = (int)(bs / S);
    int L, past, nvalid;
    if (!batch_geometry(seqlens, b, S, Pp, L, past, nvalid)) continue;
    const int p = past + i;
    if (p >= L || p < L - R) continue;
    const int64_t off = (((int64_t)b * Hkv + g) * R + p % R) * d + c;
    if (pkr) pkr[off] = from_f<T>(kf[idx]);
    if (pvr) pvr[off] = v[idx];
  }
}

}  // namespace cuda
}  // namespace tq
