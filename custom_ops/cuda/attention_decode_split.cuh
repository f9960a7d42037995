// TurboQuantAttention on CUDA (docs/ops.md section 4; design in docs/cuda.md).
//
// Launch sequence of tq_cuda_attention:
//   1. prep_qk: query/key -> float32 scratch (RoPE applied exactly when do_rotary).
//   2. present = past (one cudaMemcpy2DAsync unless the buffers are shared), then the S new keys /
//      values are encoded (or copied, value_bits = 0) into rows past_len .. past_len+S-1.
//   3a. S == 1 and a supported shape (steps 1-2 folded in: the queries in decode_pre_kernel, the new
//       rows' encode beside the merge): split-K flash decoding over the compressed rows with tensor
//       cores (decode_split_kernel), then decode_combine_kernel: combine_head merges the splits,
//       rotates the value accumulator back once and adds the new token exactly; encode_new_row writes
//       the new rows (its warps start while the split kernel runs).
//   3b. otherwise attn_simple_kernel: one warp per (batch, query token, head), all cases.
// Recent window (R > 0, docs/ops.md 4): cached positions [max(0, past_len - R), past_len) are read
// exactly from the rings instead of from the rows. 3a: the split kernels stop at past_len - R, the
// pre-pass computes one more partial (max, sum, unrotated accumulator) per query head over the ring
// segment, the combine merges it and writes the new token's ring slot (after every read: stream
// order). 3b: the simple kernel reads the ring segment itself; ring_write_kernel writes the slots
// afterwards. R = 0 runs the same instantiations as before the window existed (RING = false).
#include <math.h>
#include <stdlib.h>

#include <type_traits>

#include "tq_codec.cuh"
#include "tq_cuda_api.h"

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

// ---------------------------------------------------------------------------------------------
// 3b. Simple kernel: warp per (b, i, h). Correct for every case; used for prefill and fallbacks.
constexpr int kSimpleWarps = 4;

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

template <typename T, int E, bool HAD, bool RING>
__global__ void __launch_bounds__(kSimpleWarps * 32) attn_simple_kernel(AttnArgs a) {
  __shared__ float kcb[256], vcb[256];
  __shared__ float bufs[kSimpleWarps][256];
  __shared__ float sqb[kSimpleWarps][256];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  for (int k = threadIdx.x; k < (1 << a.kbits); k += blockDim.x) kcb[k] = a.kcb[k];
  if (a.vbits)
    for (int k = threadIdx.x; k < (1 << a.vbits); k += blockDim.x) vcb[k] = a.vcb[k];
  __syncthreads();
  const int64_t w = (int64_t)blockIdx.x * kSimpleWarps + warp;
  if (w >= (int64_t)a.B * a.S * a.Hq) return;
  const int d = a.d;
  const int h = (int)(w % a.Hq);
  const int i = (int)((w / a.Hq) % a.S);
  const int b = (int)(w / ((int64_t)a.Hq * a.S));
  const int g = h / (a.Hq / a.Hkv);
  T* out = reinterpret_cast<T*>(a.out) + (((int64_t)b * a.S + i) * a.Hq + h) * d;
  int L, past, nvalid;
  if (!batch_geometry(a.seqlens, b, a.S, a.Pp, L, past, nvalid)) {
    for (int c = lane; c < d; c += 32) out[c] = from_f<T>(__int_as_float(0x7fc00000));
    return;
  }
  if (i >= nvalid) {
    for (int c = lane; c < d; c += 32) out[c] = from_f<T>(0.f);
    return;
  }
  float* buf = bufs[warp];
  float* sq = sqb[warp];
  const int p = past + i;
  const int lo = a.window > 0 ? max(0, p - a.window + 1) : 0;
  const float* q = a.qf + (((int64_t)b * a.S + i) * a.Hq + h) * d;
  float qv[E], qr[E];
#pragma unroll
  for (int e = 0; e < E; ++e) {
    int c = e * 32 + lane;
    qv[e] = c < d ? q[c] : 0.f;
  }
  rotate_fwd<E, HAD>(qv, qr, a.rot, d, lane, buf, a.inv_sqrt_d);
  const float qjl_c = a.use_qjl ? 1.2533141373155003f / (float)a.m : 0.f;
  if (a.use_qjl) {
#pragma unroll
    for (int e = 0; e < E; ++e) {
      int c = e * 32 + lane;
      if (c < d) buf[c] = qr[e];
    }
    __syncwarp();
    for (int j = lane; j < a.m; j += 32) {
      float acc = 0.f;
      for (int k = 0; k < d; ++k) acc += __ldg(a.qjl + (size_t)j * d + k) * buf[k];
      sq[j] = acc * qjl_c;
    }
    __syncwarp();
  }
  const int cw = code_bytes(d, a.kbits) / 4;
  float mx = -INFINITY, l = 0.f;
  float accr[E], accp[E];
#pragma unroll
  for (int e = 0; e < E; ++e) accr[e] = accp[e] = 0.f;
  const int cached_hi = min(past, p + 1);
  // RING: rows only below past - R (the same boundary for every query of the step)
  const int comp_hi = RING ? min(cached_hi, max(0, past - a.R)) : cached_hi;
  const int64_t head_row0 = ((int64_t)b * a.Hkv + g) * a.Pp;
  int rows_lo = lo;
  if (a.pre_o) {  // the rows [lo, comp_hi) were done by prefill_rows_kernel
    const int64_t qi = ((int64_t)b * a.S + i) * a.Hq + h;
    mx = a.pre_ml[2 * qi];
    l = a.pre_ml[2 * qi + 1];
#pragma unroll
    for (int e = 0; e < E; ++e) {
      int c = e * 32 + lane;
      accr[e] = c < d ? a.pre_o[qi * d + c] : 0.f;
    }
    rows_lo = comp_hi;
  }
  for (int j = rows_lo; j < comp_hi; ++j) {
    const uint32_t* kr = reinterpret_cast<const uint32_t*>(a.pk + (head_row0 + j) * a.Rk);
    float dot = 0.f;
#pragma unroll
    for (int e = 0; e < E; ++e) {
      int c = e * 32 + lane;
      if (c < d) dot += qr[e] * kcb[get_bits(kr + 1, c * a.kbits, a.kbits)];
    }
    float s = warp_sum(dot) * __uint_as_float(kr[0]);
    if (a.use_qjl) {
      float t = 0.f;
      for (int jj = lane; jj < a.m; jj += 32) {
        uint32_t bit = (kr[1 + cw + 1 + (jj >> 5)] >> (jj & 31)) & 1u;
        t += bit ? sq[jj] : -sq[jj];
      }
      s += warp_sum(t) * __uint_as_float(kr[1 + cw]);
    }
    s = softcap_f(s * a.scale, a.softcap);
    float mn = fmaxf(mx, s);
    float corr = __expf(mx - mn), pj = __expf(s - mn);
    l = l * corr + pj;
    mx = mn;
    if (a.vbits) {
      const uint32_t* vr = reinterpret_cast<const uint32_t*>(reinterpret_cast<const uint8_t*>(a.pv) + (head_row0 + j) * a.Rv);
      float pvs = pj * __uint_as_float(vr[0]);
#pragma unroll
      for (int e = 0; e < E; ++e) {
        int c = e * 32 + lane;
        float vv = c < d ? vcb[get_bits(vr + 1, c * a.vbits, a.vbits)] : 0.f;
        accr[e] = accr[e] * corr + pvs * vv;
        accp[e] *= corr;
      }
    } else {
      const T* vr = reinterpret_cast<const T*>(a.pv) + (head_row0 + j) * d;
#pragma unroll
      for (int e = 0; e < E; ++e) {
        int c = e * 32 + lane;
        float vv = c < d ? to_f<T>(vr[c]) : 0.f;
        accp[e] = accp[e] * corr + pj * vv;
      }
    }
  }
  if (RING) {
    // Recent cached positions, exactly from the rings (slot j % R; values from the value ring, or
    // from the rows when values are not compressed).
    const int64_t ring0 = ((int64_t)b * a.Hkv + g) * a.R;
    for (int j = max(lo, comp_hi); j < cached_hi; ++j) {
      const T* kk = reinterpret_cast<const T*>(a.kr) + (ring0 + j % a.R) * d;
      float dot = 0.f;
#pragma unroll
      for (int e = 0; e < E; ++e) {
        int c = e * 32 + lane;
        if (c < d) dot += qv[e] * to_f<T>(kk[c]);
      }
      float s = softcap_f(warp_sum(dot) * a.scale, a.softcap);
      float mn = fmaxf(mx, s);
      float corr = __expf(mx - mn), pj = __expf(s - mn);
      l = l * corr + pj;
      mx = mn;
      const T* vv = a.vbits ? reinterpret_cast<const T*>(a.vr) + (ring0 + j % a.R) * d
                            : reinterpret_cast<const T*>(a.pv) + (head_row0 + j) * d;
#pragma unroll
      for (int e = 0; e < E; ++e) {
        int c = e * 32 + lane;
        float x = c < d ? to_f<T>(vv[c]) : 0.f;
        accr[e] *= corr;
        accp[e] = accp[e] * corr + pj * x;
      }
    }
  }
  // New tokens, exact (their float K/V).
  for (int j = max(lo, past); j <= p; ++j) {
    const int jn = j - past;
    const float* kn = a.kf + (((int64_t)b * a.S + jn) * a.Hkv + g) * d;
    const T* vn = reinterpret_cast<const T*>(a.value) + (((int64_t)b * a.S + jn) * a.Hkv + g) * d;
    float dot = 0.f;
#pragma unroll
    for (int e = 0; e < E; ++e) {
      int c = e * 32 + lane;
      if (c < d) dot += qv[e] * kn[c];
    }
    float s = softcap_f(warp_sum(dot) * a.scale, a.softcap);
    float mn = fmaxf(mx, s);
    float corr = __expf(mx - mn), pj = __expf(s - mn);
    l = l * corr + pj;
    mx = mn;
#pragma unroll
    for (int e = 0; e < E; ++e) {
      int c = e * 32 + lane;
      float vv = c < d ? to_f<T>(vn[c]) : 0.f;
      accr[e] *= corr;
      accp[e] = accp[e] * corr + pj * vv;
    }
  }
  float x[E];
  if (a.vbits) {
    rotate_inv<E, HAD>(accr, x, a.rot, d, lane, buf, a.inv_sqrt_d);
  } else {
#pragma unroll
    for (int e = 0; e < E; ++e) x[e] = 0.f;
  }
  const float il = 1.f / l;
#pragma unroll
  for (int e = 0; e < E; ++e) {
    int c = e * 32 + lane;
    if (c < d) out[c] = from_f<T>((x[e] + accp[e]) * il);
  }
}

// ---------------------------------------------------------------------------------------------
// 3c. Prefill, compressed rows (S > 1, no QJL, compressed values, d <= 128): a block per (tile of
// query tokens, kv head, batch) decodes 32 cached rows at a time into shared memory (scale times
// centroid, float32) once for all the tile's kPreQ = QT * G queries (each warp owns 8), instead of one
// warp per query decoding every row. Scores with lane = row, values with lane = coordinate, online
// softmax per query; the result is each query's partial over the rows [lo, comp_hi) (rotated
// accumulator, max, sum), which attn_simple_kernel continues with the ring and the new tokens.
constexpr int kPreWarps = 8, kPreQ = 64, kPreQW = kPreQ / kPreWarps, kPreCh = 32;

__host__ __device__ inline size_t prefill_smem_floats(int d) {
  return 512 + (size_t)d * kPreQ + (size_t)kPreCh * (d + 1) + (size_t)kPreCh * d + kPreWarps * kPreCh * kPreQW +
         (size_t)kPreWarps * d;
}

