// TurboQuantAttention, path 3b: attn_simple_kernel, one warp per (batch, query token, head), every case.
#pragma once

#include "attention_common.cuh"

namespace tq {
namespace cuda {

// ---------------------------------------------------------------------------------------------
// 3b. Simple kernel: warp per (b, i, h). Correct for every case; used for prefill and fallbacks.
constexpr int kSimpleWarps = 4;

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

}  // namespace cuda
}  // namespace tq
