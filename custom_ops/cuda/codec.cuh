// The row encode shared by the encode op (encode.cu) and the attention op's cache write: where a row
// goes (RowSink) and encode_warp (one vector per warp); the encode / decode launchers.
#pragma once

#include "common.cuh"

namespace tq {
namespace cuda {

// Where encoded row v goes. mode 0: rows + v * Rk. mode 1 (cache write): v = (b*S + i)*H + g
// goes to present[b, g, past_len(b) + i] with past_len from seqlens_k (docs/ops.md section 4).
struct RowSink {
  uint8_t* rows;
  int64_t Rk;
  int mode;
  int S, H, Pp;
  const int32_t* seqlens;
};

__device__ __forceinline__ uint8_t* sink_row(const RowSink& o, int64_t v) {
  if (o.mode == 0) return o.rows + v * o.Rk;
  int g = (int)(v % o.H);
  int64_t t = v / o.H;
  int i = (int)(t % o.S);
  int b = (int)(t / o.S);
  int L = o.seqlens[b] + 1;
  int past = L >= o.S ? L - o.S : 0;
  int pos = past + i;
  if (L < 1 || L > o.Pp || past + o.S > o.Pp) return nullptr;
  return o.rows + (((int64_t)b * o.H + g) * o.Pp + pos) * o.Rk;
}

// Encodes one vector held by a warp (element i = e*32 + lane in z[e], zero past d) into the row
// orow (nullptr: computed but not written). cb / bnd: codebook and boundaries in shared memory;
// buf: 256 floats and cw: 64 words of per-warp shared scratch; Rt: dense R^T in shared memory or null.
template <int E, bool HAD>
__device__ __forceinline__ void encode_warp(float (&z)[E], int d, const float* __restrict__ rot, const float* Rt,
                                            const float (&sgn_reg)[E], const float* cb, const float* bnd, int bits,
                                            int qjl, const float* __restrict__ S, int m, uint32_t* orow,
                                            float inv_sqrt_d, float* buf, uint32_t* cw, int lane) {
  const int K = 1 << bits;
  const int cwords = code_bytes(d, bits) / 4;
  const bool dense_smem = Rt != nullptr;
  bool bad = false;
#pragma unroll
  for (int e = 0; e < E; ++e) bad |= !finitef(z[e]);
  bad = __any_sync(kFull, bad);
  if (HAD) {
#pragma unroll
    for (int e = 0; e < E; ++e) z[e] = __fmul_rn(z[e], sgn_reg[e]);
    warp_fwht<E>(z, d, lane);
  } else {
#pragma unroll
    for (int e = 0; e < E; ++e) {
      int i = e * 32 + lane;
      if (i < d) buf[i] = z[e];
    }
    __syncwarp();
    float acc[E];
#pragma unroll
    for (int e = 0; e < E; ++e) acc[e] = 0.f;
    for (int j = 0; j < d; ++j) {
      float xj = buf[j];
#pragma unroll
      for (int e = 0; e < E; ++e) {
        int i = e * 32 + lane;
        if (i < d) {
          float r = dense_smem ? Rt[j * d + i] : __ldg(rot + (size_t)i * d + j);
          acc[e] = __fadd_rn(acc[e], __fmul_rn(r, xj));
        }
      }
    }
    __syncwarp();
#pragma unroll
    for (int e = 0; e < E; ++e) z[e] = acc[e];
  }
  // ss in 8 lanes, each lane sequential in increasing i (docs/ops.md 1.3 step 3).
  float sq[E];
#pragma unroll
  for (int e = 0; e < E; ++e) sq[e] = __fmul_rn(z[e], z[e]);
  float acc8 = 0.f;
#pragma unroll
  for (int e = 0; e < E; ++e) {
#pragma unroll
    for (int k = 0; k < 4; ++k) acc8 = __fadd_rn(acc8, __shfl_sync(kFull, sq[e], (lane & 7) + 8 * k));
  }
  float a0 = __shfl_sync(kFull, acc8, 0), a1 = __shfl_sync(kFull, acc8, 1), a2 = __shfl_sync(kFull, acc8, 2),
        a3 = __shfl_sync(kFull, acc8, 3), a4 = __shfl_sync(kFull, acc8, 4), a5 = __shfl_sync(kFull, acc8, 5),
        a6 = __shfl_sync(kFull, acc8, 6), a7 = __shfl_sync(kFull, acc8, 7);
  float ss = __fadd_rn(__fadd_rn(__fadd_rn(a0, a4), __fadd_rn(a2, a6)), __fadd_rn(__fadd_rn(a1, a5), __fadd_rn(a3, a7)));

  uint32_t code[E];
  float scale;
  if (bad) {
#pragma unroll
    for (int e = 0; e < E; ++e) code[e] = 0;
    scale = __int_as_float(0x7fc00000);
  } else if (ss == 0.f) {
#pragma unroll
    for (int e = 0; e < E; ++e) code[e] = (uint32_t)(K >> 1);
    scale = 0.f;
  } else {
    float inv = __frcp_rn(__fsqrt_rn(ss));
    float zc = 0.f, cc = 0.f;
#pragma unroll
    for (int e = 0; e < E; ++e) {
      float t = __fmul_rn(z[e], inv);
      int c = 0;
      for (int step = K >> 1; step; step >>= 1)
        if (t > bnd[c + step - 1]) c += step;
      code[e] = (uint32_t)c;
      if (e * 32 + lane < d) {
        float cv = cb[c];
        zc += z[e] * cv;
        cc += cv * cv;
      }
    }
    zc = warp_sum(zc);
    cc = warp_sum(cc);
    scale = inv_sqrt_d * zc / cc;
  }
  // QJL: residual in the rotated domain, its norm, and sign(S r).
  if (qjl) {
    float rr = 0.f;
#pragma unroll
    for (int e = 0; e < E; ++e) {
      int i = e * 32 + lane;
      if (i < d) {
        float r = z[e] * inv_sqrt_d - scale * cb[code[e]];
        buf[i] = r;
        rr += r * r;
      }
    }
    float rnorm = bad ? __int_as_float(0x7fc00000) : sqrtf(warp_sum(rr));
    __syncwarp();
    const int nsw = (m + 31) >> 5;
    for (int ew = 0; ew < nsw; ++ew) {
      int j = ew * 32 + lane;
      float p = 0.f;
      if (j < m && !bad) {
        const float* Sr = S + (size_t)j * d;
        if ((d & 3) == 0) {
          for (int k = 0; k < d; k += 4) {
            float4 s4 = __ldg(reinterpret_cast<const float4*>(Sr + k));
            p += s4.x * buf[k] + s4.y * buf[k + 1] + s4.z * buf[k + 2] + s4.w * buf[k + 3];
          }
        } else {
          for (int k = 0; k < d; ++k) p += __ldg(Sr + k) * buf[k];
        }
      }
      uint32_t bw = __ballot_sync(kFull, j < m && !bad && p >= 0.f);
      if (orow && lane == 0) orow[2 + cwords + ew] = bw;
    }
    if (orow && lane == 0) orow[1 + cwords] = __float_as_uint(rnorm);
    __syncwarp();
  }
  // Pack codes LSB-first into 32-bit words (shared-memory atomics; a shuffle-OR variant for
  // b in {1,2,4,8} measured slower: docs/cuda.md).
  for (int w = lane; w < cwords; w += 32) cw[w] = 0u;
  __syncwarp();
#pragma unroll
  for (int e = 0; e < E; ++e) {
    int i = e * 32 + lane;
    if (i < d && code[e]) {
      int bit = i * bits;
      int sh = bit & 31;
      atomicOr(&cw[bit >> 5], code[e] << sh);
      if (sh + bits > 32) atomicOr(&cw[(bit >> 5) + 1], code[e] >> (32 - sh));
    }
  }
  __syncwarp();
  if (orow) {
    if (lane == 0) orow[0] = __float_as_uint(scale);
    for (int w = lane; w < cwords; w += 32) orow[1 + w] = cw[w];
  }
  __syncwarp();
}

// Host-side launchers (encode.cu, decode.cu). Return a cudaError_t-like code, 0 on success; errors set msg.
int launch_encode(const void* x, int x_dtype, int64_t n, int d, const float* rot, int rot_rank, const float* cb,
                  int bits, int qjl, const float* S, int m, const RowSink& sink, cudaStream_t stream,
                  const char** msg);
int launch_decode(const uint8_t* rows, int64_t n, int d, const float* rot, int rot_rank, const float* cb, int bits,
                  int Rk, void* out, int out_dtype, cudaStream_t stream, const char** msg);

}  // namespace cuda
}  // namespace tq
