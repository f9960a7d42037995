// TurboQuantAttention on CUDA: what every kernel family shares (the kernels' arguments, the batch
// geometry, softcap, the warp-vector rotations and the loads with exact RoPE). Included by the
// attention_*.cuh families; the launch sequence is in attention_dispatch.cu.
#pragma once

#include "common.cuh"

namespace tq {
namespace cuda {

constexpr float kLog2e = 1.4426950408889634f;

struct AttnArgs {
  const float* qf;        // [B, S, Hq, d] float32 (after RoPE)
  const float* kf;        // [B, S, Hkv, d]
  const void* value;      // T [B, S, Hkv, d]
  // the inputs before RoPE: the fast path reads these (the merge, the new rows' encode), qf/kf are the
  // simple path's float32 copies
  const void* query;      // T [B, S, Hq, d]
  const void* key;        // T [B, S, Hkv, d]
  const void* cosc;       // T [max_pos, d/2] when rotary
  const void* sinc;
  int rotary, max_pos;
  const uint8_t* pk;      // present_key
  const void* pv;         // present_value
  const int32_t* seqlens;
  const float* rot;
  const float* kcb;
  const float* vcb;
  const float* qjl;
  void* out;
  int B, S, Hq, Hkv, d, Pp, Rk, Rv;
  int kbits, vbits, use_qjl, m, window;
  float scale, softcap, inv_sqrt_d;
  // recent window (R > 0 only)
  const void* kr;         // past_key_recent T [B, Hkv, R, d] (read)
  const void* vr;         // past_value_recent (read; unused when vbits = 0)
  void* pkr;              // present_key_recent (written; may be null)
  void* pvr;              // present_value_recent (written when vbits > 0; may be null)
  const float* ring_o;    // [B*Hq, d] exact partial of the ring segment (fast path)
  const float* ring_ml;   // [B*Hq, 2] its max (log2 domain) and sum
  int R;
  // prefill: the compressed rows' partial per query from prefill_rows_kernel or (float32 inputs)
  // prefill_tc_kernel ([B*S*Hq, d] rotated accumulator, [B*S*Hq, 2] max (natural log domain) and sum);
  // null: the simple kernel reads the rows
  const float* pre_o;
  const float* pre_ml;
};

__device__ __forceinline__ bool batch_geometry(const int32_t* seqlens, int b, int S, int Pp, int& L, int& past,
                                               int& nvalid) {
  L = seqlens[b] + 1;
  past = L >= S ? L - S : 0;
  nvalid = L >= S ? S : L;
  return L >= 1 && L <= Pp && past + S <= Pp;
}

__device__ __forceinline__ float softcap_f(float s, float cap) { return cap > 0.f ? cap * tanhf(s / cap) : s; }

template <int E, bool HAD>
__device__ __forceinline__ void rotate_fwd(const float (&x)[E], float (&y)[E], const float* rot, int d, int lane,
                                           float* buf, float inv_sqrt_d) {
  if (HAD) {
#pragma unroll
    for (int e = 0; e < E; ++e) {
      int i = e * 32 + lane;
      y[e] = i < d ? x[e] * rot[i] : 0.f;
    }
    warp_fwht<E>(y, d, lane);
#pragma unroll
    for (int e = 0; e < E; ++e) y[e] *= inv_sqrt_d;
  } else {
#pragma unroll
    for (int e = 0; e < E; ++e) {
      int i = e * 32 + lane;
      if (i < d) buf[i] = x[e];
    }
    __syncwarp();
#pragma unroll
    for (int e = 0; e < E; ++e) {
      int i = e * 32 + lane;
      float acc = 0.f;
      if (i < d)
        for (int j = 0; j < d; ++j) acc += __ldg(rot + (size_t)i * d + j) * buf[j];
      y[e] = acc;
    }
    __syncwarp();
  }
}

template <int E, bool HAD>
__device__ __forceinline__ void rotate_inv(const float (&y)[E], float (&x)[E], const float* rot, int d, int lane,
                                           float* buf, float inv_sqrt_d) {
  if (HAD) {
#pragma unroll
    for (int e = 0; e < E; ++e) x[e] = y[e];
    warp_fwht<E>(x, d, lane);
#pragma unroll
    for (int e = 0; e < E; ++e) {
      int i = e * 32 + lane;
      x[e] = i < d ? x[e] * inv_sqrt_d * rot[i] : 0.f;
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
      float acc = 0.f;
      if (j < d)
        for (int i = 0; i < d; ++i) acc += __ldg(rot + (size_t)i * d + j) * buf[i];
      x[e] = acc;
    }
    __syncwarp();
  }
}

// One vector of d elements (one warp, element e*32 + lane in x[e]), with exact RoPE at position pos
// when rotary (the rounding of tq_ort.codec.apply_rotary). buf: d floats of this warp's shared memory.
template <typename T, int E>
__device__ __forceinline__ void load_rope(const T* src, const T* cosc, const T* sinc, int rotary, int pos, int d,
                                          int lane, float* buf, float (&x)[E]) {
#pragma unroll
  for (int e = 0; e < E; ++e) {
    int i = e * 32 + lane;
    x[e] = i < d ? to_f<T>(src[i]) : 0.f;
  }
  if (!rotary) return;
#pragma unroll
  for (int e = 0; e < E; ++e) {
    int i = e * 32 + lane;
    if (i < d) buf[i] = x[e];
  }
  __syncwarp();
  const int half = d / 2;
#pragma unroll
  for (int e = 0; e < E; ++e) {
    int i = e * 32 + lane;
    if (i < d) {
      int cc = i < half ? i : i - half;
      float co = to_f<T>(cosc[(int64_t)pos * half + cc]), si = to_f<T>(sinc[(int64_t)pos * half + cc]);
      x[e] = i < half ? __fsub_rn(__fmul_rn(buf[i], co), __fmul_rn(buf[i + half], si))
                      : __fadd_rn(__fmul_rn(buf[i], co), __fmul_rn(buf[i - half], si));
    }
  }
  __syncwarp();
}

// Element i of a tensor of run-time dtype dt (DType), as float / from float (rounded to nearest).
__device__ __forceinline__ float load_dt(const void* p, int64_t i, int dt) {
  if (dt == kF16) return __half2float(reinterpret_cast<const __half*>(p)[i]);
  if (dt == kBF16) return __bfloat162float(reinterpret_cast<const __nv_bfloat16*>(p)[i]);
  return reinterpret_cast<const float*>(p)[i];
}
__device__ __forceinline__ void store_dt(void* p, int64_t i, float v, int dt) {
  if (dt == kF16) reinterpret_cast<__half*>(p)[i] = __float2half_rn(v);
  else if (dt == kBF16) reinterpret_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(v);
  else reinterpret_cast<float*>(p)[i] = v;
}

// Row `row` of a T [*, d] tensor of run-time dtype dt (the merge's template does not carry T), after
// exact RoPE at the decode token's position `past` when rotary (clamped to the cos/sin table). The
// fast path's one place for that position and the row's address.
template <int E>
__device__ __forceinline__ void load_rope_dt(const void* base, int64_t row, const void* cosc, const void* sinc,
                                             int rotary, int max_pos, int past, int d, int lane, float* buf,
                                             float (&x)[E], int dt) {
  const int pos = rotary ? min(max(past, 0), max_pos - 1) : past;
  const void* src = static_cast<const uint8_t*>(base) + row * d * (dt == kF32 ? 4 : 2);
  if (dt == kF16)
    load_rope<__half, E>(static_cast<const __half*>(src), static_cast<const __half*>(cosc),
                         static_cast<const __half*>(sinc), rotary, pos, d, lane, buf, x);
  else if (dt == kBF16)
    load_rope<__nv_bfloat16, E>(static_cast<const __nv_bfloat16*>(src), static_cast<const __nv_bfloat16*>(cosc),
                                static_cast<const __nv_bfloat16*>(sinc), rotary, pos, d, lane, buf, x);
  else
    load_rope<float, E>(static_cast<const float*>(src), static_cast<const float*>(cosc),
                        static_cast<const float*>(sinc), rotary, pos, d, lane, buf, x);
}

}  // namespace cuda
}  // namespace tq
