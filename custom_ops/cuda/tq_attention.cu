// TurboQuantAttention on CUDA (docs/ops.md section 4; design in docs/cuda.md).
//
// Launch sequence of tq_cuda_attention:
//   1. prep_qk: query/key -> float32 scratch (RoPE applied exactly when do_rotary).
//   2. present = past (one cudaMemcpy2DAsync unless the buffers are shared), then the S new keys /
//      values are encoded (or copied, value_bits = 0) into rows past_len .. past_len+S-1.
//   3a. S == 1 and a supported shape: split-K flash decoding over the compressed rows with tensor
//       cores (decode_split_kernel), then decode_combine_kernel merges the splits, rotates the value
//       accumulator back once, and adds the new token exactly.
//   3b. otherwise attn_simple_kernel: one warp per (batch, query token, head), all cases.
// Recent window (R > 0, docs/ops.md 4): cached positions [max(0, past_len - R), past_len) are read
// exactly from the rings instead of from the rows. 3a: the split kernels stop at past_len - R, the
// pre-pass computes one more partial (max, sum, unrotated accumulator) per query head over the ring
// segment, the combine merges it and writes the new token's ring slot (after every read: stream
// order). 3b: the simple kernel reads the ring segment itself; ring_write_kernel writes the slots
// afterwards. R = 0 runs the same instantiations as before the window existed (RING = false).
#include <math.h>

#include "tq_codec.cuh"
#include "tq_cuda_api.h"