template <int E, bool HAD>
__global__ void __launch_bounds__(kPreWarps * 32) prefill_rows_kernel(AttnArgs a, float* __restrict__ pre_o,
                                                                     float* __restrict__ pre_ml) {
  extern __shared__ float4 pre_sm4[];
  const int d = a.d, G = a.Hq / a.Hkv, QT = kPreQ / G;
  const int b = blockIdx.z, g = blockIdx.y, i0 = blockIdx.x * QT;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  float* kcb = reinterpret_cast<float*>(pre_sm4);
  float* vcb = kcb + 256;
  float* qs = vcb + 256;                     // [d][kPreQ] rotated queries, a warp's 8 adjacent
  float* Ks = qs + (size_t)d * kPreQ;        // [kPreCh][d + 1] decoded keys (scale folded in)
  float* Vs = Ks + (size_t)kPreCh * (d + 1);  // [kPreCh][d] decoded values (scale folded in)
  float* ps = Vs + (size_t)kPreCh * d;        // [warp][row][8] softmax weights
  float* buf = ps + kPreWarps * kPreCh * kPreQW + (size_t)warp * d;  // this warp's rotation scratch
  for (int k = threadIdx.x; k < (1 << a.kbits); k += blockDim.x) kcb[k] = a.kcb[k];
  for (int k = threadIdx.x; k < (1 << a.vbits); k += blockDim.x) vcb[k] = a.vcb[k];
  int L, past, nvalid;
  if (!batch_geometry(a.seqlens, b, a.S, a.Pp, L, past, nvalid)) return;  // the simple kernel writes NaN
  const int jhi = a.R > 0 ? max(0, past - a.R) : past;
  const int jlo = a.window > 0 ? max(0, past + i0 - a.window + 1) : 0;  // the tile's first query sees most
  // This warp's queries: slot m = warp * 8 + k is token i0 + m / G, head g * G + m % G.
  int qlo[kPreQW];
  bool qok[kPreQW];
#pragma unroll
  for (int k = 0; k < kPreQW; ++k) {
    const int m = warp * kPreQW + k, i = i0 + m / G, h = g * G + m % G;
    qok[k] = m < QT * G && i < nvalid;
    qlo[k] = a.window > 0 ? max(0, past + i - a.window + 1) : 0;
    float qv[E], qr[E];
#pragma unroll
    for (int e = 0; e < E; ++e) {
      const int c = e * 32 + lane;
      qv[e] = (qok[k] && c < d) ? a.qf[(((int64_t)b * a.S + i) * a.Hq + h) * d + c] : 0.f;
    }
    rotate_fwd<E, HAD>(qv, qr, a.rot, d, lane, buf, a.inv_sqrt_d);
#pragma unroll
    for (int e = 0; e < E; ++e) {
      const int c = e * 32 + lane;
      if (c < d) qs[c * kPreQ + m] = qr[e];
    }
  }
  float mx[kPreQW], l[kPreQW], acc[kPreQW][E];
#pragma unroll
  for (int k = 0; k < kPreQW; ++k) {
    mx[k] = -INFINITY;
    l[k] = 0.f;
#pragma unroll
    for (int e = 0; e < E; ++e) acc[k][e] = 0.f;
  }
  const int64_t head_row0 = ((int64_t)b * a.Hkv + g) * a.Pp;
  for (int j0 = jlo; j0 < jhi; j0 += kPreCh) {
    __syncthreads();  // the previous chunk is consumed (and, the first time, qs and the codebooks are in)
    for (int idx = threadIdx.x; idx < kPreCh * d; idx += blockDim.x) {
      const int r = idx / d, c = idx - r * d, j = j0 + r;
      float kv = 0.f, vv = 0.f;
      if (j < jhi) {
        const uint32_t* kr = reinterpret_cast<const uint32_t*>(a.pk + (head_row0 + j) * a.Rk);
        const uint32_t* vr = reinterpret_cast<const uint32_t*>(reinterpret_cast<const uint8_t*>(a.pv) +
                                                               (head_row0 + j) * a.Rv);
        kv = __uint_as_float(kr[0]) * kcb[get_bits(kr + 1, c * a.kbits, a.kbits)];
        vv = __uint_as_float(vr[0]) * vcb[get_bits(vr + 1, c * a.vbits, a.vbits)];
      }
      Ks[r * (d + 1) + c] = kv;
      Vs[r * d + c] = vv;
    }
    __syncthreads();
    // Scores: lane = row of the chunk.
    float sc[kPreQW];
#pragma unroll
    for (int k = 0; k < kPreQW; ++k) sc[k] = 0.f;
    const float* kro = Ks + lane * (d + 1);
    const float* qw = qs + warp * kPreQW;
    for (int c = 0; c < d; ++c) {
      const float kv = kro[c];
      const float4 qa = *reinterpret_cast<const float4*>(qw + c * kPreQ);
      const float4 qb = *reinterpret_cast<const float4*>(qw + c * kPreQ + 4);
      sc[0] = fmaf(qa.x, kv, sc[0]); sc[1] = fmaf(qa.y, kv, sc[1]);
      sc[2] = fmaf(qa.z, kv, sc[2]); sc[3] = fmaf(qa.w, kv, sc[3]);
      sc[4] = fmaf(qb.x, kv, sc[4]); sc[5] = fmaf(qb.y, kv, sc[5]);
      sc[6] = fmaf(qb.z, kv, sc[6]); sc[7] = fmaf(qb.w, kv, sc[7]);
    }
    const int j = j0 + lane;
    float corr[kPreQW];
#pragma unroll
    for (int k = 0; k < kPreQW; ++k) {
      const bool vis = qok[k] && j < jhi && j >= qlo[k];
      const float s = vis ? softcap_f(sc[k] * a.scale, a.softcap) : -INFINITY;
      const float mn = fmaxf(mx[k], warp_max(s));
      const float pj = mn == -INFINITY ? 0.f : __expf(s - mn);
      corr[k] = mn == -INFINITY ? 1.f : __expf(mx[k] - mn);
      l[k] = l[k] * corr[k] + warp_sum(pj);
      mx[k] = mn;
      ps[(warp * kPreCh + lane) * kPreQW + k] = pj;
    }
    __syncwarp();
    // Values: lane = coordinate.
#pragma unroll
    for (int k = 0; k < kPreQW; ++k)
#pragma unroll
      for (int e = 0; e < E; ++e) acc[k][e] *= corr[k];
    for (int r = 0; r < kPreCh; ++r) {
      const float4 pa = *reinterpret_cast<const float4*>(ps + (warp * kPreCh + r) * kPreQW);
      const float4 pb = *reinterpret_cast<const float4*>(ps + (warp * kPreCh + r) * kPreQW + 4);
      const float pk8[kPreQW] = {pa.x, pa.y, pa.z, pa.w, pb.x, pb.y, pb.z, pb.w};
#pragma unroll
      for (int e = 0; e < E; ++e) {
        const int c = e * 32 + lane;
        const float vv = c < d ? Vs[r * d + c] : 0.f;
#pragma unroll
        for (int k = 0; k < kPreQW; ++k) acc[k][e] = fmaf(pk8[k], vv, acc[k][e]);
      }
    }
    __syncwarp();  // ps is rewritten by the next chunk
  }
#pragma unroll
  for (int k = 0; k < kPreQW; ++k) {
    if (!qok[k]) continue;
    const int m = warp * kPreQW + k, i = i0 + m / G, h = g * G + m % G;
    const int64_t qi = ((int64_t)b * a.S + i) * a.Hq + h;
    if (lane == 0) {
      pre_ml[2 * qi] = mx[k];
      pre_ml[2 * qi + 1] = l[k];
    }
#pragma unroll
    for (int e = 0; e < E; ++e) {
      const int c = e * 32 + lane;
      if (c < d) pre_o[qi * d + c] = acc[k][e];
    }
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

// Programmatic dependent launch (sm_90+; no-ops before): the decode step's kernels (two or three)
// overlap each one's launch and prologue with the previous one's tail. pdl_wait: the previous grid has
// completed and its memory is visible; pdl_trigger: the next grid may launch.
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
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

// The decode step's query inputs as the query rotation reads them (decode_query): carried by the
// pre-pass and, when it rotates its own queries (v11), by the split kernel.
struct QueryArgs {
  const void* q;        // T [B, Hq, d], before RoPE
  const void* cosc;     // T [max_pos, d/2] when rotary
  const void* sinc;
  const float* rot;     // the rotation: Hadamard signs [d] or R [d, d]
  int rotary, max_pos, dtype;
  float qscale;         // scale, times log2 e without softcap
  float inv_sqrt_d;     // the Hadamard's normalization (1 for a dense R)
};

// Query head w = b * Hq + h of a decode step, after RoPE (x), and rotated (qr = R x, times `scale`):
// the pre-pass's query warps and decode_split_kernel's own (v11) compute it the same way.
template <int E, bool HAD>
__device__ __forceinline__ void decode_query(const QueryArgs& a, float scale, int64_t w, int past, int d, int lane,
                                             float* buf, float (&x)[E], float (&qr)[E]) {
  load_rope_dt<E>(a.q, w, a.cosc, a.sinc, a.rotary, a.max_pos, past, d, lane, buf, x, a.dtype);
  rotate_fwd<E, HAD>(x, qr, a.rot, d, lane, buf, a.inv_sqrt_d);
#pragma unroll
  for (int e = 0; e < E; ++e) qr[e] *= scale;
}

// Encodes the new token's key (value = false) or value of (b, kv head g) into present row past_len
// (decode step, docs/ops.md 4 "Cache write"). v10: run beside the merge (combine_head's warps), no
// longer in the pre-pass, whose encode warps were the long pole the split kernel waited for.
// buf: 256 + 64 + 32 floats of this warp's shared memory (scratch, code words, codebook and
// boundaries: bits <= 4 on the fast path, fast_path_ok).
template <int E>
__device__ __forceinline__ void encode_new_row(const AttnArgs& a, int b, int g, bool value, int lane, float* buf,
                                               int dt, bool had) {
  int L, past, nvalid;
  if (!batch_geometry(a.seqlens, b, 1, a.Pp, L, past, nvalid)) return;  // the attention outputs NaN
  uint32_t* cw = reinterpret_cast<uint32_t*>(buf + 256);
  float* cb = buf + 320;
  float* bnd = buf + 336;
  const float* cbg = value ? a.vcb : a.kcb;
  const int bits = value ? a.vbits : a.kbits, K = 1 << bits;
  if (lane < K) cb[lane] = cbg[lane];
  if (lane < K - 1) bnd[lane] = __fmul_rn(__fadd_rn(cbg[lane], cbg[lane + 1]), 0.5f);
  float x[E], sgn[E];
  load_rope_dt<E>(value ? a.value : a.key, (int64_t)b * a.Hkv + g, a.cosc, a.sinc, value ? 0 : a.rotary, a.max_pos,
                  past, a.d, lane, buf, x, dt);
#pragma unroll
  for (int e = 0; e < E; ++e) sgn[e] = (had && e * 32 + lane < a.d) ? a.rot[e * 32 + lane] : 0.f;
  __syncwarp();  // the codebook and boundaries
  const int64_t row = ((int64_t)b * a.Hkv + g) * a.Pp + past;
  uint32_t* orow = reinterpret_cast<uint32_t*>(value ? (uint8_t*)a.pv + row * a.Rv : (uint8_t*)a.pk + row * a.Rk);
  const int qjl = value ? 0 : a.use_qjl;
  if (had)
    encode_warp<E, true>(x, a.d, a.rot, nullptr, sgn, cb, bnd, bits, qjl, a.qjl, a.m, orow, a.inv_sqrt_d, buf, cw, lane);
  else
    encode_warp<E, false>(x, a.d, a.rot, nullptr, sgn, cb, bnd, bits, qjl, a.qjl, a.m, orow, a.inv_sqrt_d, buf, cw, lane);
}

// Query head w = b * Hq + h (one warp): merge the splits' partials, rotate back, add the new token
// exactly, normalize, write the output (and the new token's ring slot). Run by decode_combine_kernel;
// waits for the split kernel (grid dependency) after the part that reads inputs only, then reads the
// partials through L2 (__ldcg).
// buf: 256 floats, wts: nsplit <= 512 floats (choose_nsplit), this warp's shared memory. The output
// dtype (dt) and the rotation's kind (had) are run-time values (one instantiation per E).
template <int E>
__device__ __forceinline__ void combine_head(const AttnArgs& a, const float* part_o, const float* part_ml, int nsplit,
                                             int w, int lane, float* buf, float* wts, int dt, bool had) {
  constexpr int kP = 64 / E < 16 ? 64 / E : 16;  // splits whose partial vectors load before their weights are known
  const bool RING = a.R > 0;
  const int d = a.d;
  const int b = w / a.Hq, h = w - b * a.Hq, g = h / (a.Hq / a.Hkv);
  const int64_t ob = (int64_t)w * d;
  int L, past, nvalid;
  if (!batch_geometry(a.seqlens, b, 1, a.Pp, L, past, nvalid)) {
    pdl_wait();  // every merge warp waits: this grid completes after the split kernel
    for (int c = lane; c < d; c += 32) store_dt(a.out, ob + c, __int_as_float(0x7fc00000), dt);
    return;
  }
  // v11: what depends on the inputs only, before the wait for the split kernel: the new token's value,
  // and its score from the query and key after RoPE (exact, float32).
  const int64_t vb = ((int64_t)b * a.Hkv + g) * d;  // the new value in a.value
  float qv[E], kv[E], vv[E], rv[E], pre[kP][E];
#pragma unroll
  for (int e = 0; e < E; ++e) vv[e] = e * 32 + lane < d ? load_dt(a.value, vb + e * 32 + lane, dt) : 0.f;
  load_rope_dt<E>(a.query, w, a.cosc, a.sinc, a.rotary, a.max_pos, past, d, lane, buf, qv, dt);
  load_rope_dt<E>(a.key, (int64_t)b * a.Hkv + g, a.cosc, a.sinc, a.rotary, a.max_pos, past, d, lane, buf, kv, dt);
  float dot = 0.f;
#pragma unroll
  for (int e = 0; e < E; ++e) dot += qv[e] * kv[e];
  const float sn = softcap_f(warp_sum(dot) * a.scale, a.softcap) * kLog2e;
  pdl_wait();  // the split kernel's partials (and, through it, the pre-pass's ring partial)
  // Everything the merge reads, in flight at once (v9; was four dependent rounds): the ring partial,
  // the first kP splits' partial vectors and the splits' (m, l).
  const float* po = part_o + (int64_t)w * nsplit * d;
#pragma unroll
  for (int e = 0; e < E; ++e) {
    const int c = e * 32 + lane;
    const bool in = c < d;
    rv[e] = in && RING ? a.ring_o[ob + c] : 0.f;
#pragma unroll
    for (int s = 0; s < kP; ++s) pre[s][e] = in && s < nsplit ? __ldcg(po + (int64_t)s * d + c) : 0.f;
  }
  float2 ml0 = make_float2(-INFINITY, 0.f);
  if (lane < nsplit) ml0 = __ldcg(reinterpret_cast<const float2*>(part_ml) + (int64_t)w * nsplit + lane);
  const float2 mlr = RING ? *reinterpret_cast<const float2*>(a.ring_ml + (int64_t)w * 2) : make_float2(-INFINITY, 0.f);
  float M = ml0.x;
  for (int s = lane + 32; s < nsplit; s += 32) M = fmaxf(M, __ldcg(part_ml + ((int64_t)w * nsplit + s) * 2));
  M = fmaxf(warp_max(M), mlr.x);
  // Split weights exp2(m_s - M), lane-parallel into shared memory.
  float l = 0.f;
  for (int s = lane; s < nsplit; s += 32) {
    const float2 ms = s < 32 ? ml0 : __ldcg(reinterpret_cast<const float2*>(part_ml) + (int64_t)w * nsplit + s);
    const float f = (M == -INFINITY || ms.x == -INFINITY) ? 0.f : exp2f(ms.x - M);
    wts[s] = f;
    l += f * ms.y;
  }
  l = warp_sum(l);
  const float fr = (M == -INFINITY || mlr.x == -INFINITY) ? 0.f : exp2f(mlr.x - M);
  l += fr * mlr.y;
  __syncwarp();
  float o[E];
#pragma unroll
  for (int e = 0; e < E; ++e) {
    o[e] = 0.f;
#pragma unroll
    for (int s = 0; s < kP; ++s) o[e] += (s < nsplit ? wts[s] : 0.f) * pre[s][e];
  }
#pragma unroll 4
  for (int s = kP; s < nsplit; ++s) {
    const float f = wts[s];
#pragma unroll
    for (int e = 0; e < E; ++e) {
      const int c = e * 32 + lane;
      if (c < d) o[e] += f * __ldcg(po + (int64_t)s * d + c);
    }
  }
  float x[E];
  if (had) rotate_inv<E, true>(o, x, a.rot, d, lane, buf, a.inv_sqrt_d);
  else rotate_inv<E, false>(o, x, a.rot, d, lane, buf, a.inv_sqrt_d);
  // New token (position past), exact.
  const float Mf = fmaxf(M, sn);
  const float fo = exp2f(M - Mf), fn = exp2f(sn - Mf);
  const float il = 1.f / (l * fo + fn);
#pragma unroll
  for (int e = 0; e < E; ++e) {
    const int c = e * 32 + lane;
    if (c < d) store_dt(a.out, ob + c, ((x[e] + fr * rv[e]) * fo + vv[e] * fn) * il, dt);
  }
  // Ring slot of the new token (S = 1: p = past is valid and among the last R), once per kv head,
  // after the pre-pass read the ring (stream order).
  if (RING && h == g * (a.Hq / a.Hkv)) {
    const int64_t off = (((int64_t)b * a.Hkv + g) * a.R + past % a.R) * d;
#pragma unroll
    for (int e = 0; e < E; ++e) {
      const int c = e * 32 + lane;
      if (c >= d) continue;
      if (a.pkr) store_dt(a.pkr, off + c, kv[e], dt);
      if (a.pvr) store_dt(a.pvr, off + c, vv[e], dt);  // exact: T -> float -> T
    }
  }
}

// ---------------------------------------------------------------------------------------------
// 3a. Split-K decode (S == 1) on tensor cores.
//
// Per block: one (batch, kv head), all G <= 16 query heads of the group, a range of cached keys.
// Keys are staged through shared memory (cp.async, double buffered, the rows of one head are one
// contiguous span). Each warp takes 16-key subtiles:
//   scores^T [16 heads x 8 keys] = Q_r [16 x d] * Kc^T, mma.m16n8k16, with the d axis permuted so
//     that each thread's B fragment is 4 consecutive coordinates of one key: two coordinate-pair
//     lookups (2*b-bit index -> half2 of centroids) in a replicated shared-memory table;
//   O^T accumulates P*vscale [16 x 16 keys] * Vc [16 keys x 8 coords] per 8-coordinate tile, with
//     each thread's B fragment a key pair of one coordinate: a (code_a | code_b << b) lookup.
// Values stay in the rotated domain; combine_head rotates back once per output vector.
constexpr int kDecodeWarps = 16;                    // v6: one block of 16 warps per SM (docs/cuda.md)
constexpr int kTileKeys = kDecodeWarps * 16;        // keys per stage at KS = 1 (one 16-key subtile per warp)
constexpr int kLutStride = 256;                     // bytes per table entry: 32 key copies, then 32 value copies
constexpr int kLutV = 128;                          // offset of the value copies inside an entry
constexpr int kQjlLutBytes = 4 * 32 * 4;            // QJL sign-pair table: 4 entries x 32 copies
constexpr int kMbarBytes = 32;                      // the stages' mbarriers (sm_90), before the stages
constexpr int kFinishFloats = 256 + 512;            // shared floats per warp of decode_combine_kernel

struct DecodeArgs {
  const uint8_t* pk;
  const uint8_t* pv;
  const int32_t* seqlens;
  const __half* qh;   // [B, Hq, D] rotated query, times scale (and log2 e when no softcap); from the pre-pass
  const __half* sqh;  // [B, Hq, m] S q_r times the same and sqrt(pi/2)/m
  const float* kcb;
  const float* vcb;
  float* part_o;      // [B*Hq, nsplit, D]
  float* part_ml;     // [B*Hq, nsplit, 2]
  int Hq, Hkv, G, Pp, Rk, Rv, kbits, vbits, m, window, nsplit, stage_bytes;
  int nstages;        // cp.async pipeline depth (2 or 3, what fits in shared memory)
  int lut_bytes;      // table bytes: kLutStride * max(2^(2 kbits), 2^(2 vbits))
  float softcap;
  int R;              // recent window: the rows end at past_len - R (the pre-pass reads the rest)
  // selfq (v11): each block rotates its own G queries (randomized Hadamard, no QJL, no ring), there is
  // no pre-pass; the inputs it reads:
  int selfq;
  QueryArgs qa;
};

__device__ __forceinline__ void mma16816(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                         uint32_t b0, uint32_t b1) {
  // Not volatile: a pure function of its operands, free to be scheduled among the table loads.
  asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// Copy global bytes [g, g+nbytes) (g 4-byte aligned) so that byte x lands at
// sbuf + (x - (g & ~15)); returns the offset of g inside sbuf.
__device__ __forceinline__ int load_span(uint8_t* sbuf, const uint8_t* g, int nbytes) {
  const uintptr_t a = (uintptr_t)g, e = a + nbytes;
  const uintptr_t base = a & ~(uintptr_t)15;
  const uintptr_t a16 = (a + 15) & ~(uintptr_t)15, e16 = e & ~(uintptr_t)15;
  const int tid = threadIdx.x, nt = blockDim.x;
  if (a16 >= e16) {
    for (uintptr_t x = a + 4 * tid; x < e; x += 4 * nt) cp_async4(sbuf + (x - base), (const void*)x);
  } else {
    for (uintptr_t x = a + 4 * tid; x < a16; x += 4 * nt) cp_async4(sbuf + (x - base), (const void*)x);
    for (uintptr_t x = a16 + 16 * tid; x < e16; x += 16 * nt) cp_async16(sbuf + (x - base), (const void*)x);
    for (uintptr_t x = e16 + 4 * tid; x < e; x += 4 * nt) cp_async4(sbuf + (x - base), (const void*)x);
  }
  return (int)(a - base);
}

// sm_90 stage loads (v7): one thread copies a tile's key and value spans with two TMA bulk copies
// that complete on the stage's mbarrier (was: every thread issuing 16-byte cp.async, ~200 of the ~580
// instructions per warp and tile). The copy is the 16-byte aligned superset of the span, byte x landing
// at sbuf + (x - (g & ~15)) as with load_span; where rounding the end up would pass the end of the
// tensor, the last (< 16) bytes are copied by plain loads.
__device__ __forceinline__ void mbar_init(uint32_t bar) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void mbar_inval(uint32_t bar) {
  asm volatile("mbarrier.inval.shared::cta.b64 [%0];\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
  uint32_t done = 0;
  while (!done)
    asm volatile("{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n selp.u32 %0, 1, 0, p;\n}\n"
                 : "=r"(done) : "r"(bar), "r"(parity) : "memory");
}
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
__device__ __forceinline__ void fence_mbar_init() { asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory"); }
__device__ __forceinline__ void mbar_expect_tx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void bulk_g2s(void* dst, const void* src, uint32_t bytes, uint32_t bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n"
               ::"r"(smem_u32(dst)), "l"(src), "r"(bytes), "r"(bar) : "memory");
}
// Bytes of the bulk part of span [g, g + nbytes) (the aligned superset, cut at lim & ~15).
__device__ __forceinline__ uint32_t bulk_bytes(const uint8_t* g, int nbytes, const uint8_t* lim) {
  const uintptr_t a = (uintptr_t)g & ~(uintptr_t)15;
  uintptr_t e = ((uintptr_t)g + nbytes + 15) & ~(uintptr_t)15;
  if (e > (uintptr_t)lim) e = (uintptr_t)lim & ~(uintptr_t)15;
  return e > a ? (uint32_t)(e - a) : 0u;
}
__device__ __forceinline__ void bulk_span(uint8_t* sbuf, const uint8_t* g, int nbytes, uint32_t bulk, uint32_t bar) {
  const uintptr_t a = (uintptr_t)g & ~(uintptr_t)15;
  if (bulk) bulk_g2s(sbuf, (const void*)a, bulk, bar);
  for (uintptr_t x = a + bulk; x < (uintptr_t)g + nbytes; x += 4)  // tail past the last aligned granule of the tensor
    *reinterpret_cast<uint32_t*>(sbuf + (x - a)) = *reinterpret_cast<const uint32_t*>(x);
}
#endif

__device__ __forceinline__ uint32_t h2u(__half2 h) { return *reinterpret_cast<uint32_t*>(&h); }
__device__ __forceinline__ uint32_t pack_h2(float lo, float hi) { return h2u(__floats2half2_rn(lo, hi)); }

// Table word at byte offset `off` of the table, by its absolute shared-memory address: the table is
// the start of dynamic shared memory, at kSmemBase (checked by the kernel; the host checks the GPU's
// reserved shared memory), so the load is one LDS with an immediate offset and no address add.
constexpr uint32_t kSmemBase = 1024;
template <uint32_t IMM>
__device__ __forceinline__ uint32_t lut_word(uint32_t off) {
  uint32_t v;
  asm volatile("ld.shared.b32 %0, [%1+%2];\n" : "=r"(v) : "r"(off), "n"(kSmemBase + IMM));
  return v;
}
// Offset of entry `byte J of w` for this lane's copy (lane4 = 4 * lane < 128): one PRMT puts the
// byte at bits 8-15 (entry stride 256) and the lane's copy offset at bits 0-7.
template <int J>
__device__ __forceinline__ uint32_t byte_entry(uint32_t w, uint32_t lane4) {
  return __byte_perm(w, lane4, 0x5504u | (J << 4));
}
// Transpose of an 8x8 fp16 matrix held in mma fragment layout (row lane/4, columns 2(lane%4), +1).
__device__ __forceinline__ uint32_t movmatrix_t(uint32_t x) {
  uint32_t y;
  asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;\n" : "=r"(y) : "r"(x));
  return y;
}

// B fragments of the score mmas from a row-major [heads, ncols] fp16 matrix m (rotated query or its QJL
// sketch): head 8nb + r, columns c .. c+3 of k-step s, c = 32(s/2) + 8t + 4(s%2); zeros at heads >= G or
// columns >= ncols (the d axis permutation of decode_split_kernel).
template <int NB, int NS>
__device__ __forceinline__ void load_b_frags(const __half* m, int ncols, int G, int r, int t, uint32_t (&f)[NB][NS][2]) {
#pragma unroll
  for (int nb = 0; nb < NB; ++nb)
#pragma unroll
    for (int s = 0; s < NS; ++s) {
      const int c = 32 * (s >> 1) + 8 * t + 4 * (s & 1), hh = 8 * nb + r;
      uint2 v = make_uint2(0u, 0u);
      if (c < ncols && hh < G) v = *reinterpret_cast<const uint2*>(m + (int64_t)hh * ncols + c);
      f[nb][s][0] = v.x;
      f[nb][s][1] = v.y;
    }
}

// Row (of the warp's 16 KS keys) behind key slot k of subtile s. KS = 2: a bit permutation under which
// both the score loads (lane (r, t): slots r and r + 8, word 4u + t) and the value loads (lane (r, t):
// slots 2t + {0, 1} (+ 8), word 8gg + r) hit 32 distinct banks with 68-byte rows (row stride 17 words);
// the natural order had 2-way (keys) and 4-way (values) conflicts, 26% of the shared-memory wavefronts
// (ncu, v8). Any bijection is correct: scores, P and values all use the same slot -> row map.
template <int KS>
__device__ __forceinline__ int slot_row(int s, int k) {
  if (KS == 2) return ((k & 1) << 2) | (((k >> 1) & 3) << 3) | ((k >> 3) & 1) | (s << 1);
  return 16 * s + k;
}

// Entry offsets of the 4 coordinate pairs of a thread's 8 coordinates 32u + 8t .. +7 of one row
// (codes start at word 1 of the row; kmask8 = (2^(2b) - 1) << 8).
template <int KB, int D>
__device__ __forceinline__ void pair_entries(const uint32_t* row, int u, int t, int kb, uint32_t kmask8,
                                             uint32_t lane4, uint32_t (&e)[4]) {
  const bool valid = 32 * u + 8 * t < D;
  if (KB == 4) {
    const uint32_t f = valid ? row[1 + 4 * u + t] : 0u;
    e[0] = byte_entry<0>(f, lane4);
    e[1] = byte_entry<1>(f, lane4);
    e[2] = byte_entry<2>(f, lane4);
    e[3] = byte_entry<3>(f, lane4);
  } else {
    const uint32_t f = valid ? get_bits(row + 1, kb * (32 * u + 8 * t), 8 * kb) : 0u;
    const uint32_t flo = f << 8, fhi = f >> 24;  // f * 256 as a 40-bit value
#pragma unroll
    for (int p = 0; p < 4; ++p) e[p] = (__funnelshift_r(flo, fhi, 2 * kb * p) & kmask8) | lane4;
  }
}

// After the split kernel (launched by PDL): one warp per new key and new value row (encode_new_row,
// v10), then one warp per (b, query head) running combine_head. The encode warps read inputs only and
// write rows the split kernel never reads, so they start at once (at B = 1 on the SMs the split grid
// leaves idle); the merge warps wait for the split kernel's partials.
template <int E>
__global__ void __launch_bounds__(128) decode_combine_kernel(AttnArgs a, const float* __restrict__ part_o,
                                                             const float* __restrict__ part_ml, int nsplit, int dt, int had) {
  __shared__ float bufs[4][kFinishFloats];  // per warp: 256 scratch floats, then nsplit <= 512 weights (choose_nsplit)
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int w = blockIdx.x * 4 + warp, nk = a.B * a.Hkv;
  if (w < 2 * nk) {
    encode_new_row<E>(a, (w % nk) / a.Hkv, w % a.Hkv, w >= nk, lane, bufs[warp], dt, had != 0);
    return;
  }
  if (w - 2 * nk < a.B * a.Hq)  // it waits for the split kernel's partials once its input-only part is done
    combine_head<E>(a, part_o, part_ml, nsplit, w - 2 * nk, lane, bufs[warp], bufs[warp] + 256, dt, had != 0);
}

// v6 (docs/cuda.md). Per block: one (batch, kv head), all G <= 16 query heads of the group, a range of
// cached keys, 16 warps (one block per SM), a 2- or 3-stage cp.async pipeline of 256 keys per stage.
// Per warp and 16-key subtile:
//   S [16 keys x 8 heads] = Kc [16 keys x d] * Q_r^T: the key codes are the A operand (4 lookups per
//     thread per k-step: keys r, r+8, two coordinate pairs each), the rotated query the B operand;
//   softmax per head column (the heads of a thread's accumulator columns are its own: no shuffles);
//   P^T as the B operand of the value mma by one movmatrix.trans per 8 keys;
//   O^T [16 coords x 8 heads] += Vc^T [coords x 16 keys] * P^T, the value codes the A operand.
// Lookups: one table of 2b-bit coordinate-pair entries (half2 of centroids), 32 copies per entry
// (lane L reads copy L: no bank conflicts), key and value copies side by side at a 256-byte stride,
// so an entry offset is one PRMT (b = 4) or a funnel shift and a LOP3 (other b). The d axis is
// permuted so that k-step s (u = s/2, h = s%2) holds, for thread t, coordinates c = 32u + 8t + 4h +
// {0,1 | 2,3}: one 32-bit code word (b = 4) feeds two k-steps. G > 8 (BIGG): a second n8 tile of
// heads shares the A fragments. KB / VB: compile-time bit widths, 0 = run time.
template <int D, bool QJL, bool BIGG, int KB, int VB, int KS>
__global__ void __launch_bounds__(kDecodeWarps * 32, 1) decode_split_kernel(DecodeArgs a) {
  constexpr int TK = kTileKeys * KS;  // keys per stage: KS 16-key subtiles per warp
  constexpr bool SC2 = !BIGG && D <= 128;
  constexpr int NU = (D + 31) / 32;   // pairs of k-steps of the score mma (32 coordinates each)
  constexpr int NG = (D + 63) / 64;   // groups of 8 value tiles (64 coordinates)
  constexpr int NB = BIGG ? 2 : 1;    // n8 tiles of heads
  constexpr int NMT = 4 * NG;         // m16 tiles of coordinates of the value accumulator
  extern __shared__ float4 smem4[];
  uint8_t* smem = reinterpret_cast<uint8_t*>(smem4);
  const int kb = KB ? KB : a.kbits, vb = VB ? VB : a.vbits;
  uint32_t* lutQ = reinterpret_cast<uint32_t*>(smem + a.lut_bytes);
  uint8_t* stages = smem + a.lut_bytes + (QJL ? kQjlLutBytes : 0) + kMbarBytes;
  const int split = blockIdx.x, g = blockIdx.y, b = blockIdx.z;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int r = lane >> 2, t = lane & 3;
  const uint32_t lane4 = 4u * lane;
  const int64_t prow0 = ((int64_t)b * a.Hq + (int64_t)g * a.G);
  // Not the layout lut_word assumes: no table lookups, NaN partials (NaN outputs), never silent garbage.
  const bool bad = smem_u32(smem) != kSmemBase;

  const int L = a.seqlens[b] + 1;
  const bool ok = L >= 1 && L <= a.Pp;
  const int past = ok ? L - 1 : 0;
  const int chi = a.R > 0 ? max(0, past - a.R) : past;  // end of the compressed segment
  const int lo = (a.window > 0) ? max(0, past - a.window + 1) : 0;
  const int ncached = max(0, chi - lo);
  int chunk = (ncached + a.nsplit - 1) / a.nsplit;
  chunk = (chunk + 15) & ~15;
  const int kbeg = lo + split * chunk;
  const int kend = min(chi, kbeg + chunk);

  const int64_t hrow0 = ((int64_t)b * a.Hkv + g) * a.Pp;
  const uint8_t* gK = a.pk + hrow0 * a.Rk;
  const uint8_t* gV = a.pv + hrow0 * a.Rv;
  const int ntiles = kend > kbeg && !bad ? (kend - kbeg + TK - 1) / TK : 0;
  const int kspan = ((TK * a.Rk + 16 + 8) + 15) & ~15;
  const int NST = a.nstages;
  int ld_stage = 0;  // stage of the next tile to load (tiles go round the stages)
  const uint32_t bar0 = smem_u32(stages) - kMbarBytes;  // one mbarrier per stage (sm_90)
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  constexpr bool kTma = true;
  const uint8_t* limK = a.pk + (int64_t)gridDim.z * a.Hkv * a.Pp * a.Rk;  // ends of the row tensors
  const uint8_t* limV = a.pv + (int64_t)gridDim.z * a.Hkv * a.Pp * a.Rv;
  auto issue = [&](int tile) {  // thread 0 only
    const int k0 = kbeg + tile * TK, n = min(TK, kend - k0);
    uint8_t* sb = stages + ld_stage * a.stage_bytes;
    const uint8_t *g0 = gK + (int64_t)k0 * a.Rk, *g1 = gV + (int64_t)k0 * a.Rv;
    const uint32_t bk = bulk_bytes(g0, n * a.Rk, limK), bv = bulk_bytes(g1, n * a.Rv, limV);
    const uint32_t bar = bar0 + 8 * ld_stage;
    mbar_expect_tx(bar, bk + bv);
    bulk_span(sb, g0, n * a.Rk, bk, bar);
    bulk_span(sb + kspan, g1, n * a.Rv, bv, bar);
    ld_stage = ld_stage + 1 == NST ? 0 : ld_stage + 1;
  };
  if (tid == 0) {
    for (int s = 0; s < NST; ++s) mbar_init(bar0 + 8 * s);
    fence_mbar_init();
    for (int s = 0; s < NST - 1 && s < ntiles; ++s) issue(s);  // in flight while the tables are built
  }
#else
  constexpr bool kTma = false;
  auto issue = [&](int tile) {
    const int k0 = kbeg + tile * TK, n = min(TK, kend - k0);
    uint8_t* sb = stages + ld_stage * a.stage_bytes;
    load_span(sb, gK + (int64_t)k0 * a.Rk, n * a.Rk);
    load_span(sb + kspan, gV + (int64_t)k0 * a.Rv, n * a.Rv);
    ld_stage = ld_stage + 1 == NST ? 0 : ld_stage + 1;
  };
  for (int s = 0; s < NST - 1; ++s) {  // in flight while the tables are built
    if (s < ntiles) issue(s);
    cp_commit();
  }
#endif
  {
    const int nk = 1 << (2 * kb), nv = 1 << (2 * vb), ne = max(nk, nv);
    for (int i = tid; i < ne * 16; i += blockDim.x) {  // an entry is 16 uint4: 8 of key copies, 8 of value copies
      const int e = i >> 4;
      uint32_t v = 0u;
      if ((i & 15) < 8) {
        if (e < nk) v = pack_h2(a.kcb[e & ((1 << kb) - 1)], a.kcb[e >> kb]);
      } else if (e < nv) {
        v = pack_h2(a.vcb[e & ((1 << vb) - 1)], a.vcb[e >> vb]);
      }
      reinterpret_cast<uint4*>(smem)[i] = make_uint4(v, v, v, v);
    }
    if (QJL)
      for (int i = tid; i < 4 * 32; i += blockDim.x) {
        const int e = i >> 5;
        lutQ[i] = pack_h2((e & 1) ? 1.f : -1.f, (e >> 1) ? 1.f : -1.f);
      }
  }

  // B fragments of the rotated query (and of its QJL sketch, m columns: m % 32 == 0, m <= 256).
  uint32_t qb[NB][2 * NU][2];
  if (a.selfq) {
    // v11: warp h < G rotates query head h itself (no pre-pass launch to wait for), into the last
    // stage's buffer, which the pipeline fills only after the first tile's barrier (decode_selfq
    // checks that it holds G*D halves and G*D floats).
    __half* qs = reinterpret_cast<__half*>(stages + (NST - 1) * a.stage_bytes);
    float* qbuf = reinterpret_cast<float*>(qs + a.G * D) + warp * D;
    if (warp < a.G) {
      constexpr int E = (D + 31) / 32;
      float x[E], qr[E];
      decode_query<E, true>(a.qa, a.qa.qscale, prow0 + warp, past, D, lane, qbuf, x, qr);
#pragma unroll
      for (int e = 0; e < E; ++e)
        if (e * 32 + lane < D) qs[warp * D + e * 32 + lane] = __float2half_rn(qr[e]);
    }
    __syncthreads();  // tables built, mbarriers initialized, queries rotated
    load_b_frags(qs, D, a.G, r, t, qb);
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");  // these generic accesses before the stage's bulk copy
#endif
  } else {
    __syncthreads();  // tables built, mbarriers initialized
    // Everything above reads inputs only (rows below past_len, codebooks); the rotated query (and its
    // QJL sketch) is the pre-pass's output.
    pdl_wait();
    load_b_frags(a.qh + prow0 * D, D, a.G, r, t, qb);
  }
  pdl_trigger();  // decode_combine_kernel may launch (its merge warps wait for this grid, its encode warps do not)
  constexpr int NQU = QJL ? 8 : 1;
  uint32_t sb_[NB][2 * NQU][2];
  const int nqu = QJL ? a.m / 32 : 0;
  if (QJL) load_b_frags(a.sqh + prow0 * a.m, a.m, a.G, r, t, sb_);
  const uint32_t vmask = (1u << vb) - 1u;
  const uint32_t kmask8 = ((1u << (2 * kb)) - 1u) << 8;
  const int rnw = rnorm_word(D, kb);
  const int sgw = signs_word(D, kb);

  // Running max (log2 domain) and partial sum of heads 8nb + 2t + j; O^T accumulators: m16 tile mt
  // (slot r <-> coordinate 64*(mt/4) + 8r + 2*(mt%4), slot r+8 <-> +1) x heads 8nb + 2t, +1.
  float mrun[NB][2], lrun[NB][2];
  float oacc[NMT][NB][4];
#pragma unroll
  for (int nb = 0; nb < NB; ++nb) {
    mrun[nb][0] = mrun[nb][1] = -INFINITY;
    lrun[nb][0] = lrun[nb][1] = 0.f;
#pragma unroll
    for (int mt = 0; mt < NMT; ++mt)
#pragma unroll
      for (int k = 0; k < 4; ++k) oacc[mt][nb][k] = 0.f;
  }

  int rd_stage = 0;
  uint32_t parity = 0;  // bit s: the phase of stage s's mbarrier to wait for
  for (int it = 0; it < ntiles; ++it) {
    if constexpr (kTma) {
      mbar_wait(bar0 + 8 * rd_stage, (parity >> rd_stage) & 1u);
      parity ^= 1u << rd_stage;
    } else if (NST == 3) {
      cp_wait<1>();
    } else {
      cp_wait<0>();
    }
    __syncthreads();  // tile `it` landed for every thread; every warp is done with tile it - 1
    if (it + NST - 1 < ntiles && (!kTma || tid == 0)) issue(it + NST - 1);  // into the stage of tile it - 1
    if constexpr (!kTma) cp_commit();
    const int t0 = kbeg + it * TK;
    const int nrows = min(TK, kend - t0);
    const uint8_t* sbuf = stages + rd_stage * a.stage_bytes;
    rd_stage = rd_stage + 1 == NST ? 0 : rd_stage + 1;
    const int sub0 = warp * 16 * KS;
    if (sub0 >= nrows) continue;
    const uint8_t* sK = sbuf + ((uintptr_t)(gK + (int64_t)t0 * a.Rk) & 15);
    const uint8_t* sV = sbuf + kspan + ((uintptr_t)(gV + (int64_t)t0 * a.Rv) & 15);
    // ---- S [keys r, r+8 of subtile s x heads 2t, 2t+1 (| +8)]: per subtile two independent mma
    // chains (even / odd k-steps), summed at the end (v8: was one chain of 2 NU dependent mmas), where
    // the registers allow (SC2).
    bool okA[KS], okB[KS];
    const uint32_t* krA[KS];
    const uint32_t* krB[KS];
    float sc[KS][NB][4], sc2[KS][NB][4];
#pragma unroll
    for (int s = 0; s < KS; ++s) {
      const int kA = sub0 + slot_row<KS>(s, r), kB = sub0 + slot_row<KS>(s, r + 8);
      okA[s] = kA < nrows;
      okB[s] = kB < nrows;
      krA[s] = reinterpret_cast<const uint32_t*>(sK + (int64_t)min(kA, nrows - 1) * a.Rk);
      krB[s] = reinterpret_cast<const uint32_t*>(sK + (int64_t)min(kB, nrows - 1) * a.Rk);
#pragma unroll
      for (int nb = 0; nb < NB; ++nb)
#pragma unroll
        for (int k = 0; k < 4; ++k) sc[s][nb][k] = sc2[s][nb][k] = 0.f;
    }
#pragma unroll
    for (int uu = 0; uu < NU; ++uu)
#pragma unroll
      for (int s = 0; s < KS; ++s) {
        uint32_t eA[4], eB[4];
        pair_entries<KB, D>(krA[s], uu, t, kb, kmask8, lane4, eA);
        pair_entries<KB, D>(krB[s], uu, t, kb, kmask8, lane4, eB);
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const uint32_t a0 = lut_word<0>(eA[2 * h]), a2 = lut_word<0>(eA[2 * h + 1]);
          const uint32_t a1 = lut_word<0>(eB[2 * h]), a3 = lut_word<0>(eB[2 * h + 1]);
#pragma unroll
          for (int nb = 0; nb < NB; ++nb)
            mma16816(h && SC2 ? sc2[s][nb] : sc[s][nb], a0, a1, a2, a3, qb[nb][2 * uu + h][0], qb[nb][2 * uu + h][1]);
        }
      }
#pragma unroll
    for (int s = 0; s < KS; ++s) {
      const float ksA = __uint_as_float(krA[s][0]), ksB = __uint_as_float(krB[s][0]);
      float fA[NB][2], fB[NB][2];  // the score's QJL term, or nothing
#pragma unroll
      for (int nb = 0; nb < NB; ++nb) fA[nb][0] = fA[nb][1] = fB[nb][0] = fB[nb][1] = 0.f;
      if (QJL) {
        float qc[NB][4];
#pragma unroll
        for (int nb = 0; nb < NB; ++nb) qc[nb][0] = qc[nb][1] = qc[nb][2] = qc[nb][3] = 0.f;
#pragma unroll
        for (int uu = 0; uu < NQU; ++uu) {
          if (uu < nqu) {
            const uint32_t gA = (krA[s][sgw + uu] >> (8 * t)) & 0xFFu, gB = (krB[s][sgw + uu] >> (8 * t)) & 0xFFu;
#pragma unroll
            for (int h = 0; h < 2; ++h) {
              const uint32_t a0 = lutQ[((gA >> (4 * h)) & 3u) * 32 + lane], a2 = lutQ[((gA >> (4 * h + 2)) & 3u) * 32 + lane];
              const uint32_t a1 = lutQ[((gB >> (4 * h)) & 3u) * 32 + lane], a3 = lutQ[((gB >> (4 * h + 2)) & 3u) * 32 + lane];
#pragma unroll
              for (int nb = 0; nb < NB; ++nb) mma16816(qc[nb], a0, a1, a2, a3, sb_[nb][2 * uu + h][0], sb_[nb][2 * uu + h][1]);
            }
          }
        }
        const float rnA = __uint_as_float(krA[s][rnw]), rnB = __uint_as_float(krB[s][rnw]);
#pragma unroll
        for (int nb = 0; nb < NB; ++nb) {
          fA[nb][0] = qc[nb][0] * rnA;
          fA[nb][1] = qc[nb][1] * rnA;
          fB[nb][0] = qc[nb][2] * rnB;
          fB[nb][1] = qc[nb][3] * rnB;
        }
      }
#pragma unroll
      for (int nb = 0; nb < NB; ++nb)
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          const bool lo = k < 2;
          float v = (sc[s][nb][k] + sc2[s][nb][k]) * (lo ? ksA : ksB) + (lo ? fA[nb][k] : fB[nb][k - 2]);
          if (a.softcap > 0.f) v = a.softcap * tanhf(v / a.softcap) * kLog2e;
          sc[s][nb][k] = (lo ? okA[s] : okB[s]) ? v : -INFINITY;
        }
    }
    // ---- online softmax per head column (max over the warp's 16 KS keys: lanes of equal t); rescale
    // only when a max moved.
    float mx[NB][2];
    bool moved = false;
#pragma unroll
    for (int nb = 0; nb < NB; ++nb)
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        float v = fmaxf(sc[0][nb][j], sc[0][nb][j + 2]);
#pragma unroll
        for (int s = 1; s < KS; ++s) v = fmaxf(v, fmaxf(sc[s][nb][j], sc[s][nb][j + 2]));
        v = fmaxf(v, __shfl_xor_sync(kFull, v, 4));
        v = fmaxf(v, __shfl_xor_sync(kFull, v, 8));
        v = fmaxf(v, __shfl_xor_sync(kFull, v, 16));
        mx[nb][j] = v;
        moved |= v > mrun[nb][j];
      }
    if (__any_sync(kFull, moved)) {
#pragma unroll
      for (int nb = 0; nb < NB; ++nb)
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          const float mn = fmaxf(mrun[nb][j], mx[nb][j]);
          const float c = mn == -INFINITY ? 1.f : exp2f(mrun[nb][j] - mn);
          mrun[nb][j] = mn;
          lrun[nb][j] *= c;
#pragma unroll
          for (int mt = 0; mt < NMT; ++mt) {
            oacc[mt][nb][j] *= c;
            oacc[mt][nb][j + 2] *= c;
          }
        }
    }
    // ---- P * vscale (keys r, r+8 of each subtile), transposed into the B fragments of the value mma.
    uint32_t bp[KS][NB][2];
#pragma unroll
    for (int s = 0; s < KS; ++s) {
      const int kA = sub0 + slot_row<KS>(s, r), kB = sub0 + slot_row<KS>(s, r + 8);
      const float vsA = okA[s] ? __uint_as_float(*reinterpret_cast<const uint32_t*>(sV + (int64_t)kA * a.Rv)) : 0.f;
      const float vsB = okB[s] ? __uint_as_float(*reinterpret_cast<const uint32_t*>(sV + (int64_t)kB * a.Rv)) : 0.f;
#pragma unroll
      for (int nb = 0; nb < NB; ++nb) {
        const float mu0 = mrun[nb][0] == -INFINITY ? 0.f : mrun[nb][0];
        const float mu1 = mrun[nb][1] == -INFINITY ? 0.f : mrun[nb][1];
        const float p0 = exp2f(sc[s][nb][0] - mu0), p1 = exp2f(sc[s][nb][1] - mu1);
        const float p2 = exp2f(sc[s][nb][2] - mu0), p3 = exp2f(sc[s][nb][3] - mu1);
        lrun[nb][0] += p0 + p2;
        lrun[nb][1] += p1 + p3;
        bp[s][nb][0] = movmatrix_t(pack_h2(p0 * vsA, p1 * vsA));  // keys 2t, 2t+1 of head r
        bp[s][nb][1] = movmatrix_t(pack_h2(p2 * vsB, p3 * vsB));  // keys 2t+8, 2t+9
      }
    }
    // ---- O^T += Vc^T * P^T: A fragment = key pairs (2t, 2t+1 | 2t+8, 2t+9) of coordinates in chunk r.
    const uint32_t* vr[KS][4];
#pragma unroll
    for (int s = 0; s < KS; ++s)
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const int kk = sub0 + slot_row<KS>(s, 2 * t + (q & 1) + 8 * (q >> 1));
        vr[s][q] = reinterpret_cast<const uint32_t*>(sV + (int64_t)min(kk, nrows - 1) * a.Rv);
      }
#pragma unroll
    for (int gg = 0; gg < NG; ++gg)
#pragma unroll
      for (int s = 0; s < KS; ++s) {
        const int chunkc = 8 * gg + r;
        const bool vok = 8 * chunkc < D;
        uint32_t x[4];
#pragma unroll
        for (int q = 0; q < 4; ++q) {
          if (VB == 4) x[q] = vok ? vr[s][q][1 + chunkc] : 0u;
          else x[q] = vok ? get_bits(vr[s][q] + 1, 8 * vb * chunkc, 8 * vb) : 0u;
        }
        uint32_t av[4][4];  // [j][a0..a3]: entry offsets of coordinate tile 4gg + j
        if (VB == 4) {
          // byte k of y0 / y1: (code_a | code_b << 4) of coordinate 2k / 2k+1 of the chunk
          const uint32_t y0 = (x[0] & 0x0F0F0F0Fu) | ((x[1] << 4) & 0xF0F0F0F0u);
          const uint32_t y1 = ((x[0] >> 4) & 0x0F0F0F0Fu) | (x[1] & 0xF0F0F0F0u);
          const uint32_t z0 = (x[2] & 0x0F0F0F0Fu) | ((x[3] << 4) & 0xF0F0F0F0u);
          const uint32_t z1 = ((x[2] >> 4) & 0x0F0F0F0Fu) | (x[3] & 0xF0F0F0F0u);
#define TQ_VENT(J)                                                                                 \
  av[J][0] = byte_entry<J>(y0, lane4), av[J][1] = byte_entry<J>(y1, lane4), av[J][2] = byte_entry<J>(z0, lane4), \
  av[J][3] = byte_entry<J>(z1, lane4);
          TQ_VENT(0)
          TQ_VENT(1)
          TQ_VENT(2)
          TQ_VENT(3)
#undef TQ_VENT
        } else if (VB == 3) {
          // v13: the 3-bit codes of two keys interleaved by masks (was per entry: two shifts, two ANDs,
          // a shift and OR, a shift and OR). e0 holds (code_a | code_b << 3) of coordinates 0, 2, 4, 6
          // of the chunk in 6-bit fields at bit 8 + 6k, e1 those of 1, 3, 5, 7; an entry is then one
          // shift and one LOP3.
          constexpr uint32_t kM = 0x001C71C7u;  // 3-bit groups 0, 2, 4, 6
          auto pairs = [&](uint32_t xa, uint32_t xb, uint32_t& e0, uint32_t& e1) {
            e0 = ((xa & kM) | ((xb & kM) << 3)) << 8;
            e1 = (((xa >> 3) & kM) | (xb & (kM << 3))) << 8;
          };
          uint32_t e[4];
          pairs(x[0], x[1], e[0], e[1]);
          pairs(x[2], x[3], e[2], e[3]);
#pragma unroll
          for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int q = 0; q < 4; ++q) av[j][q] = ((e[q] >> (6 * j)) & 0x3F00u) | lane4;
        } else {
          auto ent = [&](uint32_t xa, uint32_t xb, int c) -> uint32_t {
            return ((((xa >> (vb * c)) & vmask) | (((xb >> (vb * c)) & vmask) << vb)) << 8) | lane4;
          };
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            av[j][0] = ent(x[0], x[1], 2 * j);
            av[j][1] = ent(x[0], x[1], 2 * j + 1);
            av[j][2] = ent(x[2], x[3], 2 * j);
            av[j][3] = ent(x[2], x[3], 2 * j + 1);
          }
        }
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const uint32_t a0 = lut_word<kLutV>(av[j][0]), a1 = lut_word<kLutV>(av[j][1]);
          const uint32_t a2 = lut_word<kLutV>(av[j][2]), a3 = lut_word<kLutV>(av[j][3]);
