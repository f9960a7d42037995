// TurboQuantAttention, decode step (S == 1), after the split kernel: decode_combine_kernel merges the
// splits' partials per query head (combine_head) and encodes the new rows (encode_new_row).
#pragma once

#include "attention_decode_common.cuh"
#include "codec.cuh"

namespace tq {
namespace cuda {

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

}  // namespace cuda
}  // namespace tq