namespace tq {
namespace cuda {

constexpr float kLog2e = 1.4426950408889634f;

struct AttnArgs {
  const float* qf;        // [B, S, Hq, d] float32 (after RoPE)
  const float* kf;        // [B, S, Hkv, d]
  const void* value;      // T [B, S, Hkv, d]
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
  for (int j = lo; j < comp_hi; ++j) {
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
// Values stay in the rotated domain; decode_combine_kernel rotates back once per output vector.
constexpr int kDecodeWarps = 8;                                // v3: 8 warps share the LUTs (docs/cuda.md)
constexpr int kSubPerWarp = 2;                                  // 16-key subtiles per warp per stage
constexpr int kTileKeys = kDecodeWarps * kSubPerWarp * 16;      // keys per stage
constexpr int kLutCopies = 16;

struct DecodeArgs {
  const uint8_t* pk;
  const uint8_t* pv;
  const int32_t* seqlens;
  const __half* qh;   // [B, Hq, D] rotated query, times scale (and log2 e when no softcap)
  const __half* sqh;  // [B, Hq, m] S q_r times the same and sqrt(pi/2)/m
  const float* kcb;
  const float* vcb;
  float* part_o;      // [B*Hq, nsplit, D]
  float* part_ml;     // [B*Hq, nsplit, 2]
  int Hq, Hkv, G, Pp, Rk, Rv, kbits, vbits, m, window, nsplit, stage_bytes;
  float softcap;
  int R;              // recent window: the rows end at past_len - R (the pre-pass reads the rest)
};

__device__ __forceinline__ void mma16816(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                         uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

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

__device__ __forceinline__ uint32_t h2u(__half2 h) { return *reinterpret_cast<uint32_t*>(&h); }
__device__ __forceinline__ uint32_t pack_h2(float lo, float hi) { return h2u(__floats2half2_rn(lo, hi)); }

// Field of nbits (<= 32) at bit offset `bit` of the words at w (second word read if it straddles).
__device__ __forceinline__ uint32_t field(const uint32_t* w, int wi, int sh, bool hi_needed) {
  uint32_t lo = w[wi];
  uint32_t hi = hi_needed ? w[wi + 1] : 0u;
  return __funnelshift_r(lo, hi, sh);
}

// v2: coordinate permutation with one 8-code field per thread per pair of k-steps, b = 4 fast path
// (compile-time shifts, LOP3 key-pair interleave), lazy rescale of the value accumulators.
// Coordinates of k-step s (u = s/2, h = s%2) for thread t: c = 32u + 8t + 4h + {0,1 | 2,3}.
template <int D, bool QJL, bool BIGG, bool B4>
__global__ void __launch_bounds__(kDecodeWarps * 32, 2) decode_split_kernel(DecodeArgs a) {
  constexpr int NU = (D + 31) / 32;   // pairs of k-steps of the score mma (32 coordinates each)
  constexpr int NG = (D + 63) / 64;   // groups of 8 value tiles (64 coordinates)
  extern __shared__ float4 smem4[];
  uint8_t* smem = reinterpret_cast<uint8_t*>(smem4);
  const int kb = B4 ? 4 : a.kbits, vb = B4 ? 4 : a.vbits;
  uint32_t* lutK = reinterpret_cast<uint32_t*>(smem);
  uint32_t* lutV = lutK + (1 << (2 * kb)) * kLutCopies;
  uint32_t* lutQ = lutV + (1 << (2 * vb)) * kLutCopies;
  uint8_t* stages = reinterpret_cast<uint8_t*>(lutQ + 4 * kLutCopies);
  const int split = blockIdx.x, g = blockIdx.y, b = blockIdx.z;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int r = lane >> 2, t = lane & 3;
  const int cl = lane & (kLutCopies - 1);
  // Opaque to the compiler, so ((x >> s) & 0x3FC0) | cl4 stays one LOP3 (v3 SASS re-masked it).
  uint32_t cl4;
  asm("mov.b32 %0, %1;" : "=r"(cl4) : "r"((uint32_t)cl * 4u));
  const uint8_t* lutKb = reinterpret_cast<const uint8_t*>(lutK);
  const uint8_t* lutVb = reinterpret_cast<const uint8_t*>(lutV);
#define TQ_LUT(base, off) (*reinterpret_cast<const uint32_t*>((base) + (off)))

  for (int e = tid; e < (1 << (2 * kb)); e += blockDim.x) {
    const uint32_t v = pack_h2(a.kcb[e & ((1 << kb) - 1)], a.kcb[e >> kb]);
    uint4* dst = reinterpret_cast<uint4*>(lutK + e * kLutCopies);
#pragma unroll
    for (int c = 0; c < kLutCopies / 4; ++c) dst[c] = make_uint4(v, v, v, v);
  }
  for (int e = tid; e < (1 << (2 * vb)); e += blockDim.x) {
    const uint32_t v = pack_h2(a.vcb[e & ((1 << vb) - 1)], a.vcb[e >> vb]);
    uint4* dst = reinterpret_cast<uint4*>(lutV + e * kLutCopies);
#pragma unroll
    for (int c = 0; c < kLutCopies / 4; ++c) dst[c] = make_uint4(v, v, v, v);
  }
  if (QJL)
    for (int idx = tid; idx < 4 * kLutCopies; idx += blockDim.x) {
      int e = idx / kLutCopies;
      lutQ[idx] = pack_h2((e & 1) ? 1.f : -1.f, (e >> 1) ? 1.f : -1.f);
    }

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

  // Query fragments.
  const int64_t qbase = ((int64_t)b * a.Hq + (int64_t)g * a.G) * D;
  uint32_t qa0[2 * NU], qa2[2 * NU], qa1[BIGG ? 2 * NU : 1], qa3[BIGG ? 2 * NU : 1];
#pragma unroll
  for (int s = 0; s < 2 * NU; ++s) {
    const int c = 32 * (s >> 1) + 8 * t + 4 * (s & 1);
    uint2 v = make_uint2(0u, 0u), w = make_uint2(0u, 0u);
    if (c < D) {
      if (r < a.G) v = *reinterpret_cast<const uint2*>(a.qh + qbase + (int64_t)r * D + c);
      if (BIGG && r + 8 < a.G) w = *reinterpret_cast<const uint2*>(a.qh + qbase + (int64_t)(r + 8) * D + c);
    }
    qa0[s] = v.x;
    qa2[s] = v.y;
    if (BIGG) {
      qa1[s] = w.x;
      qa3[s] = w.y;
    }
  }
  constexpr int NQU = QJL ? 8 : 1;  // m <= 256, m % 32 == 0
  uint32_t sa0[2 * NQU], sa2[2 * NQU], sa1[(QJL && BIGG) ? 2 * NQU : 1], sa3[(QJL && BIGG) ? 2 * NQU : 1];
  const int nqu = QJL ? a.m / 32 : 0;
  if (QJL) {
    const int64_t sbase = ((int64_t)b * a.Hq + (int64_t)g * a.G) * a.m;
#pragma unroll
    for (int s = 0; s < 2 * NQU; ++s) {
      sa0[s] = sa2[s] = 0u;
      if (BIGG) sa1[s] = sa3[s] = 0u;
      if ((s >> 1) < nqu) {
        const int c = 32 * (s >> 1) + 8 * t + 4 * (s & 1);
        if (r < a.G) {
          uint2 v = *reinterpret_cast<const uint2*>(a.sqh + sbase + (int64_t)r * a.m + c);
          sa0[s] = v.x;
          sa2[s] = v.y;
        }
        if (BIGG && r + 8 < a.G) {
          uint2 v = *reinterpret_cast<const uint2*>(a.sqh + sbase + (int64_t)(r + 8) * a.m + c);
          sa1[s] = v.x;
          sa3[s] = v.y;
        }
      }
    }
  }
  const uint32_t vmask = (1u << vb) - 1u;
  const uint32_t pmask = (1u << (2 * kb)) - 1u;
  const int rnw = rnorm_word(D, kb);
  const int sgw = signs_word(D, kb);

  // O^T accumulators: M-tile mt (16 coordinates: slot r <-> 64*(mt/4) + 8r + 2*(mt%4), slot r+8 <-> +1),
  // N = 8 heads (2t, 2t+1 in this thread), NB n8 tiles (heads 0-7 | 8-15).
  constexpr int NMT = 4 * NG, NB = BIGG ? 2 : 1;
  float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.f, l1 = 0.f;
  float oacc[NMT][NB][4];
#pragma unroll
  for (int mt = 0; mt < NMT; ++mt)
#pragma unroll
    for (int nb = 0; nb < NB; ++nb)
#pragma unroll
      for (int k = 0; k < 4; ++k) oacc[mt][nb][k] = 0.f;

  const int64_t hrow0 = ((int64_t)b * a.Hkv + g) * a.Pp;
  const uint8_t* gK = a.pk + hrow0 * a.Rk;
  const uint8_t* gV = a.pv + hrow0 * a.Rv;
  const int ntiles = kend > kbeg ? (kend - kbeg + kTileKeys - 1) / kTileKeys : 0;
  const int kspan = ((kTileKeys * a.Rk + 16 + 8) + 15) & ~15;
  auto stageK = [&](int st) { return stages + st * a.stage_bytes; };
  auto stageV = [&](int st) { return stages + st * a.stage_bytes + kspan; };
  int offK0 = 0, offK1 = 0, offV0 = 0, offV1 = 0;
  __syncthreads();  // LUTs ready
  if (ntiles > 0) {
    int n0 = min(kTileKeys, kend - kbeg);
    offK0 = load_span(stageK(0), gK + (int64_t)kbeg * a.Rk, n0 * a.Rk);
    offV0 = load_span(stageV(0), gV + (int64_t)kbeg * a.Rv, n0 * a.Rv);
  }
  cp_commit();
  for (int it = 0; it < ntiles; ++it) {
    const int st = it & 1;
    if (it + 1 < ntiles) {
      int k0 = kbeg + (it + 1) * kTileKeys;
      int n1 = min(kTileKeys, kend - k0);
      int ok_ = load_span(stageK(st ^ 1), gK + (int64_t)k0 * a.Rk, n1 * a.Rk);
      int ov_ = load_span(stageV(st ^ 1), gV + (int64_t)k0 * a.Rv, n1 * a.Rv);
      if (st) { offK0 = ok_; offV0 = ov_; } else { offK1 = ok_; offV1 = ov_; }
    }
    cp_commit();
    cp_wait<1>();
    __syncthreads();
    const int t0 = kbeg + it * kTileKeys;
    const int nrows = min(kTileKeys, kend - t0);
    const uint8_t* sK = stageK(st) + (st ? offK1 : offK0);
    const uint8_t* sV = stageV(st) + (st ? offV1 : offV0);
#pragma unroll
    for (int u = 0; u < kSubPerWarp; ++u) {
      const int sub0 = (warp * kSubPerWarp + u) * 16;
      if (sub0 >= nrows) break;
      // ---- scores^T: [heads x 16 keys] as two n8 tiles.
      float sc[2][4];
#pragma unroll
      for (int nt = 0; nt < 2; ++nt) {
        sc[nt][0] = sc[nt][1] = sc[nt][2] = sc[nt][3] = 0.f;
        const uint32_t* kr = reinterpret_cast<const uint32_t*>(sK + (int64_t)min(sub0 + nt * 8 + r, nrows - 1) * a.Rk);
#pragma unroll
        for (int uu = 0; uu < NU; ++uu) {
          const bool valid = 32 * uu + 8 * t < D;
          uint32_t f;
          if (B4) {
            f = valid ? kr[1 + 4 * uu + t] : 0u;
          } else {
            const int bit = kb * (32 * uu + 8 * t);
            f = valid ? get_bits(kr + 1, bit, 8 * kb) : 0u;
          }
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            uint32_t i0, i1;
            if (B4) {
              // byte (2h) and (2h+1) of f, times 64 (entry stride), | copy offset
              i0 = ((h == 0 ? (f << 6) : (f >> 10)) & 0x3FC0u) | cl4;
              i1 = ((h == 0 ? (f >> 2) : (f >> 18)) & 0x3FC0u) | cl4;
            } else {
              i0 = (((f >> (2 * kb * (2 * h))) & pmask) << 6) | cl4;
              i1 = (((f >> (2 * kb * (2 * h + 1))) & pmask) << 6) | cl4;
            }
            const uint32_t b0 = TQ_LUT(lutKb, i0), b1 = TQ_LUT(lutKb, i1);
            const int s = 2 * uu + h;
            mma16816(sc[nt], qa0[s], BIGG ? qa1[s] : qa0[s], qa2[s], BIGG ? qa3[s] : qa2[s], b0, b1);  // !BIGG: rows 8-15 duplicate (unused)
          }
        }
        const int k0 = min(sub0 + nt * 8 + 2 * t, nrows - 1), k1 = min(sub0 + nt * 8 + 2 * t + 1, nrows - 1);
        const uint32_t* kr0 = reinterpret_cast<const uint32_t*>(sK + (int64_t)k0 * a.Rk);
        const uint32_t* kr1 = reinterpret_cast<const uint32_t*>(sK + (int64_t)k1 * a.Rk);
        const float ks0 = __uint_as_float(kr0[0]), ks1 = __uint_as_float(kr1[0]);
        if (QJL) {
          float qc[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
          for (int uu = 0; uu < NQU; ++uu) {
            if (uu < nqu) {
              uint32_t f = (kr[sgw + uu] >> (8 * t)) & 0xFFu;
#pragma unroll
              for (int h = 0; h < 2; ++h) {
                uint32_t b0 = lutQ[((f >> (4 * h)) & 3u) * kLutCopies + cl];
                uint32_t b1 = lutQ[((f >> (4 * h + 2)) & 3u) * kLutCopies + cl];
                const int s = 2 * uu + h;
                mma16816(qc, sa0[s], BIGG ? sa1[s] : sa0[s], sa2[s], BIGG ? sa3[s] : sa2[s], b0, b1);
              }
            }
          }
          const float rn0 = __uint_as_float(kr0[rnw]), rn1 = __uint_as_float(kr1[rnw]);
          sc[nt][0] = sc[nt][0] * ks0 + qc[0] * rn0;
          sc[nt][1] = sc[nt][1] * ks1 + qc[1] * rn1;
          sc[nt][2] = sc[nt][2] * ks0 + qc[2] * rn0;
          sc[nt][3] = sc[nt][3] * ks1 + qc[3] * rn1;
        } else {
          sc[nt][0] *= ks0;
          sc[nt][1] *= ks1;
          sc[nt][2] *= ks0;
          sc[nt][3] *= ks1;
        }
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          const int kk = sub0 + nt * 8 + 2 * t + (k & 1);
          float s = sc[nt][k];
          if (a.softcap > 0.f) s = a.softcap * tanhf(s / a.softcap) * kLog2e;
          sc[nt][k] = kk < nrows ? s : -INFINITY;
        }
      }
      // ---- online softmax, rows r (regs 0,1) and r+8 (regs 2,3); rescale only when a max moved.
      float mx0 = fmaxf(fmaxf(sc[0][0], sc[0][1]), fmaxf(sc[1][0], sc[1][1]));
      float mx1 = BIGG ? fmaxf(fmaxf(sc[0][2], sc[0][3]), fmaxf(sc[1][2], sc[1][3])) : -INFINITY;
      mx0 = fmaxf(mx0, __shfl_xor_sync(kFull, mx0, 1));
      mx0 = fmaxf(mx0, __shfl_xor_sync(kFull, mx0, 2));
      if (BIGG) {
        mx1 = fmaxf(mx1, __shfl_xor_sync(kFull, mx1, 1));
        mx1 = fmaxf(mx1, __shfl_xor_sync(kFull, mx1, 2));
      }
      const bool moved = mx0 > m0 || (BIGG && mx1 > m1);
      if (__any_sync(kFull, moved)) {
        const float mn0 = fmaxf(m0, mx0), mn1 = fmaxf(m1, mx1);
        const float c0 = mn0 == -INFINITY ? 1.f : exp2f(m0 - mn0);
        const float c1 = mn1 == -INFINITY ? 1.f : exp2f(m1 - mn1);
        m0 = mn0;
        m1 = mn1;
        l0 *= c0;
        l1 *= c1;
        // this thread's accumulator columns are heads 2t, 2t+1 (| 8+2t, 9+2t): their factors live in
        // the lanes whose row r is that head
        const float fa = __shfl_sync(kFull, c0, 8 * t), fb = __shfl_sync(kFull, c0, 8 * t + 4);
        const float ga = BIGG ? __shfl_sync(kFull, c1, 8 * t) : 1.f, gb = BIGG ? __shfl_sync(kFull, c1, 8 * t + 4) : 1.f;
#pragma unroll
        for (int mt = 0; mt < NMT; ++mt) {
          oacc[mt][0][0] *= fa;
          oacc[mt][0][1] *= fb;
          oacc[mt][0][2] *= fa;
          oacc[mt][0][3] *= fb;
          if (BIGG) {
            oacc[mt][NB - 1][0] *= ga;
            oacc[mt][NB - 1][1] *= gb;
            oacc[mt][NB - 1][2] *= ga;
            oacc[mt][NB - 1][3] *= gb;
          }
        }
      }
      const float mu0 = m0 == -INFINITY ? 0.f : m0, mu1 = m1 == -INFINITY ? 0.f : m1;
      float p[2][4];
#pragma unroll
      for (int nt = 0; nt < 2; ++nt) {
        p[nt][0] = exp2f(sc[nt][0] - mu0);
        p[nt][1] = exp2f(sc[nt][1] - mu0);
        p[nt][2] = BIGG ? exp2f(sc[nt][2] - mu1) : 0.f;
        p[nt][3] = BIGG ? exp2f(sc[nt][3] - mu1) : 0.f;
      }
      l0 += (p[0][0] + p[0][1]) + (p[1][0] + p[1][1]);
      if (BIGG) l1 += (p[0][2] + p[0][3]) + (p[1][2] + p[1][3]);
      // ---- P * vscale as the A operand (keys 2t, 2t+1 | 8+2t, 8+2t+1).
      const uint32_t* vr[4];
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const int kk = sub0 + 2 * t + (q & 1) + 8 * (q >> 1);
        vr[q] = reinterpret_cast<const uint32_t*>(sV + (int64_t)min(kk, nrows - 1) * a.Rv);
      }
      float vs[4];
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const int kk = sub0 + 2 * t + (q & 1) + 8 * (q >> 1);
        vs[q] = kk < nrows ? __uint_as_float(vr[q][0]) : 0.f;
      }
      // P^T as the B operand: b0 = keys (2t, 2t+1), b1 = keys (2t+8, 2t+9) of head r (| r+8).
      const uint32_t bp0 = pack_h2(p[0][0] * vs[0], p[0][1] * vs[1]);
      const uint32_t bp1 = pack_h2(p[1][0] * vs[2], p[1][1] * vs[3]);
      const uint32_t bq0 = BIGG ? pack_h2(p[0][2] * vs[0], p[0][3] * vs[1]) : 0u;
      const uint32_t bq1 = BIGG ? pack_h2(p[1][2] * vs[2], p[1][3] * vs[3]) : 0u;
      // ---- O^T += Vc^T * P^T: A fragment = key pairs (2t, 2t+1 | 2t+8, 2t+9) of coordinates in chunk r.
#pragma unroll
      for (int gg = 0; gg < NG; ++gg) {
        const int chunkc = 8 * gg + r;
        const bool vok = 8 * chunkc < D;
        uint32_t x[4];
#pragma unroll
        for (int q = 0; q < 4; ++q) {
          if (B4) x[q] = vok ? vr[q][1 + chunkc] : 0u;
          else x[q] = vok ? get_bits(vr[q] + 1, 8 * vb * chunkc, 8 * vb) : 0u;
        }
        if (B4) {
          // byte k of y0 / y1: (code_a | code_b << 4) of coordinate 2k / 2k+1 of the chunk
          const uint32_t y0 = (x[0] & 0x0F0F0F0Fu) | ((x[1] << 4) & 0xF0F0F0F0u);
          const uint32_t y1 = ((x[0] >> 4) & 0x0F0F0F0Fu) | (x[1] & 0xF0F0F0F0u);
          const uint32_t z0 = (x[2] & 0x0F0F0F0Fu) | ((x[3] << 4) & 0xF0F0F0F0u);
          const uint32_t z1 = ((x[2] >> 4) & 0x0F0F0F0Fu) | (x[3] & 0xF0F0F0F0u);
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            auto idx = [&](uint32_t y) -> uint32_t {
              return ((j == 0 ? (y << 6) : (y >> (8 * j - 6))) & 0x3FC0u) | cl4;
            };
            const uint32_t a0 = TQ_LUT(lutVb, idx(y0)), a1 = TQ_LUT(lutVb, idx(y1));
            const uint32_t a2 = TQ_LUT(lutVb, idx(z0)), a3 = TQ_LUT(lutVb, idx(z1));
            mma16816(oacc[4 * gg + j][0], a0, a1, a2, a3, bp0, bp1);
            if (BIGG) mma16816(oacc[4 * gg + j][NB - 1], a0, a1, a2, a3, bq0, bq1);
          }
        } else {
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            auto idx = [&](uint32_t xa, uint32_t xb, int c) -> uint32_t {
              return (((((xa >> (vb * c)) & vmask) | (((xb >> (vb * c)) & vmask) << vb))) << 6) | cl4;
            };
            const uint32_t a0 = TQ_LUT(lutVb, idx(x[0], x[1], 2 * j)), a1 = TQ_LUT(lutVb, idx(x[0], x[1], 2 * j + 1));
            const uint32_t a2 = TQ_LUT(lutVb, idx(x[2], x[3], 2 * j)), a3 = TQ_LUT(lutVb, idx(x[2], x[3], 2 * j + 1));
            mma16816(oacc[4 * gg + j][0], a0, a1, a2, a3, bp0, bp1);
            if (BIGG) mma16816(oacc[4 * gg + j][NB - 1], a0, a1, a2, a3, bq0, bq1);
          }
        }
      }
    }
    __syncthreads();
  }
  cp_wait<0>();
#undef TQ_LUT
  l0 += __shfl_xor_sync(kFull, l0, 1);
  l0 += __shfl_xor_sync(kFull, l0, 2);
  l1 += __shfl_xor_sync(kFull, l1, 1);
  l1 += __shfl_xor_sync(kFull, l1, 2);
  __syncthreads();
  float* mo = reinterpret_cast<float*>(stages);
  float* mm = mo + kDecodeWarps * a.G * D;
  float* ml = mm + kDecodeWarps * a.G;
#pragma unroll
  for (int mt = 0; mt < NMT; ++mt)
#pragma unroll
    for (int nb = 0; nb < NB; ++nb) {
      const int cA = 64 * (mt >> 2) + 8 * r + 2 * (mt & 3), cB = cA + 1;
      const int h0 = 8 * nb + 2 * t, h1 = h0 + 1;
      if (cA < D) {
        if (h0 < a.G) mo[(warp * a.G + h0) * D + cA] = oacc[mt][nb][0];
        if (h1 < a.G) mo[(warp * a.G + h1) * D + cA] = oacc[mt][nb][1];
        if (h0 < a.G) mo[(warp * a.G + h0) * D + cB] = oacc[mt][nb][2];
        if (h1 < a.G) mo[(warp * a.G + h1) * D + cB] = oacc[mt][nb][3];
      }
    }
  if (t == 0) {
    if (r < a.G) {
      mm[warp * a.G + r] = m0;
      ml[warp * a.G + r] = l0;
    }
    if (BIGG && r + 8 < a.G) {
      mm[warp * a.G + r + 8] = m1;
      ml[warp * a.G + r + 8] = l1;
    }
  }
  __syncthreads();
  const int64_t prow0 = ((int64_t)b * a.Hq + (int64_t)g * a.G);
  for (int idx = tid; idx < a.G * D; idx += blockDim.x) {
    int hh = idx / D, c = idx - hh * D;
    float M = -INFINITY;
#pragma unroll
    for (int w = 0; w < kDecodeWarps; ++w) M = fmaxf(M, mm[w * a.G + hh]);
    float o = 0.f, l = 0.f;
    if (M != -INFINITY) {
#pragma unroll
      for (int w = 0; w < kDecodeWarps; ++w) {
        float f = exp2f(mm[w * a.G + hh] - M);
        o += f * mo[(w * a.G + hh) * D + c];
        l += f * ml[w * a.G + hh];
      }
    }
    int64_t pr = (prow0 + hh) * a.nsplit + split;
    a.part_o[pr * D + c] = o;
    if (c == 0) {
      a.part_ml[pr * 2] = M;
      a.part_ml[pr * 2 + 1] = l;
    }
  }
}