#pragma unroll
          for (int nb = 0; nb < NB; ++nb) mma16816(oacc[4 * gg + j][nb], a0, a1, a2, a3, bp[s][nb][0], bp[s][nb][1]);
        }
      }
  }
  if constexpr (kTma) {
    __syncthreads();  // every wait is done: the mbarriers' memory joins the merge space
    if (tid == 0)
      for (int s = 0; s < NST; ++s) mbar_inval(bar0 + 8 * s);
  } else {
    cp_wait<0>();
  }
#pragma unroll
  for (int nb = 0; nb < NB; ++nb)
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      float v = lrun[nb][j];
      v += __shfl_xor_sync(kFull, v, 4);
      v += __shfl_xor_sync(kFull, v, 8);
      v += __shfl_xor_sync(kFull, v, 16);
      lrun[nb][j] = v;
    }
  // ---- merge the warps' partials by a tree in the accumulators' own layout (warp w takes w + half).
  constexpr int NF = NB * (NMT * 4 + 4);  // floats per lane: accumulators, then m and l per column
  float* mb = reinterpret_cast<float*>(smem);
#pragma unroll 1
  for (int half = kDecodeWarps / 2; half >= 1; half >>= 1) {
    __syncthreads();  // the previous round's reads (or the main loop's shared-memory reads) are done
    if (warp >= half && warp < 2 * half) {
      float* dst = mb + (warp - half) * NF * 32 + lane;
#pragma unroll
      for (int nb = 0; nb < NB; ++nb) {
#pragma unroll
        for (int mt = 0; mt < NMT; ++mt)
#pragma unroll
          for (int k = 0; k < 4; ++k) dst[(nb * NMT * 4 + mt * 4 + k) * 32] = oacc[mt][nb][k];
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          dst[(NB * NMT * 4 + nb * 4 + j) * 32] = mrun[nb][j];
          dst[(NB * NMT * 4 + nb * 4 + 2 + j) * 32] = lrun[nb][j];
        }
      }
    }
    __syncthreads();
    if (warp < half) {
      const float* src = mb + warp * NF * 32 + lane;
#pragma unroll
      for (int nb = 0; nb < NB; ++nb)
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          const float pm = src[(NB * NMT * 4 + nb * 4 + j) * 32], pl = src[(NB * NMT * 4 + nb * 4 + 2 + j) * 32];
          const float mn = fmaxf(mrun[nb][j], pm);
          const float c = mn == -INFINITY ? 0.f : exp2f(mrun[nb][j] - mn);
          const float pc = mn == -INFINITY ? 0.f : exp2f(pm - mn);
          lrun[nb][j] = lrun[nb][j] * c + pl * pc;
          mrun[nb][j] = mn;
#pragma unroll
          for (int mt = 0; mt < NMT; ++mt) {
            oacc[mt][nb][j] = oacc[mt][nb][j] * c + src[(nb * NMT * 4 + mt * 4 + j) * 32] * pc;
            oacc[mt][nb][j + 2] = oacc[mt][nb][j + 2] * c + src[(nb * NMT * 4 + mt * 4 + j + 2) * 32] * pc;
          }
        }
    }
  }
  if (warp == 0) {
#pragma unroll
    for (int nb = 0; nb < NB; ++nb)
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        const int h = 8 * nb + 2 * t + j;
        if (h >= a.G) continue;
        float* po = a.part_o + ((prow0 + h) * a.nsplit + split) * D;
#pragma unroll
        for (int mt = 0; mt < NMT; ++mt) {
          const int cA = 64 * (mt >> 2) + 8 * r + 2 * (mt & 3);
          if (cA < D) *reinterpret_cast<float2*>(po + cA) = make_float2(oacc[mt][nb][j], oacc[mt][nb][j + 2]);
        }
        if (r == 0)
          *reinterpret_cast<float2*>(a.part_ml + ((prow0 + h) * a.nsplit + split) * 2) =
              bad ? make_float2(0.f, __int_as_float(0x7fc00000)) : make_float2(mrun[nb][j], lrun[nb][j]);
      }
  }
}

