// TurboQuantAttention, decode step (S == 1): decode_pre_kernel, the query rotation (where the split
// kernel does not rotate its own) and the recent window's exact ring partials.
#pragma once

#include "attention_decode_common.cuh"

namespace tq {
namespace cuda {

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

}  // namespace cuda
}  // namespace tq