// Decode step (S == 1) pre-pass in one launch (v5; was prep_qk + two encodes + decode_prep):
// warps [0, B*Hq) rope + rotate the queries (float copy for the combine, fp16 rotated query and
// QJL sketch for the split kernel); the next B*Hkv warps rope + encode the new keys into present
// row past_len (float copy for the combine); the last B*Hkv warps encode the new values.
struct PreArgs {
  const void* q;
  const void* k;
  const void* v;
  const void* cosc;
  const void* sinc;
  const int32_t* seqlens;
  const float* rot;
  const float* kcb;
  const float* vcb;
  const float* S;
  float* qf;
  float* kf;
  __half* qh;
  __half* sqh;
  uint8_t* pk;
  uint8_t* pv;
  int B, Hq, Hkv, d, Pp, Rk, Rv, kbits, vbits, use_qjl, m, rotary, max_pos;
  float qscale, inv_sqrt_d;
  // recent window (RING): B*Hkv more blocks, the exact partials of the ring segment
  const void* kr;
  const void* vr;
  float* ring_o;   // [B*Hq, d]
  float* ring_ml;  // [B*Hq, 2]
  int R, window, ring_tk;  // ring_tk: keys per shared-memory tile of a RING block
  float scale, softcap;
};

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
  if (a.rotary) pos = min(max(pos, 0), a.max_pos - 1);
  const int half = d / 2;
  const T* qsrc = reinterpret_cast<const T*>(a.q) + ((int64_t)b * a.Hq + (int64_t)g * G) * d;
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
        if (a.rotary) {
          const T* cs = reinterpret_cast<const T*>(a.cosc);
          const T* sn = reinterpret_cast<const T*>(a.sinc);
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
  __shared__ float cbK[256], bndK[256], cbV[256], bndV[256];
  __shared__ float bufs[4][256];
  __shared__ uint32_t cws[4][64];
  const int KK = 1 << a.kbits, KV = 1 << a.vbits;
  for (int k = threadIdx.x; k < KK; k += blockDim.x) cbK[k] = a.kcb[k];
  for (int k = threadIdx.x; k < KK - 1; k += blockDim.x) bndK[k] = __fmul_rn(__fadd_rn(a.kcb[k], a.kcb[k + 1]), 0.5f);
  for (int k = threadIdx.x; k < KV; k += blockDim.x) cbV[k] = a.vcb[k];
  for (int k = threadIdx.x; k < KV - 1; k += blockDim.x) bndV[k] = __fmul_rn(__fadd_rn(a.vcb[k], a.vcb[k + 1]), 0.5f);
  __syncthreads();
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int w = blockIdx.x * 4 + warp;
  const int BHq = a.B * a.Hq, BHk = a.B * a.Hkv;
  if (RING) {
    const int warp_blocks = (BHq + 2 * BHk + 3) / 4;
    if ((int)blockIdx.x >= warp_blocks) {
      extern __shared__ float4 pre_dyn4[];
      decode_ring_block<T>(a, blockIdx.x - warp_blocks, reinterpret_cast<uint8_t*>(pre_dyn4));
      return;
    }
  }
  if (w >= BHq + 2 * BHk) return;
  const int d = a.d;
  float* buf = bufs[warp];
  const int kind = w < BHq ? 0 : (w < BHq + BHk ? 1 : 2);
  const int idx = kind == 0 ? w : (kind == 1 ? w - BHq : w - BHq - BHk);
  const int H = kind == 0 ? a.Hq : a.Hkv;
  const int b = idx / H;
  const int L = a.seqlens[b] + 1;
  const bool ok = L >= 1 && L <= a.Pp;
  const int past = ok ? L - 1 : 0;
  int pos = past;
  if (a.rotary) pos = min(max(pos, 0), a.max_pos - 1);
  float x[E];
  if (kind == 0) {
    load_rope<T, E>(reinterpret_cast<const T*>(a.q) + (int64_t)idx * d, reinterpret_cast<const T*>(a.cosc),
                    reinterpret_cast<const T*>(a.sinc), a.rotary, pos, d, lane, buf, x);
#pragma unroll
    for (int e = 0; e < E; ++e) {
      int i = e * 32 + lane;
      if (i < d) a.qf[(int64_t)idx * d + i] = x[e];
    }
    float qr[E];
    rotate_fwd<E, HAD>(x, qr, a.rot, d, lane, buf, a.inv_sqrt_d);
#pragma unroll
    for (int e = 0; e < E; ++e) {
      int i = e * 32 + lane;
      if (i < d) a.qh[(int64_t)idx * d + i] = __float2half_rn(qr[e] * a.qscale);
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
        a.sqh[(int64_t)idx * a.m + j] = __float2half_rn(acc * qc * a.qscale);
      }
    }
    return;
  }
  float sgn_reg[E];