// Decode step (S == 1) pre-pass, where the split kernel does not rotate its queries itself (v11: dense
// rotation, QJL or a recent window): warps [0, B*Hq) rope + rotate the queries (fp16 rotated query and
// QJL sketch for the split kernel); with a recent window, B*Hkv more blocks compute the ring segment's
// partials. (v5 fused prep_qk, the encodes and decode_prep into this launch; v10 moved the new rows'
// encode and v11 the merge's float copies of q and k to decode_combine_kernel.)
struct PreArgs {
  QueryArgs qa;
  const int32_t* seqlens;
  const float* S;
  __half* qh;
  __half* sqh;
  int B, Hq, Hkv, d, Pp, use_qjl, m;
  // recent window (RING): B*Hkv more blocks, the exact partials of the ring segment
  const void* kr;
  const void* vr;
  float* ring_o;   // [B*Hq, d]
  float* ring_ml;  // [B*Hq, 2]
  int R, window, ring_tk;  // ring_tk: keys per shared-memory tile of a RING block
  float scale, softcap;
};

// Two consecutive T (4-byte aligned for 16-bit T, 8-byte for float) as float2.
template <typename T> __device__ __forceinline__ float2 to_f2(const T* p);
template <> __device__ __forceinline__ float2 to_f2<float>(const float* p) { return *reinterpret_cast<const float2*>(p); }
template <> __device__ __forceinline__ float2 to_f2<__half>(const __half* p) {
  return __half22float2(*reinterpret_cast<const __half2*>(p));
}
template <> __device__ __forceinline__ float2 to_f2<__nv_bfloat16>(const __nv_bfloat16* p) {
  return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(p));
}

