// TurboQuantAttention, prefill (S > 1): prefill_rows_kernel, the compressed rows' partials per query
// for attn_simple_kernel (attention_simple.cuh).
#pragma once

#include "attention_common.cuh"

namespace tq {
namespace cuda {

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

}  // namespace cuda
}  // namespace tq