#pragma unroll
  for (int e = 0; e < E; ++e) sgn_reg[e] = (HAD && e * 32 + lane < d) ? a.rot[e * 32 + lane] : 0.f;
  const int g = idx - b * a.Hkv;
  const int64_t row = ((int64_t)b * a.Hkv + g) * a.Pp + past;
  if (kind == 1) {
    load_rope<T, E>(reinterpret_cast<const T*>(a.k) + (int64_t)idx * d, reinterpret_cast<const T*>(a.cosc),
                    reinterpret_cast<const T*>(a.sinc), a.rotary, pos, d, lane, buf, x);
#pragma unroll
    for (int e = 0; e < E; ++e) {
      int i = e * 32 + lane;
      if (i < d) a.kf[(int64_t)idx * d + i] = x[e];
    }
    encode_warp<E, HAD>(x, d, a.rot, nullptr, sgn_reg, cbK, bndK, a.kbits, a.use_qjl, a.S, a.m,
                        ok ? reinterpret_cast<uint32_t*>(a.pk + row * a.Rk) : nullptr, a.inv_sqrt_d, buf,
                        cws[warp], lane);
  } else {
    load_rope<T, E>(reinterpret_cast<const T*>(a.v) + (int64_t)idx * d, nullptr, nullptr, 0, 0, d, lane, buf, x);
    encode_warp<E, HAD>(x, d, a.rot, nullptr, sgn_reg, cbV, bndV, a.vbits, 0, nullptr, 0,
                        ok ? reinterpret_cast<uint32_t*>(a.pv + row * a.Rv) : nullptr, a.inv_sqrt_d, buf,
                        cws[warp], lane);
  }
}