// 16 bytes of T (8 halves or 4 floats) dotted with q[0 ..), accumulated into acc.
template <typename T>
__device__ __forceinline__ float dot16(const uint4& u, const float* q, float acc) {
  const T* e = reinterpret_cast<const T*>(&u);
#pragma unroll
  for (int k = 0; k < (int)(16 / sizeof(T)); ++k) acc = fmaf(q[k], to_f<T>(e[k]), acc);
  return acc;
}

// Stage ring positions r0 + t0 .. + nk (slots modulo R) of K and V into shared memory (cp.async,
// committed as one group; plain copies when the rings are not 16-byte aligned).
template <typename T>
__device__ __forceinline__ void ring_stage(const T* kring, const T* vring, uint8_t* Ks, uint8_t* Vs, int kstride,
                                           int rowb, int d, int R, int first, int nk, bool vec) {
  const int rowg = rowb / 16;
  for (int x = threadIdx.x; x < nk * rowg; x += blockDim.x) {
    const int j = x / rowg, u = x - j * rowg;
    const int64_t slot = (first + j) % R;
    const uint8_t* ksrc = reinterpret_cast<const uint8_t*>(kring + slot * d) + 16 * u;
    const uint8_t* vsrc = reinterpret_cast<const uint8_t*>(vring + slot * d) + 16 * u;
    uint8_t* kdst = Ks + j * kstride + 16 * u;
    uint8_t* vdst = Vs + j * rowb + 16 * u;
    if (vec) {
      cp_async16(kdst, ksrc);
      cp_async16(vdst, vsrc);
    } else {
#pragma unroll
      for (int k = 0; k < (int)(16 / sizeof(T)); ++k) {
        reinterpret_cast<T*>(kdst)[k] = reinterpret_cast<const T*>(ksrc)[k];
        reinterpret_cast<T*>(vdst)[k] = reinterpret_cast<const T*>(vsrc)[k];
      }
    }
  }
  cp_commit();
}

// RING blocks of the pre-pass (one per (b, kv head), after the warp jobs' blocks): the exact partial
// of the ring segment [max(lo, past - R), past) for the G query heads of the group, in the split
// kernel's format (max in the log2 domain of the scaled, softcapped scores; sum; unrotated value
// accumulator), for the combine. Latency matters more than work here (it runs beside the encode
// warps, before the split kernel): the segment's K and V rows are staged through shared memory with
// cp.async (all in flight at once, TK keys per tile), then scores (thread per (head, key)), the
// softmax per head (warp per head) and the values (thread per (head, coordinate pair)) run from there.
// v1 used one warp per query head walking the ring from global memory: +16 us at 128K (a memory
// latency per key in the value loop, the rings evicted from L2 by the rows), +6 us at 16K; v2 (these
// blocks with a scalar value loop and the queries loaded one element at a time) +3.7 / +3.1 us; v3
// (this code) +1.2 / +0.6 us (docs/cuda.md, "Recent window").
template <typename T>
__device__ __forceinline__ void decode_ring_block(const PreArgs& a, int bg, uint8_t* dyn) {
  const int d = a.d, G = a.Hq / a.Hkv, TK = a.ring_tk;
  const int b = bg / a.Hkv, g = bg - b * a.Hkv;
  const int tid = threadIdx.x, nt = blockDim.x, warp = tid >> 5, lane = tid & 31;
  const int Gd = G * d;
  float* qs = reinterpret_cast<float*>(dyn);        // [G][d] queries after RoPE
  float* os = qs + Gd;                               // [G][d] value accumulators
  float* sc = os + Gd;                               // [G][TK] scores, then weights
  float* hm = sc + ((G * TK + 3) & ~3);              // per head: running max, sum, tile correction
  float* hl = hm + 16;
  float* hc = hl + 16;
  const int rowb = d * (int)sizeof(T);               // a multiple of 32 bytes on the fast path
  const int kstride = rowb + 16;                     // padded: threads of a warp read different keys
  uint8_t* Ks = reinterpret_cast<uint8_t*>(hc + 16);
  uint8_t* Vs = Ks + TK * kstride;
  const int L = a.seqlens[b] + 1;
  const bool ok = L >= 1 && L <= a.Pp;
  const int past = ok ? L - 1 : 0;
  const int lo = a.window > 0 ? max(0, past - a.window + 1) : 0;
  const int r0 = max(lo, max(0, past - a.R));
  const int nr = max(0, past - r0);
  const T* kring = reinterpret_cast<const T*>(a.kr) + (int64_t)bg * a.R * d;
  const T* vring = reinterpret_cast<const T*>(a.vr) + (int64_t)bg * a.R * d;
  const bool vec = ((reinterpret_cast<uintptr_t>(a.kr) | reinterpret_cast<uintptr_t>(a.vr)) & 15) == 0;
  const int rowg = rowb / 16;
  if (nr > 0) ring_stage<T>(kring, vring, Ks, Vs, kstride, rowb, d, a.R, r0, min(TK, nr), vec);  // in flight meanwhile
  int pos = past;
  if (a.qa.rotary) pos = min(max(pos, 0), a.qa.max_pos - 1);
  const int half = d / 2;
  const T* qsrc = reinterpret_cast<const T*>(a.qa.q) + ((int64_t)b * a.Hq + (int64_t)g * G) * d;
  constexpr int kQ = 8;  // query elements per thread in flight at once (v2 loaded them one by one)
  for (int x0 = tid; x0 < Gd; x0 += nt * kQ) {
    float v[kQ];
#pragma unroll
    for (int k = 0; k < kQ; ++k) {
      const int x = x0 + k * nt;
      v[k] = 0.f;
      if (x < Gd) {
        const int h = x / d, c = x - h * d;
        const T* src = qsrc + (int64_t)h * d;
        v[k] = to_f<T>(__ldg(src + c));
        if (a.qa.rotary) {
          const T* cs = reinterpret_cast<const T*>(a.qa.cosc);
          const T* sn = reinterpret_cast<const T*>(a.qa.sinc);
          const int cc = c < half ? c : c - half;
          const float co = to_f<T>(__ldg(cs + (int64_t)pos * half + cc)), si = to_f<T>(__ldg(sn + (int64_t)pos * half + cc));
          const float o = to_f<T>(__ldg(src + (c < half ? c + half : c - half)));
          v[k] = c < half ? __fsub_rn(__fmul_rn(v[k], co), __fmul_rn(o, si)) : __fadd_rn(__fmul_rn(v[k], co), __fmul_rn(o, si));
        }
      }
    }
#pragma unroll
    for (int k = 0; k < kQ; ++k) {
      const int x = x0 + k * nt;
      if (x < Gd) {
        qs[x] = v[k];
        os[x] = 0.f;
      }
    }
  }
  if (tid < 16) {
    hm[tid] = -INFINITY;
    hl[tid] = 0.f;
  }
  constexpr int kPer = 16 / sizeof(T);
  for (int t0 = 0; t0 < nr; t0 += TK) {
    const int nk = min(TK, nr - t0);
    cp_wait<0>();
    __syncthreads();  // tile staged; queries and state written
    for (int x = tid; x < G * nk; x += nt) {
      const int h = x / nk, j = x - h * nk;
      const float* qh = qs + h * d;
      const uint4* kk = reinterpret_cast<const uint4*>(Ks + j * kstride);
      float acc0 = 0.f, acc1 = 0.f;
      for (int u = 0; u < rowg; u += 2) {  // rowg is even
        acc0 = dot16<T>(kk[u], qh + u * kPer, acc0);
        acc1 = dot16<T>(kk[u + 1], qh + (u + 1) * kPer, acc1);
      }
      sc[h * TK + j] = softcap_f((acc0 + acc1) * a.scale, a.softcap) * kLog2e;
    }
    __syncthreads();
    for (int h = warp; h < G; h += nt / 32) {
      float mx = -INFINITY;
      for (int j = lane; j < nk; j += 32) mx = fmaxf(mx, sc[h * TK + j]);
      mx = warp_max(mx);
      const float mo = hm[h], mn = fmaxf(mo, mx), corr = exp2f(mo - mn);
      float sum = 0.f;
      for (int j = lane; j < nk; j += 32) {
        const float pj = exp2f(sc[h * TK + j] - mn);
        sc[h * TK + j] = pj;
        sum += pj;
      }
      sum = warp_sum(sum);
      __syncwarp();  // every lane has read hm[h] / hl[h] (shuffles do not order memory)
      if (lane == 0) {
        hm[h] = mn;
        hl[h] = hl[h] * corr + sum;
        hc[h] = corr;
      }
    }
    __syncthreads();
    // values: thread per (head, coordinate pair), two keys at a time into separate accumulators
    for (int x = 2 * tid; x < Gd; x += 2 * nt) {
      const int h = x / d, c = x - h * d;
      const float* ph = sc + h * TK;
      const T* vc = reinterpret_cast<const T*>(Vs) + c;
      float2 a0 = make_float2(0.f, 0.f), a1 = make_float2(0.f, 0.f);
      int j = 0;
#pragma unroll 4
      for (; j + 1 < nk; j += 2) {
        const float p0 = ph[j], p1 = ph[j + 1];
        const float2 v0 = to_f2<T>(vc + j * d), v1 = to_f2<T>(vc + (j + 1) * d);
        a0.x = fmaf(p0, v0.x, a0.x);
        a0.y = fmaf(p0, v0.y, a0.y);
        a1.x = fmaf(p1, v1.x, a1.x);
        a1.y = fmaf(p1, v1.y, a1.y);
      }
      if (j < nk) {
        const float2 v0 = to_f2<T>(vc + j * d);
        a0.x = fmaf(ph[j], v0.x, a0.x);
        a0.y = fmaf(ph[j], v0.y, a0.y);
      }
      const float cr = hc[h];
      os[x] = os[x] * cr + (a0.x + a1.x);
      os[x + 1] = os[x + 1] * cr + (a0.y + a1.y);
    }
    if (t0 + TK < nr) {
      __syncthreads();  // everyone is done with this tile
      ring_stage<T>(kring, vring, Ks, Vs, kstride, rowb, d, a.R, r0 + t0 + TK, min(TK, nr - t0 - TK), vec);
    }
  }
  __syncthreads();  // the accumulators are owned by coordinate pairs above, by elements here
  float* ro = a.ring_o + ((int64_t)b * a.Hq + (int64_t)g * G) * d;
  for (int x = tid; x < Gd; x += nt) ro[x] = os[x];
  if (tid < G) {
    a.ring_ml[((int64_t)b * a.Hq + (int64_t)g * G + tid) * 2] = hm[tid];
    a.ring_ml[((int64_t)b * a.Hq + (int64_t)g * G + tid) * 2 + 1] = hl[tid];
  }
}