// Per (b, h) warp: merge the splits, rotate back, add the new token exactly, normalize.
template <typename T, int E, bool HAD, bool RING>
__global__ void decode_combine_kernel(AttnArgs a, const float* __restrict__ part_o, const float* __restrict__ part_ml,
                                      int nsplit) {
  __shared__ float bufs[4][256];
  __shared__ float wbufs[4][512];  // nsplit <= 512 (choose_nsplit)
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int w = blockIdx.x * 4 + warp;
  if (w >= a.B * a.Hq) return;
  const int d = a.d;
  const int b = w / a.Hq, h = w - b * a.Hq, g = h / (a.Hq / a.Hkv);
  T* out = reinterpret_cast<T*>(a.out) + (int64_t)w * d;
  int L, past, nvalid;
  if (!batch_geometry(a.seqlens, b, 1, a.Pp, L, past, nvalid)) {
    for (int c = lane; c < d; c += 32) out[c] = from_f<T>(__int_as_float(0x7fc00000));
    return;
  }
  float* buf = bufs[warp];
  float* wts = wbufs[warp];
  // Split weights exp2(m_s - M) lane-parallel into shared memory, then the partial vectors with
  // independent loads (v3 walked the splits with a dependent chain: ~20 us at 33 splits).
  float M = -INFINITY;
  for (int s = lane; s < nsplit; s += 32) M = fmaxf(M, part_ml[((int64_t)w * nsplit + s) * 2]);
  M = warp_max(M);
  float mr = -INFINITY;
  if (RING) {  // the ring segment's exact partial joins the merge
    mr = a.ring_ml[(int64_t)w * 2];
    M = fmaxf(M, mr);
  }
  float l = 0.f;
  for (int s = lane; s < nsplit; s += 32) {
    const float ms = part_ml[((int64_t)w * nsplit + s) * 2];
    const float f = (M == -INFINITY || ms == -INFINITY) ? 0.f : exp2f(ms - M);
    wts[s] = f;
    l += f * part_ml[((int64_t)w * nsplit + s) * 2 + 1];
  }
  l = warp_sum(l);
  float fr = 0.f;
  if (RING) {
    fr = (M == -INFINITY || mr == -INFINITY) ? 0.f : exp2f(mr - M);
    l += fr * a.ring_ml[(int64_t)w * 2 + 1];
  }
  __syncwarp();
  float o[E];
#pragma unroll
  for (int e = 0; e < E; ++e) o[e] = 0.f;
  const float* po = part_o + (int64_t)w * nsplit * d;
#pragma unroll 4
  for (int s = 0; s < nsplit; ++s) {
    const float f = wts[s];
#pragma unroll
    for (int e = 0; e < E; ++e) {
      int c = e * 32 + lane;
      if (c < d) o[e] += f * po[(int64_t)s * d + c];
    }
  }
  float x[E];
  rotate_inv<E, HAD>(o, x, a.rot, d, lane, buf, a.inv_sqrt_d);
  if (RING) {
#pragma unroll
    for (int e = 0; e < E; ++e) {
      int c = e * 32 + lane;
      if (c < d) x[e] += fr * a.ring_o[(int64_t)w * d + c];
    }
  }
  // New token (position past), exact.
  const float* q = a.qf + (int64_t)w * d;
  const float* kn = a.kf + ((int64_t)b * a.Hkv + g) * d;
  const T* vn = reinterpret_cast<const T*>(a.value) + ((int64_t)b * a.Hkv + g) * d;
  float dot = 0.f;
#pragma unroll
  for (int e = 0; e < E; ++e) {
    int c = e * 32 + lane;
    if (c < d) dot += q[c] * kn[c];
  }
  float sn = softcap_f(warp_sum(dot) * a.scale, a.softcap) * kLog2e;
  float Mf = fmaxf(M, sn);
  float fo = exp2f(M - Mf), fn = exp2f(sn - Mf);
  float il = 1.f / (l * fo + fn);
#pragma unroll
  for (int e = 0; e < E; ++e) {
    int c = e * 32 + lane;
    if (c < d) out[c] = from_f<T>((x[e] * fo + to_f<T>(vn[c]) * fn) * il);
  }
  // Ring slot of the new token (S = 1: p = past is valid and among the last R), once per kv head,
  // after the pre-pass read the ring (stream order).
  if (RING && h == g * (a.Hq / a.Hkv)) {
    const int64_t off = (((int64_t)b * a.Hkv + g) * a.R + past % a.R) * d;
    for (int c = lane; c < d; c += 32) {
      if (a.pkr) reinterpret_cast<T*>(a.pkr)[off + c] = from_f<T>(kn[c]);
      if (a.pvr) reinterpret_cast<T*>(a.pvr)[off + c] = vn[c];
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Host side.

struct Workspace {
  float* qf;
  float* kf;
  __half* qh;
  __half* sqh;
  float* part_o;
  float* part_ml;
  float* ring_o;   // recent window on the fast path: [B*Hq, d] and [B*Hq, 2]
  float* ring_ml;
  size_t bytes;
};

static size_t al256(size_t x) { return (x + 255) & ~(size_t)255; }

static bool fast_path_ok(const TqAttnParams* p) {
  if (p->force_path == 1) return false;
  if (p->S != 1) return false;
  if (p->value_bits < 1 || p->value_bits > 4 || p->key_bits < 1 || p->key_bits > 4) return false;
  int d = (int)p->d;
  if (!(d == 64 || d == 80 || d == 96 || d == 128 || d == 256)) return false;
  int G = (int)(p->Hq / p->Hkv);
  if (G > 16) return false;
  if (p->use_qjl && (p->m % 32 != 0 || p->m > 256)) return false;
  return true;
}

static int choose_nsplit(const TqAttnParams* p) {
  int64_t pairs = p->B * p->Hkv;
  int64_t target = (int64_t)num_sms() * 2;  // two resident blocks per SM
  int64_t ns = (target + pairs - 1) / pairs;
  int64_t maxs = (p->Pp + kTileKeys - 1) / kTileKeys;
  if (ns > maxs) ns = maxs;
  if (ns > 512) ns = 512;
  if (ns < 1) ns = 1;
  return (int)ns;
}

static Workspace carve(const TqAttnParams* p, void* base) {
  Workspace w{};
  size_t off = 0;
  auto take = [&](size_t n) {
    size_t o = off;
    off += al256(n);
    return base ? (void*)((char*)base + o) : nullptr;
  };
  w.qf = (float*)take(sizeof(float) * p->B * p->S * p->Hq * p->d);
  w.kf = (float*)take(sizeof(float) * p->B * p->S * p->Hkv * p->d);
  if (fast_path_ok(p)) {
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

static size_t decode_smem_bytes(const TqAttnParams* p, int& stage_bytes) {
  int Rk = row_bytes((int)p->d, (int)p->key_bits, (int)p->use_qjl, (int)p->m);
  int Rv = row_bytes((int)p->d, (int)p->value_bits, 0, 0);
  int kspan = ((kTileKeys * Rk + 16 + 8) + 15) & ~15;
  int vspan = ((kTileKeys * Rv + 16 + 8) + 15) & ~15;
  stage_bytes = kspan + vspan;
  size_t lut = sizeof(uint32_t) * kLutCopies * ((1 << (2 * p->key_bits)) + (1 << (2 * p->value_bits)) + 4);
  lut = (lut + 15) & ~(size_t)15;
  size_t G = p->Hq / p->Hkv;
  size_t merge = sizeof(float) * kDecodeWarps * G * (p->d + 2);
  size_t st = 2 * (size_t)stage_bytes;
  return lut + (st > merge ? st : merge);
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

template <int D, bool QJL, bool BIGG, bool B4>
static int launch_split(const DecodeArgs& da, int B, int Hkv, size_t smem, cudaStream_t stream) {
  auto kern = decode_split_kernel<D, QJL, BIGG, B4>;
  // Raise the dynamic shared-memory limit once per size seen (a host call per launch costs ORT time).
  static int raised[64] = {0};
  int dev = 0;
  cudaGetDevice(&dev);
  if (dev < 0 || dev >= 64 || (int)smem > raised[dev]) {
    cudaError_t e = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    if (e != cudaSuccess) return (int)e;
    if (dev >= 0 && dev < 64) raised[dev] = (int)smem;
  }
  dim3 grid(da.nsplit, Hkv, B);
  kern<<<grid, kDecodeWarps * 32, smem, stream>>>(da);
  return (int)cudaGetLastError();
}

template <int D>
static int launch_split_d(const DecodeArgs& da, bool qjl, bool bigg, int B, int Hkv, size_t smem, cudaStream_t s) {
  // b = 4 keys and values get the compile-time fast path (no QJL); everything else the run-time-bits one.
  if (qjl) return bigg ? launch_split<D, true, true, false>(da, B, Hkv, smem, s) : launch_split<D, true, false, false>(da, B, Hkv, smem, s);
  if (da.kbits == 4 && da.vbits == 4)
    return bigg ? launch_split<D, false, true, true>(da, B, Hkv, smem, s) : launch_split<D, false, false, true>(da, B, Hkv, smem, s);
  return bigg ? launch_split<D, false, true, false>(da, B, Hkv, smem, s) : launch_split<D, false, false, false>(da, B, Hkv, smem, s);
}

template <typename T, int E, bool HAD, bool RING>
static int run_attention_t(const TqAttnParams* p, const AttnArgs& aa, const Workspace& ws, cudaStream_t stream) {
  if (fast_path_ok(p)) {
    const int ns = choose_nsplit(p);
    const float qscale = (float)aa.scale * (aa.softcap > 0.f ? 1.f : kLog2e);
    const int BH = (int)(p->B * p->Hq);
    {
      PreArgs pa{};
      pa.q = p->query;
      pa.k = p->key;
      pa.v = p->value;
      pa.cosc = p->cos_cache;
      pa.sinc = p->sin_cache;
      pa.seqlens = p->seqlens_k;
      pa.rot = aa.rot;
      pa.kcb = aa.kcb;
      pa.vcb = aa.vcb;
      pa.S = p->use_qjl ? aa.qjl : nullptr;
      pa.qf = ws.qf;
      pa.kf = ws.kf;
      pa.qh = ws.qh;
      pa.sqh = ws.sqh;
      pa.pk = (uint8_t*)p->present_key;
      pa.pv = (uint8_t*)p->present_value;
      pa.B = aa.B;
      pa.Hq = aa.Hq;
      pa.Hkv = aa.Hkv;
      pa.d = aa.d;
      pa.Pp = aa.Pp;
      pa.Rk = aa.Rk;
      pa.Rv = aa.Rv;
      pa.kbits = aa.kbits;
      pa.vbits = aa.vbits;
      pa.use_qjl = aa.use_qjl;
      pa.m = aa.m;
      pa.rotary = (int)p->do_rotary;
      pa.max_pos = (int)p->max_pos;
      pa.qscale = qscale;
      pa.inv_sqrt_d = aa.inv_sqrt_d;
      const int jobs = (int)(p->B * (p->Hq + 2 * p->Hkv));
      int blocks = (jobs + 3) / 4;
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
        int dev = 0;
        cudaGetDevice(&dev);
        if (dev < 0 || dev >= 64 || (int)dyn > raised[dev]) {
          cudaError_t e = cudaFuncSetAttribute(decode_pre_kernel<T, E, HAD, RING>,
                                               cudaFuncAttributeMaxDynamicSharedMemorySize, (int)dyn);
          if (e != cudaSuccess) return (int)e;
          if (dev >= 0 && dev < 64) raised[dev] = (int)dyn;
        }
      }
      decode_pre_kernel<T, E, HAD, RING><<<blocks, 128, dyn, stream>>>(pa);
    }
    int rc = (int)cudaGetLastError();
    if (rc) return rc;
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
    size_t smem = decode_smem_bytes(p, da.stage_bytes);
    bool qjl = p->use_qjl != 0, bigg = da.G > 8;
    switch (aa.d) {
      case 64: rc = launch_split_d<64>(da, qjl, bigg, aa.B, aa.Hkv, smem, stream); break;
      case 80: rc = launch_split_d<80>(da, qjl, bigg, aa.B, aa.Hkv, smem, stream); break;
      case 96: rc = launch_split_d<96>(da, qjl, bigg, aa.B, aa.Hkv, smem, stream); break;
      case 128: rc = launch_split_d<128>(da, qjl, bigg, aa.B, aa.Hkv, smem, stream); break;
      case 256: rc = launch_split_d<256>(da, qjl, bigg, aa.B, aa.Hkv, smem, stream); break;
      default: return -1;
    }
    if (rc) return rc;
    AttnArgs ac = aa;
    if (RING) {
      ac.ring_o = ws.ring_o;
      ac.ring_ml = ws.ring_ml;
    }
    decode_combine_kernel<T, E, HAD, RING><<<(BH + 3) / 4, 128, 0, stream>>>(ac, ws.part_o, ws.part_ml, ns);
    return (int)cudaGetLastError();
  }
  int64_t warps = (int64_t)p->B * p->S * p->Hq;
  attn_simple_kernel<T, E, HAD, RING><<<(unsigned)((warps + kSimpleWarps - 1) / kSimpleWarps), kSimpleWarps * 32, 0, stream>>>(aa);
  int rc = (int)cudaGetLastError();
  if (rc || !RING || (!aa.pkr && !aa.pvr)) return rc;
  // Ring slots of the new tokens, after the attention kernel read the rings.
  int64_t total = p->B * p->S * p->Hkv * p->d;
  int blocks = (int)((total + 255) / 256);
  if (blocks > num_sms() * 16) blocks = num_sms() * 16;
  ring_write_kernel<T><<<blocks, 256, 0, stream>>>(aa.kf, (const T*)aa.value, aa.seqlens, (T*)aa.pkr, (T*)aa.pvr,
                                                   aa.B, aa.S, aa.Hkv, aa.d, aa.Pp, aa.R);
  return (int)cudaGetLastError();
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
  const bool fast = fast_path_ok(p);  // S == 1: the pre-pass is fused into decode_pre_kernel
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