template <typename T, int E, bool HAD, bool RING>
__global__ void __launch_bounds__(128) decode_pre_kernel(PreArgs a) {
  pdl_trigger();  // the split kernel's prologue reads no output of this kernel (it waits before the query)
  __shared__ float bufs[4][256];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int w = blockIdx.x * 4 + warp;
  const int BHq = a.B * a.Hq;
  if (RING) {
    const int warp_blocks = (BHq + 3) / 4;
    if ((int)blockIdx.x >= warp_blocks) {
      extern __shared__ float4 pre_dyn4[];
      decode_ring_block<T>(a, blockIdx.x - warp_blocks, reinterpret_cast<uint8_t*>(pre_dyn4));
      return;
    }
  }
  if (w >= BHq) return;
  const int d = a.d;
  float* buf = bufs[warp];
  const int b = w / a.Hq;
  const int L = a.seqlens[b] + 1;
  const int past = L >= 1 && L <= a.Pp ? L - 1 : 0;
  float x[E], qr[E];
  decode_query<E, HAD>(a.qa, 1.f, w, past, d, lane, buf, x, qr);
#pragma unroll
  for (int e = 0; e < E; ++e) {
    int i = e * 32 + lane;
    if (i < d) a.qh[(int64_t)w * d + i] = __float2half_rn(qr[e] * a.qa.qscale);
  }
  if (a.use_qjl) {
#pragma unroll
    for (int e = 0; e < E; ++e) {
      int i = e * 32 + lane;
      if (i < d) buf[i] = qr[e];
    }
    __syncwarp();
    const float qc = 1.2533141373155003f / (float)a.m;
    for (int j = lane; j < a.m; j += 32) {
      float acc = 0.f;
      for (int k = 0; k < d; ++k) acc += __ldg(a.S + (size_t)j * d + k) * buf[k];
      a.sqh[(int64_t)w * a.m + j] = __float2half_rn(acc * qc * a.qa.qscale);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Host side.

#include "tq_prefill_tc.cuh"

// ---------------------------------------------------------------------------------------------
struct Workspace {
  float* qf;
  float* kf;
  __half* qh;
  __half* sqh;
  float* part_o;
  float* part_ml;
  float* ring_o;   // recent window on the fast path: [B*Hq, d] and [B*Hq, 2]
  float* ring_ml;
  float* pre_o;    // the compressed rows' partials for the simple kernel: [B*S*Hq, d] and [B*S*Hq, 2]
  float* pre_ml;
  size_t bytes;
};

static size_t al256(size_t x) { return (x + 255) & ~(size_t)255; }

// Tuning knobs (docs/cuda.md): TQ_CUDA_STAGES=2|3 caps the pipeline depth, TQ_CUDA_SPLITS=n fixes the
// number of splits per (batch, kv head), TQ_CUDA_NOPDL=1 launches without PDL; unset = automatic.
static int env_int(const char* name) {
  const char* v = getenv(name);
  return v ? atoi(v) : 0;
}

// Shared-memory layout of decode_split_kernel (v6): the pair table (kLutStride bytes per entry), the
// QJL sign table, then `nstages` cp.async stages of kTileKeys key rows and value rows; the warps'
// merge reuses the whole space afterwards.
struct DecodeLayout {
  int stage_bytes = 0, nstages = 0, lut_bytes = 0;
  size_t smem = 0;
};

static bool decode_layout(const TqAttnParams* p, DecodeLayout& L, int ks) {
  const int d = (int)p->d, kb = (int)p->key_bits, vb = (int)p->value_bits;
  const int Rk = row_bytes(d, kb, (int)p->use_qjl, (int)p->m), Rv = row_bytes(d, vb, 0, 0);
  const int kspan = ((ks * kTileKeys * Rk + 16 + 8) + 15) & ~15;
  const int vspan = ((ks * kTileKeys * Rv + 16 + 8) + 15) & ~15;
  L.stage_bytes = kspan + vspan;
  L.lut_bytes = kLutStride * (1 << (2 * (kb > vb ? kb : vb)));
  const size_t G = (size_t)(p->Hq / p->Hkv), nmt = 4 * (size_t)((d + 63) / 64), nb = G > 8 ? 2 : 1;
  const size_t merge = sizeof(float) * (kDecodeWarps / 2) * 32 * nb * (nmt * 4 + 4);  // the warps' tree merge
  const size_t fixed = (size_t)L.lut_bytes + (p->use_qjl ? kQjlLutBytes : 0) + kMbarBytes;
  static const int max_stages = env_int("TQ_CUDA_STAGES") == 2 ? 2 : 3;
  for (int nst = max_stages; nst >= 2; --nst) {
    size_t s = fixed + (size_t)nst * L.stage_bytes;
    if (s < merge) s = merge;
    if (s <= (size_t)smem_optin_limit()) {
      L.nstages = nst;
      L.smem = s;
      return true;
    }
  }
  return false;
}

static bool fast_path_ok(const TqAttnParams* p) {
  if (p->force_path == 1) return false;
  if (p->S != 1) return false;
  if (p->value_bits < 1 || p->value_bits > 4 || p->key_bits < 1 || p->key_bits > 4) return false;
  int d = (int)p->d;
  if (!(d == 64 || d == 80 || d == 96 || d == 128 || d == 256)) return false;
  int G = (int)(p->Hq / p->Hkv);
  if (G > 16) return false;
  if (p->use_qjl && (p->m % 32 != 0 || p->m > 256)) return false;
  // decode_split_kernel addresses its table at the absolute shared address kSmemBase: dynamic shared
  // memory starts right after the reserved part (1 KB on sm_80 .. sm_90; the kernel checks it too).
  if (device_attr<cudaDevAttrReservedSharedMemoryPerBlock>(0) != (int)kSmemBase) return false;
  DecodeLayout L;
  return decode_layout(p, L, 1);  // shared memory of this GPU (sm_80: 163 KB) too small: the simple kernel
}

// Subtiles per warp and stage (v8): two for the compile-time d = 128 caches with G <= 8 (two independent
// score chains per warp, half the per-stage overhead per key) where two stages of 512 keys fit in
// shared memory (sm_90; not sm_80's 163 KB with the 64 KB table of 4-bit codes), else one.
static int decode_ks(const TqAttnParams* p) {
  static const int forced = env_int("TQ_CUDA_KS");  // tuning knob: TQ_CUDA_KS=1
  if (forced == 1 || p->d != 128 || p->use_qjl || p->Hq / p->Hkv > 8) return 1;
  const int kb = (int)p->key_bits, vb = (int)p->value_bits;
  if (!(kb == 4 && (vb == 4 || vb == 3)) && !(kb == 3 && vb == 3)) return 1;
  DecodeLayout L;
  return decode_layout(p, L, 2) ? 2 : 1;
}

// One resident block per SM (v6): as many splits per (batch, kv head) as fill the SMs once, never a
// partial second wave (B * Hkv >= #SMs: one split each).
static int choose_nsplit(const TqAttnParams* p) {
  const int64_t pairs = p->B * p->Hkv, sms = num_sms();
  static const int forced = env_int("TQ_CUDA_SPLITS");
  int64_t ns = forced > 0 ? forced : pairs >= sms ? 1 : sms / pairs;
  const int64_t maxs = (p->Pp + kTileKeys - 1) / kTileKeys;
  if (ns > maxs) ns = maxs;
  if (ns > 512) ns = 512;
  if (ns < 1) ns = 1;
  return (int)ns;
}

// v11: the split kernel rotates its own queries (no pre-pass launch) for a randomized Hadamard
// without QJL or recent window, where the last stage's buffer holds the G*D halves and G*D floats it
// uses for that. TQ_CUDA_SELFQ=2 keeps the pre-pass (tuning knob).
static bool decode_selfq(const TqAttnParams* p, const DecodeLayout& L) {
  static const int forced = env_int("TQ_CUDA_SELFQ");
  if (forced == 2) return false;
  const int64_t G = p->Hq / p->Hkv;
  return p->rot_rank == 1 && !p->use_qjl && p->recent_window == 0 && (int64_t)L.stage_bytes >= 6 * G * p->d;
}

// Prefill kernels (S > 1), TQ_CUDA_PREFILL: 0 = the simple kernel only, 1 = prefill_rows_kernel (v14) for
// the compressed rows, unset or 2 = prefill_tc_kernel where it applies, else as 1.
static int prefill_mode() {
  static const int mode = getenv("TQ_CUDA_PREFILL") ? env_int("TQ_CUDA_PREFILL") : 2;
  return mode;
}

// Dynamic shared memory of prefill_tc_kernel for these parameters (0: d not supported).
static int prefill_tc_smem(const TqAttnParams* p) {
  const int d = (int)p->d, m = p->use_qjl ? (int)p->m : 0;
  const int Rk = row_bytes(d, (int)p->key_bits, (int)p->use_qjl, (int)p->m), Rv = row_bytes(d, (int)p->value_bits, 0, 0);
  switch (d) {
    case 64: return tc_smem_bytes<64>(Rk, Rv, m);
    case 80: return tc_smem_bytes<80>(Rk, Rv, m);
    case 96: return tc_smem_bytes<96>(Rk, Rv, m);
    case 128: return tc_smem_bytes<128>(Rk, Rv, m);
    default: return 0;
  }
}

// Whether prefill_tc_kernel applies (compressed values, d in {64, 80, 96, 128}, Hadamard only for 64 and
// 128, G <= 128, QJL with m a multiple of 16 up to 256; force_path = 1 keeps the simple kernel for the tests).
static bool prefill_tc_shape_ok(const TqAttnParams* p) {
  const int d = (int)p->d, G = (int)(p->Hq / p->Hkv), smem = prefill_tc_smem(p);
  return prefill_mode() == 2 && p->force_path != 1 && p->S > 1 && p->value_bits > 0 && smem > 0 && G <= kTcQ &&
         (!p->use_qjl || (p->m % 16 == 0 && p->m <= 256)) && (p->rot_rank != 1 || d == 64 || d == 128) &&
         smem <= smem_optin_limit();
}
// fp16/bf16: prefill_tc_kernel computes the whole prefill. float32: it computes the compressed rows'
// partials (prefill_tc_f32) and attn_simple_kernel the exact rest in float32.
static bool prefill_tc_ok(const TqAttnParams* p) {
  return (p->dtype == 10 || p->dtype == 16) && prefill_tc_shape_ok(p);
}
static bool prefill_tc_f32(const TqAttnParams* p) { return p->dtype == 1 && prefill_tc_shape_ok(p); }

// Whether a prefill computes the compressed rows' partials before the simple kernel (prefill_rows_kernel,
// or prefill_tc_kernel for float32 inputs): the workspace holds them.
static bool prefill_partials_ok(const TqAttnParams* p) {
  const int G = (int)(p->Hq / p->Hkv);
  if (prefill_tc_f32(p)) return true;  // the partials come from prefill_tc_kernel<float> instead
  return prefill_mode() != 0 && !prefill_tc_ok(p) && p->S > 1 && !p->use_qjl && p->value_bits > 0 && p->d <= 128 &&
         G <= kPreQ && prefill_smem_floats((int)p->d) * sizeof(float) <= (size_t)smem_optin_limit();
}

// Splits per query tile of prefill_tc_kernel: enough blocks for two per SM when the tiles alone are fewer,
// each split at least 4 chunks of cached rows (TQ_CUDA_PREFILL_SPLITS=n fixes it; 1 = no split).
static int prefill_tc_splits(const TqAttnParams* p) {
  static const int forced = env_int("TQ_CUDA_PREFILL_SPLITS");
  const int64_t tiles = (p->S + kTcQ / (p->Hq / p->Hkv) - 1) / (kTcQ / (p->Hq / p->Hkv));
  const int64_t blocks = tiles * p->Hkv * p->B, want = 2 * (int64_t)num_sms();
  int64_t ns = forced > 0 ? forced : blocks >= want ? 1 : (want + blocks - 1) / blocks;
  const int64_t most = forced > 0 ? 64 : (p->Pp / kTcKeys) / 4;
  if (ns > most) ns = most;
  if (ns > 64) ns = 64;
  return ns < 1 ? 1 : (int)ns;
}

template <typename T, int D, bool HAD, bool RING, bool QJL>
static int launch_prefill_tc(const TqAttnParams* p, const AttnArgs& aa, const TcSplits& sp, cudaStream_t stream) {
  const int QT = kTcQ / (int)(p->Hq / p->Hkv);
  const int smem = tc_smem_bytes<D>(aa.Rk, aa.Rv, QJL ? aa.m : 0);
  static int raised[64] = {0};
  const cudaError_t e = raise_smem_once((const void*)prefill_tc_kernel<T, D, HAD, RING, QJL>, smem, raised);
  if (e != cudaSuccess) return (int)e;
  prefill_tc_kernel<T, D, HAD, RING, QJL><<<dim3((unsigned)(((p->S + QT - 1) / QT) * sp.n), (unsigned)p->Hkv,
                                                 (unsigned)p->B), kTcWarps * 32, smem, stream>>>(aa, sp);
  if (sp.n > 1) {  // (float32 runs one split: attn_simple_kernel continues from the partials)
    const int64_t warps = p->B * p->S * p->Hq;
    prefill_merge_kernel<T><<<(unsigned)((warps + 3) / 4), 128, 0, stream>>>(aa, sp);
  }
  return (int)cudaGetLastError();
}
template <typename T, int D, bool HAD, bool RING>
static int launch_prefill_tc(const TqAttnParams* p, const AttnArgs& aa, const TcSplits& sp, cudaStream_t stream) {
  return aa.use_qjl ? launch_prefill_tc<T, D, HAD, RING, true>(p, aa, sp, stream)
                    : launch_prefill_tc<T, D, HAD, RING, false>(p, aa, sp, stream);
}

// prefill_tc_kernel for this d (E, the simple path's registers per lane, follows from d).
template <typename T, int E, bool HAD, bool RING>
static int dispatch_prefill_tc(const TqAttnParams* p, const AttnArgs& aa, const TcSplits& sp, cudaStream_t stream) {
  switch (aa.d) {
    case 64: if constexpr (E == 2) return launch_prefill_tc<T, 64, HAD, RING>(p, aa, sp, stream); break;
    case 80: if constexpr (E == 3 && !HAD) return launch_prefill_tc<T, 80, HAD, RING>(p, aa, sp, stream); break;
    case 96: if constexpr (E == 3 && !HAD) return launch_prefill_tc<T, 96, HAD, RING>(p, aa, sp, stream); break;
    case 128: if constexpr (E == 4) return launch_prefill_tc<T, 128, HAD, RING>(p, aa, sp, stream); break;
    default: break;
  }
  return -1;
}

static Workspace carve(const TqAttnParams* p, void* base) {
  Workspace w{};
  size_t off = 0;
  auto take = [&](size_t n) {
    size_t o = off;
    off += al256(n);
    return base ? (void*)((char*)base + o) : nullptr;
  };
  if (!fast_path_ok(p)) {  // the simple path's float32 q and k (the fast path reads the inputs)
    w.qf = (float*)take(sizeof(float) * p->B * p->S * p->Hq * p->d);
    w.kf = (float*)take(sizeof(float) * p->B * p->S * p->Hkv * p->d);
    const int tc_splits = prefill_tc_ok(p) ? prefill_tc_splits(p) : 1;
    if (tc_splits > 1) {
      const size_t n = (size_t)p->B * p->S * p->Hq * tc_splits;
      w.part_o = (float*)take(sizeof(float) * n * p->d);
      w.part_ml = (float*)take(sizeof(float) * n * 2);
    }
    if (prefill_partials_ok(p)) {
      w.pre_o = (float*)take(sizeof(float) * p->B * p->S * p->Hq * p->d);
      w.pre_ml = (float*)take(sizeof(float) * p->B * p->S * p->Hq * 2);
    }
  } else {
    int ns = choose_nsplit(p);
    w.qh = (__half*)take(sizeof(__half) * p->B * p->Hq * p->d);
    w.sqh = (__half*)take(sizeof(__half) * p->B * p->Hq * (p->use_qjl ? p->m : 1));
    w.part_o = (float*)take(sizeof(float) * p->B * p->Hq * ns * p->d);
    w.part_ml = (float*)take(sizeof(float) * p->B * p->Hq * ns * 2);
    if (p->recent_window > 0) {
      w.ring_o = (float*)take(sizeof(float) * p->B * p->Hq * p->d);
      w.ring_ml = (float*)take(sizeof(float) * p->B * p->Hq * 2);
    }
  }
  w.bytes = off;
  return w;
}

// Dynamic shared memory of a RING block of the pre-pass (decode_ring_block) and its keys per tile.
static size_t ring_block_smem(const TqAttnParams* p, int& tk) {
  const size_t G = (size_t)(p->Hq / p->Hkv), d = (size_t)p->d, ts = p->dtype == kF32 ? 4 : 2;
  auto bytes = [&](size_t t) {
    return 4 * (2 * G * d + ((G * t + 3) & ~(size_t)3) + 48) + t * (d * ts + 16) + t * d * ts;
  };
  size_t t = p->recent_window < 64 ? (size_t)p->recent_window : 64;
  while (t > 1 && bytes(t) > 96 * 1024) t = (t + 1) / 2;
  tk = (int)t;
  return bytes(t);
}

// Launch with programmatic stream serialization (PDL) on sm_90+ when `pdl` (not for the op's first
// kernel: it must see everything before it on the stream), a plain launch otherwise.
template <typename... Args>
static int launch_pdl(void (*kern)(Args...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream, bool pdl,
                      Args... args) {
  const int major = device_attr<cudaDevAttrComputeCapabilityMajor>(0);
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  static const bool off = env_int("TQ_CUDA_NOPDL") != 0;  // tuning knob: plain launches
  cfg.numAttrs = pdl && major >= 9 && !off ? 1 : 0;
  return (int)cudaLaunchKernelEx(&cfg, kern, args...);
}

template <int D, bool QJL, bool BIGG, int KB, int VB, int KS = 1>
static int launch_split(const DecodeArgs& da, int B, int Hkv, size_t smem, cudaStream_t stream) {
  auto kern = decode_split_kernel<D, QJL, BIGG, KB, VB, KS>;
  static int raised[64] = {0};
  const cudaError_t e = raise_smem_once((const void*)kern, (int)smem, raised);
  if (e != cudaSuccess) return (int)e;
  return launch_pdl(kern, dim3(da.nsplit, Hkv, B), dim3(kDecodeWarps * 32), smem, stream, !da.selfq, da);
}

template <int D, bool BIGG>
static int launch_split_bits(const DecodeArgs& da, bool qjl, int ks, int B, int Hkv, size_t smem, cudaStream_t s) {
  // Compile-time bit widths for the common caches (K4V4, the balanced preset's K4V3, K3V3); QJL and
  // the rest take run-time widths. Two subtiles per warp (ks = 2): d = 128, G <= 8 (decode_ks).
  if constexpr (D == 128 && !BIGG) {
    if (ks == 2 && da.kbits == 4 && da.vbits == 4) return launch_split<D, false, BIGG, 4, 4, 2>(da, B, Hkv, smem, s);
    if (ks == 2 && da.kbits == 4 && da.vbits == 3) return launch_split<D, false, BIGG, 4, 3, 2>(da, B, Hkv, smem, s);
    if (ks == 2 && da.kbits == 3 && da.vbits == 3) return launch_split<D, false, BIGG, 3, 3, 2>(da, B, Hkv, smem, s);
  }
  if (qjl) return launch_split<D, true, BIGG, 0, 0>(da, B, Hkv, smem, s);
  if (da.kbits == 4 && da.vbits == 4) return launch_split<D, false, BIGG, 4, 4>(da, B, Hkv, smem, s);
  if (da.kbits == 4 && da.vbits == 3) return launch_split<D, false, BIGG, 4, 3>(da, B, Hkv, smem, s);
  if (da.kbits == 3 && da.vbits == 3) return launch_split<D, false, BIGG, 3, 3>(da, B, Hkv, smem, s);
  return launch_split<D, false, BIGG, 0, 0>(da, B, Hkv, smem, s);
}

template <int D>
static int launch_split_d(const DecodeArgs& da, bool qjl, bool bigg, int ks, int B, int Hkv, size_t smem, cudaStream_t s) {
  return bigg ? launch_split_bits<D, true>(da, qjl, ks, B, Hkv, smem, s)
              : launch_split_bits<D, false>(da, qjl, ks, B, Hkv, smem, s);
}

// Ring slots of the new tokens (recent window, S > 1), after the attention kernel read the rings.
template <typename T, bool RING>
static int write_new_ring_slots(const TqAttnParams* p, const AttnArgs& aa, cudaStream_t stream) {
  if (!RING || (!aa.pkr && !aa.pvr)) return 0;
  int64_t total = p->B * p->S * p->Hkv * p->d;
  int blocks = (int)((total + 255) / 256);
  if (blocks > num_sms() * 16) blocks = num_sms() * 16;
  ring_write_kernel<T><<<blocks, 256, 0, stream>>>(aa.kf, (const T*)aa.value, aa.seqlens, (T*)aa.pkr, (T*)aa.pvr,
                                                   aa.B, aa.S, aa.Hkv, aa.d, aa.Pp, aa.R);
  return (int)cudaGetLastError();
}

template <typename T, int E, bool HAD, bool RING>
static int run_attention_t(const TqAttnParams* p, const AttnArgs& aa, const Workspace& ws, cudaStream_t stream) {
  if (fast_path_ok(p)) {
    const int ns = choose_nsplit(p);
    const float qscale = (float)aa.scale * (aa.softcap > 0.f ? 1.f : kLog2e);
    const int ks = decode_ks(p);
    DecodeLayout lay;
    decode_layout(p, lay, ks);  // fits: fast_path_ok (ks = 1) or decode_ks
    const bool selfq = HAD && !RING && decode_selfq(p, lay);
    QueryArgs qa{};
    qa.q = p->query;
    qa.cosc = p->cos_cache;
    qa.sinc = p->sin_cache;
    qa.rot = aa.rot;
    qa.rotary = aa.rotary;
    qa.max_pos = aa.max_pos;
    qa.dtype = (int)p->dtype;
    qa.qscale = qscale;
    qa.inv_sqrt_d = aa.inv_sqrt_d;
    if (!selfq) {
      PreArgs pa{};
      pa.qa = qa;
      pa.seqlens = p->seqlens_k;
      pa.S = p->use_qjl ? aa.qjl : nullptr;
      pa.qh = ws.qh;
      pa.sqh = ws.sqh;
      pa.B = aa.B;
      pa.Hq = aa.Hq;
      pa.Hkv = aa.Hkv;
      pa.d = aa.d;
      pa.Pp = aa.Pp;
      pa.use_qjl = aa.use_qjl;
      pa.m = aa.m;
      int blocks = (int)((p->B * p->Hq + 3) / 4);
      size_t dyn = 0;
      if (RING) {
        pa.kr = aa.kr;
        pa.vr = aa.vr;
        pa.ring_o = ws.ring_o;
        pa.ring_ml = ws.ring_ml;
        pa.R = aa.R;
        pa.window = aa.window;
        pa.scale = aa.scale;
        pa.softcap = aa.softcap;
        dyn = ring_block_smem(p, pa.ring_tk);
        blocks += (int)(p->B * p->Hkv);
        static int raised[64] = {0};
        const cudaError_t e = raise_smem_once((const void*)decode_pre_kernel<T, E, HAD, RING>, (int)dyn, raised);
        if (e != cudaSuccess) return (int)e;
      }
      decode_pre_kernel<T, E, HAD, RING><<<blocks, 128, dyn, stream>>>(pa);
      const int rc = (int)cudaGetLastError();
      if (rc) return rc;
    }
    int rc = 0;
    DecodeArgs da{};
    da.pk = aa.pk;
    da.pv = (const uint8_t*)aa.pv;
    da.seqlens = aa.seqlens;
    da.qh = ws.qh;
    da.sqh = ws.sqh;
    da.kcb = aa.kcb;
    da.vcb = aa.vcb;
    da.part_o = ws.part_o;
    da.part_ml = ws.part_ml;
    da.Hq = aa.Hq;
    da.Hkv = aa.Hkv;
    da.G = aa.Hq / aa.Hkv;
    da.Pp = aa.Pp;
    da.Rk = aa.Rk;
    da.Rv = aa.Rv;
    da.kbits = aa.kbits;
    da.vbits = aa.vbits;
    da.m = aa.m;
    da.window = aa.window;
    da.nsplit = ns;
    da.softcap = aa.softcap;
    da.R = RING ? aa.R : 0;
    da.selfq = selfq ? 1 : 0;
    da.qa = qa;
    da.stage_bytes = lay.stage_bytes;
    da.nstages = lay.nstages;
    da.lut_bytes = lay.lut_bytes;
    const size_t smem = lay.smem;
    bool qjl = p->use_qjl != 0, bigg = da.G > 8;
    switch (aa.d) {
      case 64: rc = launch_split_d<64>(da, qjl, bigg, ks, aa.B, aa.Hkv, smem, stream); break;
      case 80: rc = launch_split_d<80>(da, qjl, bigg, ks, aa.B, aa.Hkv, smem, stream); break;
      case 96: rc = launch_split_d<96>(da, qjl, bigg, ks, aa.B, aa.Hkv, smem, stream); break;
      case 128: rc = launch_split_d<128>(da, qjl, bigg, ks, aa.B, aa.Hkv, smem, stream); break;
      case 256: rc = launch_split_d<256>(da, qjl, bigg, ks, aa.B, aa.Hkv, smem, stream); break;
      default: return -1;
    }
    if (rc) return rc;
    AttnArgs fin = aa;  // the merge's arguments: the ring partial from the workspace
    if (RING) {
      fin.ring_o = ws.ring_o;
      fin.ring_ml = ws.ring_ml;
    }
    const int64_t warps = p->B * (2 * p->Hkv + p->Hq);  // new rows, then the merge's heads
    return launch_pdl(decode_combine_kernel<E>, dim3((unsigned)((warps + 3) / 4)), dim3(128), 0, stream, true, fin,
                      (const float*)ws.part_o, (const float*)ws.part_ml, ns, (int)p->dtype, HAD ? 1 : 0);
  }
  if (prefill_tc_ok(p)) {
    const TcSplits sp{prefill_tc_splits(p), ws.part_o, ws.part_ml};
    const int rc = dispatch_prefill_tc<T, E, HAD, RING>(p, aa, sp, stream);
    return rc ? rc : write_new_ring_slots<T, RING>(p, aa, stream);
  }
  AttnArgs sa = aa;
  if (ws.pre_o && prefill_tc_f32(p)) {  // float32: the compressed rows on tensor cores, the rest below
    const int rc = dispatch_prefill_tc<T, E, HAD, RING>(p, aa, TcSplits{1, ws.pre_o, ws.pre_ml}, stream);
    if (rc) return rc;
    sa.pre_o = ws.pre_o;
    sa.pre_ml = ws.pre_ml;
  } else if (ws.pre_o) {
    if constexpr (E <= 4) {
      const int QT = kPreQ / (int)(p->Hq / p->Hkv);
      const int smem = (int)(prefill_smem_floats((int)p->d) * sizeof(float));
      static int raised[64] = {0};
      cudaError_t e = raise_smem_once((const void*)prefill_rows_kernel<E, HAD>, smem, raised);
      if (e != cudaSuccess) return (int)e;
      prefill_rows_kernel<E, HAD><<<dim3((unsigned)((p->S + QT - 1) / QT), (unsigned)p->Hkv, (unsigned)p->B),
                                    kPreWarps * 32, smem, stream>>>(aa, ws.pre_o, ws.pre_ml);
      e = cudaGetLastError();
      if (e != cudaSuccess) return (int)e;
      sa.pre_o = ws.pre_o;
      sa.pre_ml = ws.pre_ml;
    }
  }
  int64_t warps = (int64_t)p->B * p->S * p->Hq;
  attn_simple_kernel<T, E, HAD, RING><<<(unsigned)((warps + kSimpleWarps - 1) / kSimpleWarps), kSimpleWarps * 32, 0, stream>>>(sa);
  const int rc = (int)cudaGetLastError();
  return rc ? rc : write_new_ring_slots<T, RING>(p, aa, stream);
}

template <typename T>
static int run_attention_e(const TqAttnParams* p, const AttnArgs& aa, const Workspace& ws, cudaStream_t stream,
                           const char** msg) {
  int E = (aa.d + 31) / 32;
  bool had = p->rot_rank == 1;
  const bool ring = p->recent_window > 0;
#define TQ_ATT_CASE(EE)                                                                          \
  case EE:                                                                                       \
    if (ring)                                                                                    \
      return had ? run_attention_t<T, EE, true, true>(p, aa, ws, stream)                         \
                 : run_attention_t<T, EE, false, true>(p, aa, ws, stream);                       \
    return had ? run_attention_t<T, EE, true, false>(p, aa, ws, stream)                          \
               : run_attention_t<T, EE, false, false>(p, aa, ws, stream);
  switch (E) {
    TQ_ATT_CASE(1)
    TQ_ATT_CASE(2)
    TQ_ATT_CASE(3)
    TQ_ATT_CASE(4)
    TQ_ATT_CASE(8)
    default: *msg = "head_dim not supported by the CUDA kernels"; return -1;
  }
#undef TQ_ATT_CASE
}

template <typename T>
static int run_attention(const TqAttnParams* p, void* wsp, cudaStream_t stream, const char** msg) {
  Workspace ws = carve(p, wsp);
  const int d = (int)p->d;
  const int Rk = row_bytes(d, (int)p->key_bits, (int)p->use_qjl, (int)p->m);
  const int Rv = p->value_bits ? row_bytes(d, (int)p->value_bits, 0, 0) : d * (int)sizeof(T);
  const bool fast = fast_path_ok(p);  // S == 1: steps 1-2 are folded into the decode kernels
  // 1. q, k -> float32 (+ RoPE).
  if (!fast) {
    int64_t total = p->B * p->S * (p->Hq + p->Hkv) * p->d;
    int blocks = (int)((total + 255) / 256);
    if (blocks > num_sms() * 16) blocks = num_sms() * 16;
    prep_qk_kernel<T><<<blocks, 256, 0, stream>>>((const T*)p->query, (const T*)p->key, (const T*)p->cos_cache,
                                                  (const T*)p->sin_cache, p->seqlens_k, ws.qf, ws.kf, (int)p->B,
                                                  (int)p->S, (int)p->Hq, (int)p->Hkv, d, (int)p->do_rotary,
                                                  (int)p->max_pos);
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) { *msg = cudaGetErrorString(e); return (int)e; }
  }
  // 2. present = past, then the new rows.
  if (p->past_key != p->present_key && p->P > 0) {
    cudaError_t e = cudaMemcpy2DAsync(p->present_key, (size_t)p->Pp * Rk, p->past_key, (size_t)p->P * Rk,
                                      (size_t)p->P * Rk, (size_t)(p->B * p->Hkv), cudaMemcpyDeviceToDevice, stream);
    if (e != cudaSuccess) { *msg = cudaGetErrorString(e); return (int)e; }
  }
  if (p->past_value != p->present_value && p->P > 0) {
    cudaError_t e = cudaMemcpy2DAsync(p->present_value, (size_t)p->Pp * Rv, p->past_value, (size_t)p->P * Rv,
                                      (size_t)p->P * Rv, (size_t)(p->B * p->Hkv), cudaMemcpyDeviceToDevice, stream);
    if (e != cudaSuccess) { *msg = cudaGetErrorString(e); return (int)e; }
  }
  // Recent window: present rings = past rings unless shared (the kernels read the past rings and
  // write only the new slots of the present ones); keys-only: the value ring passes through, or is
  // zeroed when none (of the ring's shape) was given.
  if (p->recent_window > 0) {
    const size_t ring_bytes = (size_t)(p->B * p->Hkv * p->recent_window * p->d) * (p->dtype == kF32 ? 4 : 2);
    if (p->present_key_recent && p->present_key_recent != p->past_key_recent) {
      cudaError_t e = cudaMemcpyAsync(p->present_key_recent, p->past_key_recent, ring_bytes, cudaMemcpyDeviceToDevice,
                                      stream);
      if (e != cudaSuccess) { *msg = cudaGetErrorString(e); return (int)e; }
    }
    if (p->present_value_recent && p->present_value_recent != p->past_value_recent) {
      cudaError_t e = p->past_value_recent
                          ? cudaMemcpyAsync(p->present_value_recent, p->past_value_recent, ring_bytes,
                                            cudaMemcpyDeviceToDevice, stream)
                          : cudaMemsetAsync(p->present_value_recent, 0, ring_bytes, stream);
      if (e != cudaSuccess) { *msg = cudaGetErrorString(e); return (int)e; }
    }
  }
  if (!fast) {
    RowSink sk{(uint8_t*)p->present_key, Rk, 1, (int)p->S, (int)p->Hkv, (int)p->Pp, p->seqlens_k};
    int rc = launch_encode(ws.kf, kF32, p->B * p->S * p->Hkv, d, p->rotation, (int)p->rot_rank, p->key_codebook,
                           (int)p->key_bits, (int)p->use_qjl, p->qjl, (int)p->m, sk, stream, msg);
    if (rc) return rc;
    if (p->value_bits) {
      RowSink sv{(uint8_t*)p->present_value, Rv, 1, (int)p->S, (int)p->Hkv, (int)p->Pp, p->seqlens_k};
      rc = launch_encode(p->value, (int)p->dtype, p->B * p->S * p->Hkv, d, p->rotation, (int)p->rot_rank,
                         p->value_codebook, (int)p->value_bits, 0, nullptr, 0, sv, stream, msg);
      if (rc) return rc;
    } else {
      int64_t total = p->B * p->S * p->Hkv * p->d;
      int blocks = (int)((total + 255) / 256);
      if (blocks > num_sms() * 16) blocks = num_sms() * 16;
      copy_values_kernel<T><<<blocks, 256, 0, stream>>>((const T*)p->value, (T*)p->present_value, p->seqlens_k,
                                                        (int)p->B, (int)p->S, (int)p->Hkv, d, (int)p->Pp);
      cudaError_t e = cudaGetLastError();
      if (e != cudaSuccess) { *msg = cudaGetErrorString(e); return (int)e; }
    }
  }
  // 3. attention.
  AttnArgs aa{};
  aa.qf = ws.qf;
  aa.kf = ws.kf;
  aa.value = p->value;
  aa.query = p->query;
  aa.key = p->key;
  aa.cosc = p->cos_cache;
  aa.sinc = p->sin_cache;
  aa.rotary = (int)p->do_rotary;
  aa.max_pos = (int)p->max_pos;
  aa.pk = (const uint8_t*)p->present_key;
  aa.pv = p->present_value;
  aa.seqlens = p->seqlens_k;
  aa.rot = p->rotation;
  aa.kcb = p->key_codebook;
  aa.vcb = p->value_codebook;
  aa.qjl = p->qjl;
  aa.out = p->output;
  aa.B = (int)p->B;
  aa.S = (int)p->S;
  aa.Hq = (int)p->Hq;
  aa.Hkv = (int)p->Hkv;
  aa.d = d;
  aa.Pp = (int)p->Pp;
  aa.Rk = Rk;
  aa.Rv = Rv;
  aa.kbits = (int)p->key_bits;
  aa.vbits = (int)p->value_bits;
  aa.use_qjl = (int)p->use_qjl;
  aa.m = (int)p->m;
  aa.window = (int)p->local_window;
  aa.scale = p->scale != 0.0 ? (float)p->scale : (float)(1.0 / sqrt((double)d));
  aa.softcap = (float)p->softcap;
  aa.inv_sqrt_d = p->rot_rank == 1 ? (float)(1.0 / sqrt((double)d)) : 1.f;
  if (p->recent_window > 0) {
    aa.R = (int)p->recent_window;
    aa.kr = p->past_key_recent;
    aa.vr = p->value_bits ? p->past_value_recent : nullptr;
    aa.pkr = p->present_key_recent;
    aa.pvr = p->value_bits ? p->present_value_recent : nullptr;  // keys-only: passed through above
  }
  int rc = run_attention_e<T>(p, aa, ws, stream, msg);
  if (rc && !*msg) *msg = cudaGetErrorString((cudaError_t)rc);
  return rc;
}

size_t attention_workspace(const TqAttnParams* p) { return carve(p, nullptr).bytes; }

int attention(const TqAttnParams* p, void* ws, size_t ws_bytes, cudaStream_t stream, const char** msg) {
  if (p->Hkv <= 0 || p->Hq % p->Hkv) { *msg = "num_heads must be a multiple of kv_num_heads"; return -1; }
  if (p->rot_rank == 1 && !is_pow2((int)p->d)) { *msg = "rotation of rank 1 needs d a power of two"; return -1; }
  if (p->key_bits < 1 || p->key_bits > 8 || p->value_bits < 0 || p->value_bits > 8) { *msg = "bits out of range"; return -1; }
  if (p->use_qjl && (!p->qjl || p->m < 1 || p->m > 256)) { *msg = "qjl_matrix: m must be in [1, 256]"; return -1; }
  if (p->do_rotary && (!p->cos_cache || !p->sin_cache || p->max_pos < 1)) { *msg = "cos_cache/sin_cache required"; return -1; }
  if (p->recent_window < 0) { *msg = "recent_window must be >= 0"; return -1; }
  if (p->recent_window > 0 && (!p->past_key_recent || (p->value_bits && !p->past_value_recent))) {
    *msg = "recent_window > 0: past_key_recent (and past_value_recent when value_bits > 0) required";
    return -1;
  }
  if (ws_bytes < attention_workspace(p)) { *msg = "workspace too small"; return -1; }
  if (p->B <= 0 || p->S <= 0) return 0;
  switch (p->dtype) {
    case kF32: return run_attention<float>(p, ws, stream, msg);
    case kF16: return run_attention<__half>(p, ws, stream, msg);
    case kBF16: return run_attention<__nv_bfloat16>(p, ws, stream, msg);
    default: *msg = "dtype must be float32, float16 or bfloat16"; return -1;
  }
}

}  // namespace cuda
}  // namespace tq
