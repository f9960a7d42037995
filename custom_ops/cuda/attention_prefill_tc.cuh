// Prefill on tensor cores (v15): prefill_tc_kernel, a flash-attention tile kernel for S > 1 with
// compressed values, d in {64, 80, 96, 128}, QJL m a multiple of 16 up to 256 (one more score chain);
// fp16/bf16 inputs: the whole step; float32 inputs: phase 1 only, for attn_simple_kernel.
//
// A block owns kTcQ = 128 query slots of one (batch, kv head): slot m is token i0 + m / G and head
// g G + m % G, so every key row it reads serves all the GQA heads of the tokens. Each of the 8 warps
// owns 16 slots (the mma M rows). Two phases over 64-key chunks staged in shared memory:
//   1. the compressed cached rows [lo, comp_hi): 64 rows decoded once per block (scale times
//      centroid, float16), scored against the rotated queries (rotation of the reference), values
//      accumulated in the rotated domain; at the end each accumulator row goes back through R^T
//      (softmax rescaling is a per-row scalar, so the rotation commutes with what follows);
//   2. the exact rows: the recent-window ring (RING) and the new tokens (keys after RoPE from the
//      float32 copy, values from the input), causal per slot, in T (fp16 or bf16 mma).
// Scores S[16 x 64] = Q K^T and O[16 x d] += P V by mma.m16n8k16 with fp32 accumulation (ldmatrix for
// the Q, K and V fragments, P straight from the score registers); online softmax in the log2 domain.
// Launched by attention_launch.cuh (launch_prefill_tc).
#pragma once

#include "attention_common.cuh"
#include "attention_ptx.cuh"

namespace tq {
namespace cuda {

constexpr int kTcWarps = 8, kTcQ = 16 * kTcWarps, kTcKeys = 64;

template <int D>
struct TcSmem {
  static constexpr int LD = D + 8;                                // halves per row: ldmatrix rows in distinct banks
  static constexpr int kCb = 2 * 256 * 4;                         // key and value codebooks (float)
  static constexpr int kQ = kTcQ * LD * 2;                        // the block's queries
  static constexpr int kKV = 2 * kTcKeys * LD * 2;                // one chunk of keys and values
  static constexpr int kScratch = (kTcWarps / 2) * 16 * D * 4;    // R^T of the accumulators, half the warps at once
  static constexpr int bytes = kCb + kQ + (kKV > kScratch ? kKV : kScratch);
};

template <typename MT> __device__ __forceinline__ uint32_t pack2(float lo, float hi);
template <> __device__ __forceinline__ uint32_t pack2<__half>(float lo, float hi) { return pack_h2(lo, hi); }
template <> __device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float lo, float hi) {
  __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&h);
}

template <typename MT>
__device__ __forceinline__ void mma_tc(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);
template <>
__device__ __forceinline__ void mma_tc<__half>(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  mma16816(c, a[0], a[1], a[2], a[3], b0, b1);
}
template <>
__device__ __forceinline__ void mma_tc<__nv_bfloat16>(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Four 8x8 b16 matrices; lane L gives the row address of matrix L / 8 (row L % 8). trans: each thread
// gets a column pair instead of a row pair (the B operand of P V from row-major values).
__device__ __forceinline__ void ldsm_x4(uint32_t (&x)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(x[0]), "=r"(x[1]), "=r"(x[2]), "=r"(x[3]) : "r"(addr) : "memory");
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t (&x)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(x[0]), "=r"(x[1]), "=r"(x[2]), "=r"(x[3]) : "r"(addr) : "memory");
}

template <typename MT>
__device__ __forceinline__ uint4 pack8(const float (&v)[8]) {
  return make_uint4(pack2<MT>(v[0], v[1]), pack2<MT>(v[2], v[3]), pack2<MT>(v[4], v[5]), pack2<MT>(v[6], v[7]));
}
// 8 consecutive floats of global memory (32-byte aligned) packed as MT.
template <typename MT>
__device__ __forceinline__ uint4 load_pack8(const float* src) {
  const float4 u = reinterpret_cast<const float4*>(src)[0], v = reinterpret_cast<const float4*>(src)[1];
  const float x[8] = {u.x, u.y, u.z, u.w, v.x, v.y, v.z, v.w};
  return pack8<MT>(x);
}

// Split-K over the compressed rows (few query tiles, long cache: e.g. S = 2..16 speculative steps): ns
// blocks per tile, each a contiguous share of the chunks; the last one also does the exact rows. With
// ns > 1 each block writes its per-query partials, merged by prefill_merge_kernel.
struct TcSplits {
  int n;           // splits per tile (1: the kernel writes the output)
  float* part_o;   // [B*S*Hq, n, d] unnormalized accumulators (original basis)
  float* part_ml;  // [B*S*Hq, n, 2] max (log2 domain), sum
};

// Per thread: the two accumulator rows' query slots (r and r + 8 of the warp's 16).
struct TcRows {
  int p[2], lo[2];  // position of the query, first visible key
  bool ok[2];       // a real query (in the tile, not padding)
};

// S[16 x 32] += A[16 x 16 nkt] B^T for the 32 keys from row kh of B (both row-major in shared memory,
// `ld` halves per row): the score mma chain of one half chunk.
template <typename MT>
__device__ __forceinline__ void tc_scores(uint32_t qa, uint32_t ka, int ld, int kh, int nkt, float (&s)[kTcKeys / 16][4],
                                          int lane) {
  const int mi = lane >> 3, rr = lane & 7;
#pragma unroll
  for (int kt = 0; kt < nkt; ++kt) {  // (a compile-time nkt unrolls fully)
    uint32_t a[4];
    ldsm_x4(a, qa + ((rr + (mi & 1) * 8) * ld + kt * 16 + (mi >> 1) * 8) * 2);
#pragma unroll
    for (int np = 0; np < kTcKeys / 32; ++np) {
      uint32_t kb[4];
      ldsm_x4(kb, ka + ((kh + np * 16 + rr + (mi >> 1) * 8) * ld + kt * 16 + (mi & 1) * 8) * 2);
      mma_tc<MT>(s[2 * np], a, kb[0], kb[1]);
      mma_tc<MT>(s[2 * np + 1], a, kb[2], kb[3]);
    }
  }
}

// One 64-key chunk for the warp's 16 queries, as two 32-key halves (fewer live score registers: two
// blocks per SM): keys j0 + n visible to row k iff ok, j < jend, lo <= j <= p. Q at qa (the warp's first
// row), K and V at ka / va (row-major, LD halves per row). full: every key of the chunk is visible to
// every row of the warp (no per-element masks).
// QJL (phase 1): nq k-steps more from the sketch columns, qa2 / ka2 with ld2 halves per row (0: none).
template <typename MT, int D>
__device__ __forceinline__ void tc_chunk(uint32_t qa, uint32_t ka, uint32_t va, int j0, int jend, const TcRows& q,
                                         bool full, float softcap, float (&o)[D / 8][4], float (&mx)[2],
                                         float (&l)[2], int lane, uint32_t qa2 = 0, uint32_t ka2 = 0, int ld2 = 0,
                                         int nq = 0) {
  constexpr int LD = D + 8, NK = kTcKeys / 16;  // n-tiles of 8 keys per half
  const int t = lane & 3, mi = lane >> 3, rr = lane & 7;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int kh = half * (kTcKeys / 2);
    float s[NK][4];
#pragma unroll
    for (int n = 0; n < NK; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
    tc_scores<MT>(qa, ka, LD, kh, D / 16, s, lane);
    if (nq) tc_scores<MT>(qa2, ka2, ld2, kh, nq, s, lane);
    float cmax[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int n = 0; n < NK; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int k = e >> 1, j = j0 + kh + n * 8 + 2 * t + (e & 1);
        float x = (softcap > 0.f ? softcap_f(s[n][e], softcap) : s[n][e]) * kLog2e;
        if (!full && !(q.ok[k] && j < jend && j >= q.lo[k] && j <= q.p[k])) x = -INFINITY;
        s[n][e] = x;
        cmax[k] = fmaxf(cmax[k], x);
      }
    float base[2];
    bool moved = false;
#pragma unroll
    for (int k = 0; k < 2; ++k) {
      cmax[k] = fmaxf(cmax[k], __shfl_xor_sync(kFull, cmax[k], 1));
      cmax[k] = fmaxf(cmax[k], __shfl_xor_sync(kFull, cmax[k], 2));
      moved |= cmax[k] > mx[k];
    }
    // Rescale only when some row's maximum moved (after the first chunks: rarely).
    if (__any_sync(kFull, moved)) {
#pragma unroll
      for (int k = 0; k < 2; ++k) {
        const float mn = fmaxf(mx[k], cmax[k]);
        const float corr = exp2f(mx[k] - (mn == -INFINITY ? 0.f : mn));
        mx[k] = mn;
        l[k] *= corr;
#pragma unroll
        for (int n = 0; n < D / 8; ++n) {
          o[n][2 * k] *= corr;
          o[n][2 * k + 1] *= corr;
        }
      }
    }
#pragma unroll
    for (int k = 0; k < 2; ++k) base[k] = mx[k] == -INFINITY ? 0.f : mx[k];
#pragma unroll
    for (int n = 0; n < NK; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float p = exp2f(s[n][e] - base[e >> 1]);
        s[n][e] = p;
        l[e >> 1] += p;
      }
#pragma unroll
    for (int kc = 0; kc < NK / 2; ++kc) {
      const uint32_t pa[4] = {pack2<MT>(s[2 * kc][0], s[2 * kc][1]), pack2<MT>(s[2 * kc][2], s[2 * kc][3]),
                              pack2<MT>(s[2 * kc + 1][0], s[2 * kc + 1][1]),
                              pack2<MT>(s[2 * kc + 1][2], s[2 * kc + 1][3])};
#pragma unroll
      for (int dp = 0; dp < D / 16; ++dp) {
        uint32_t vb[4];
        ldsm_x4_t(vb, va + ((kh + kc * 16 + rr + (mi & 1) * 8) * LD + dp * 16 + (mi >> 1) * 8) * 2);
        mma_tc<MT>(o[2 * dp], pa, vb[0], vb[1]);
        mma_tc<MT>(o[2 * dp + 1], pa, vb[2], vb[3]);
      }
    }
  }
}

// The warp's 16 query rows into Qs (MT, times the softmax scale): rotated (phase 1) or as they are.
template <typename MT, int D, bool HAD, bool ROT>
__device__ __forceinline__ void tc_build_q(const AttnArgs& a, uint16_t* Qs, float* buf, int b, int g, int i0, int nvalid,
                                           int warp, int lane) {
  constexpr int E = (D + 31) / 32;
  const int G = a.Hq / a.Hkv, QT = kTcQ / G;
  for (int k = 0; k < 16; ++k) {
    const int m = warp * 16 + k, i = i0 + m / G, h = g * G + m % G;
    const bool ok = m < QT * G && i < nvalid;
    float x[E], y[E];
#pragma unroll
    for (int e = 0; e < E; ++e) {
      const int c = e * 32 + lane;
      x[e] = (ok && c < D) ? a.qf[(((int64_t)b * a.S + i) * a.Hq + h) * D + c] : 0.f;
    }
    if constexpr (ROT) {
      rotate_fwd<E, HAD>(x, y, a.rot, D, lane, buf, a.inv_sqrt_d);
    } else {
#pragma unroll
      for (int e = 0; e < E; ++e) y[e] = x[e];
    }
#pragma unroll
    for (int e = 0; e < E; ++e) {
      const int c = e * 32 + lane;
      if (c < D) {
        const uint32_t v = pack2<MT>(y[e] * a.scale, 0.f);
        Qs[m * (D + 8) + c] = (uint16_t)(v & 0xffffu);
      }
    }
  }
}

// Bytes of one staged chunk of rows (phase 1): kTcKeys rows of row_bytes, load_span's alignment slack
// (< 16) and the 8-byte word pair decode8 may read past a row's last code word.
__host__ __device__ inline int tc_span(int row_bytes) { return (kTcKeys * row_bytes + 32 + 15) & ~15; }
// m: QJL sketch size (0 without QJL): its query and key columns, m + 8 halves per row.
template <int D>
__host__ __device__ inline int tc_smem_bytes(int Rk, int Rv, int m) {
  return TcSmem<D>::bytes + 2 * (tc_span(Rk) + tc_span(Rv)) + (kTcQ + kTcKeys) * (m ? m + 8 : 0) * 2;
}

// Coordinates 8 grp .. 8 grp + 7 of a staged row (scale word, then the LSB-first code stream; bits in
// {1, 2, 3, 4, 5, 6, 8}, so the 8 codes lie in two consecutive words) as scale x centroid, packed fp16.
__device__ __forceinline__ uint4 decode8(const uint8_t* row, int grp, int bits, const float* cb) {
  const uint32_t* w = reinterpret_cast<const uint32_t*>(row);
  const float sc = __uint_as_float(w[0]);
  float x[8];
  if (bits == 4) {  // the common case: one word, fixed shifts
    const uint32_t w0 = w[1 + grp];
#pragma unroll
    for (int u = 0; u < 8; ++u) x[u] = sc * cb[(w0 >> (4 * u)) & 15u];
    return pack8<__half>(x);
  }
  const int bit0 = grp * 8 * bits, wi = 1 + (bit0 >> 5), sh = bit0 & 31;
  const uint32_t w0 = w[wi], w1 = w[wi + 1], mask = (1u << bits) - 1u;
#pragma unroll
  for (int u = 0; u < 8; ++u) {
    const int pos = sh + u * bits;
    x[u] = sc * cb[(pos < 32 ? __funnelshift_r(w0, w1, pos) : w1 >> (pos - 32)) & mask];
  }
  return pack8<__half>(x);
}

template <typename T, int D, bool HAD, bool RING, bool QJL>
__global__ void __launch_bounds__(kTcWarps * 32, HAD && !QJL ? 2 : 1) prefill_tc_kernel(AttnArgs a, TcSplits sp) {
  using L = TcSmem<D>;
  constexpr bool kF32 = std::is_same<T, float>::value;  // phase 1 only, for attn_simple_kernel
  constexpr int E = (D + 31) / 32, LD = L::LD, NG = D / 8, kTcItems = (kTcKeys * NG + kTcWarps * 32 - 1) / (kTcWarps * 32);
  extern __shared__ float4 tc_sm4[];
  uint8_t* sm = reinterpret_cast<uint8_t*>(tc_sm4);
  float* kcb = reinterpret_cast<float*>(sm);
  float* vcb = kcb + 256;
  uint16_t* Qs = reinterpret_cast<uint16_t*>(sm + L::kCb);
  uint16_t* Ks = reinterpret_cast<uint16_t*>(sm + L::kCb + L::kQ);
  uint16_t* Vs = Ks + kTcKeys * LD;
  const int G = a.Hq / a.Hkv, QT = kTcQ / G;
  const int ns = sp.n, split = blockIdx.x % ns, tiles = gridDim.x / ns;
  const int b = blockIdx.z, g = blockIdx.y, i0 = (tiles - 1 - blockIdx.x / ns) * QT;  // the longest tiles first
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, r = lane >> 2, t = lane & 3;
  T* out = reinterpret_cast<T*>(a.out);
  int Lb, past, nvalid;
  const bool geo = batch_geometry(a.seqlens, b, a.S, a.Pp, Lb, past, nvalid);
  if (!geo || i0 >= nvalid) {  // bad seqlens: NaN (as the simple kernel); right padding: zeros
    if (ns > 1 || kF32) return;  // prefill_merge_kernel / attn_simple_kernel writes these
    const float fill = geo ? 0.f : __int_as_float(0x7fc00000);
    for (int idx = tid; idx < QT * G * D; idx += blockDim.x) {
      const int m = idx / D, c = idx - m * D, i = i0 + m / G;
      if (i < a.S) out[(((int64_t)b * a.S + i) * a.Hq + g * G + m % G) * D + c] = from_f<T>(fill);
    }
    return;
  }
  TcRows q;
#pragma unroll
  for (int k = 0; k < 2; ++k) {
    const int m = warp * 16 + r + 8 * k, i = i0 + m / G;
    q.ok[k] = m < QT * G && i < nvalid;
    q.p[k] = past + i;
    q.lo[k] = a.window > 0 ? max(0, q.p[k] - a.window + 1) : 0;
  }
  const int pmax = past + min(i0 + QT, nvalid) - 1;
  const int jlo = a.window > 0 ? max(0, past + i0 - a.window + 1) : 0;  // the tile's first token sees most
  const int comp_hi = RING ? max(0, past - a.R) : past;
  // This split's share of the compressed rows' chunks (all of them when ns = 1).
  const int nch = comp_hi > jlo ? (comp_hi - jlo + kTcKeys - 1) / kTcKeys : 0;
  const int p1_lo = jlo + kTcKeys * (int)((int64_t)nch * split / ns);
  const int p1_hi = min(comp_hi, jlo + kTcKeys * (int)((int64_t)nch * (split + 1) / ns));
  // Whether any of the warp's rows sees a key of [j0, j0 + kTcKeys) below jend; whether all rows see all.
  auto warp_needs = [&](int j0, int jend) {
    bool need = false;
#pragma unroll
    for (int k = 0; k < 2; ++k) need |= q.ok[k] && j0 <= q.p[k] && j0 + kTcKeys > q.lo[k] && j0 < jend;
    return __any_sync(kFull, need);
  };
  auto warp_full = [&](int j0, int jend) {
    const int j1 = j0 + kTcKeys - 1;
    bool all = j1 < jend;
#pragma unroll
    for (int k = 0; k < 2; ++k) all &= q.ok[k] && q.lo[k] <= j0 && j1 <= q.p[k];
    return __all_sync(kFull, all);
  };
  const uint32_t qa = smem_u32(Qs + warp * 16 * LD), ka = smem_u32(Ks), va = smem_u32(Vs);
  float o[D / 8][4], mx[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
#pragma unroll
  for (int n = 0; n < D / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
  const int64_t head_row0 = ((int64_t)b * a.Hkv + g) * a.Pp;

  if (p1_lo < p1_hi) {  // phase 1: the compressed rows, in the rotated domain
    for (int k = tid; k < (1 << a.kbits); k += blockDim.x) kcb[k] = a.kcb[k];
    for (int k = tid; k < (1 << a.vbits); k += blockDim.x) vcb[k] = a.vcb[k];
    tc_build_q<__half, D, HAD, true>(a, Qs, reinterpret_cast<float*>(Ks) + warp * D, b, g, i0, nvalid, warp, lane);
    // QJL: the queries' sketch columns Q2 = (S q_r) * sqrt(pi/2) / m * scale (an mma of the rotated queries
    // against the rows of S, staged 64 at a time in the key buffer), and per chunk the keys' sign columns
    // +-rnorm: the correction is one more mma chain over m columns of the same scores.
    const int m2 = QJL ? a.m : 0, ld2 = m2 + 8;
    uint16_t* Q2s = reinterpret_cast<uint16_t*>(sm + TcSmem<D>::bytes + 2 * (tc_span(a.Rk) + tc_span(a.Rv)));
    uint16_t* K2s = Q2s + kTcQ * ld2;
    for (int r0 = 0; r0 < m2; r0 += kTcKeys) {  // (m2 = 0 without QJL)
      __syncthreads();  // Qs is in (first round); the previous rows of S are consumed
      for (int idx = tid; idx < kTcKeys * NG; idx += blockDim.x) {
        const int row = idx / NG, grp = idx - row * NG;
        *reinterpret_cast<uint4*>(Ks + row * LD + grp * 8) =
            r0 + row < m2 ? load_pack8<__half>(a.qjl + (int64_t)(r0 + row) * D + grp * 8) : make_uint4(0u, 0u, 0u, 0u);
      }
      __syncthreads();
      const float c = 1.2533141373155003f / (float)m2;
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        float sc[kTcKeys / 16][4] = {};
        tc_scores<__half>(qa, ka, LD, half * (kTcKeys / 2), D / 16, sc, lane);
#pragma unroll
        for (int n = 0; n < kTcKeys / 16; ++n)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int col = r0 + half * (kTcKeys / 2) + n * 8 + 2 * t + (e & 1), row = warp * 16 + r + 8 * (e >> 1);
            if (col < m2) Q2s[row * ld2 + col] = (uint16_t)(pack2<__half>(sc[n][e] * c, 0.f) & 0xffffu);
          }
      }
    }
    // The chunks' row bytes go through a 2-stage cp.async ring (the next chunk loads while this one is
    // decoded and used), then are decoded shared -> shared.
    uint8_t* raw = sm + TcSmem<D>::bytes;
    const int kspan = tc_span(a.Rk), vspan = tc_span(a.Rv);
    const uint8_t* pvb = reinterpret_cast<const uint8_t*>(a.pv);
    auto stage = [&](int j0, int st) {
      const int n = min(kTcKeys, p1_hi - j0);
      uint8_t* base = raw + st * (kspan + vspan);
      load_span(base, a.pk + (head_row0 + j0) * a.Rk, n * a.Rk);
      load_span(base + kspan, pvb + (head_row0 + j0) * a.Rv, n * a.Rv);
    };
    stage(p1_lo, 0);
    cp_commit();
    for (int j0 = p1_lo, st = 0; j0 < p1_hi; j0 += kTcKeys, st ^= 1) {
      if (j0 + kTcKeys < p1_hi) stage(j0 + kTcKeys, st ^ 1);
      cp_commit();  // (an empty group at the last chunk keeps wait_group 1 meaning "this chunk is in")
      cp_wait<1>();
      __syncthreads();  // this chunk's bytes are in; the previous chunk is consumed (first: Qs, codebooks)
      const uint8_t* kb = raw + st * (kspan + vspan) + ((uintptr_t)(a.pk + (head_row0 + j0) * a.Rk) & 15);
      const uint8_t* vb = raw + st * (kspan + vspan) + kspan + ((uintptr_t)(pvb + (head_row0 + j0) * a.Rv) & 15);
#pragma unroll
      for (int it = 0; it < kTcItems; ++it) {  // unrolled: the items' shared loads overlap
        const int idx = tid + it * kTcWarps * 32, row = idx / NG, grp = idx - row * NG;
        if (idx >= kTcKeys * NG) break;
        uint4 kw = make_uint4(0u, 0u, 0u, 0u), vw = kw;
        if (j0 + row < p1_hi) {
          kw = decode8(kb + row * a.Rk, grp, a.kbits, kcb);
          vw = decode8(vb + row * a.Rv, grp, a.vbits, vcb);
        }
        *reinterpret_cast<uint4*>(Ks + row * LD + grp * 8) = kw;
        *reinterpret_cast<uint4*>(Vs + row * LD + grp * 8) = vw;
      }
      if constexpr (QJL)
      for (int idx = tid; idx < kTcKeys * (m2 / 8); idx += blockDim.x) {  // QJL: sign bits -> +-rnorm
        const int row = idx / (m2 / 8), grp = idx - row * (m2 / 8);
        uint4 w = make_uint4(0u, 0u, 0u, 0u);
        if (j0 + row < p1_hi) {
          const uint32_t* kr = reinterpret_cast<const uint32_t*>(kb + row * a.Rk);
          const int cw = code_bytes(D, a.kbits) / 4;
          const float rn = __uint_as_float(kr[1 + cw]);
          const uint32_t bits = kr[2 + cw + (grp >> 2)] >> (8 * (grp & 3));
          float x[8];
#pragma unroll
          for (int u = 0; u < 8; ++u) x[u] = (bits >> u) & 1u ? rn : -rn;
          w = pack8<__half>(x);
        }
        *reinterpret_cast<uint4*>(K2s + row * ld2 + grp * 8) = w;
      }
      __syncthreads();
      if (warp_needs(j0, p1_hi)) {
        if constexpr (QJL)
          tc_chunk<__half, D>(qa, ka, va, j0, p1_hi, q, warp_full(j0, p1_hi), a.softcap, o, mx, l, lane,
                              smem_u32(Q2s + warp * 16 * ld2), smem_u32(K2s), ld2, m2 / 16);
        else
          tc_chunk<__half, D>(qa, ka, va, j0, p1_hi, q, warp_full(j0, p1_hi), a.softcap, o, mx, l, lane);
      }
    }
    // Back to the original basis: O <- R^T O row by row, half the warps at a time through scratch
    // (the chunk buffers); Qs is the rotation's per-warp buffer.
    for (int round = 0; round < (kF32 ? 0 : 2); ++round) {
      __syncthreads();
      if ((warp >> 2) == round) {
        float* sc = reinterpret_cast<float*>(Ks) + (warp & 3) * 16 * D;
#pragma unroll
        for (int n = 0; n < D / 8; ++n) {
          sc[r * D + n * 8 + 2 * t] = o[n][0];
          sc[r * D + n * 8 + 2 * t + 1] = o[n][1];
          sc[(r + 8) * D + n * 8 + 2 * t] = o[n][2];
          sc[(r + 8) * D + n * 8 + 2 * t + 1] = o[n][3];
        }
        __syncwarp();
        float* buf = reinterpret_cast<float*>(Qs) + warp * D;
        for (int row = 0; row < 16; ++row) {
          float y[E], x[E];
#pragma unroll
          for (int e = 0; e < E; ++e) {
            const int c = e * 32 + lane;
            y[e] = c < D ? sc[row * D + c] : 0.f;
          }
          rotate_inv<E, HAD>(y, x, a.rot, D, lane, buf, a.inv_sqrt_d);
#pragma unroll
          for (int e = 0; e < E; ++e) {
            const int c = e * 32 + lane;
            if (c < D) sc[row * D + c] = x[e];
          }
        }
        __syncwarp();
#pragma unroll
        for (int n = 0; n < D / 8; ++n) {
          o[n][0] = sc[r * D + n * 8 + 2 * t];
          o[n][1] = sc[r * D + n * 8 + 2 * t + 1];
          o[n][2] = sc[(r + 8) * D + n * 8 + 2 * t];
          o[n][3] = sc[(r + 8) * D + n * 8 + 2 * t + 1];
        }
      }
    }
    __syncthreads();
  }

  if constexpr (!kF32) {
    // Phase 2 (the last split): the exact rows (ring positions [comp_hi, past), then the new tokens up to
    // pmax), in T.
    const bool exact = split == ns - 1;
    if (exact) tc_build_q<T, D, HAD, false>(a, Qs, nullptr, b, g, i0, nvalid, warp, lane);
    const int x0 = max(jlo, comp_hi);
    const int64_t ring0 = ((int64_t)b * a.Hkv + g) * a.R;
    for (int j0 = x0; exact && j0 <= pmax; j0 += kTcKeys) {
      __syncthreads();
#pragma unroll
      for (int it = 0; it < kTcItems; ++it) {  // unrolled: the items' global loads are in flight together
        const int idx = tid + it * kTcWarps * 32, row = idx / NG, grp = idx - row * NG, j = j0 + row;
        if (idx >= kTcKeys * NG) break;
        uint4 kw = make_uint4(0u, 0u, 0u, 0u), vw = kw;
        if (j <= pmax) {
          if (RING && j < past) {
            const int64_t off = (ring0 + j % a.R) * D + grp * 8;
            kw = *reinterpret_cast<const uint4*>(reinterpret_cast<const T*>(a.kr) + off);
            vw = *reinterpret_cast<const uint4*>(reinterpret_cast<const T*>(a.vr) + off);
          } else {
            const int64_t off = (((int64_t)b * a.S + (j - past)) * a.Hkv + g) * D + grp * 8;
            kw = load_pack8<T>(a.kf + off);
            vw = *reinterpret_cast<const uint4*>(reinterpret_cast<const T*>(a.value) + off);
          }
        }
        *reinterpret_cast<uint4*>(Ks + row * LD + grp * 8) = kw;
        *reinterpret_cast<uint4*>(Vs + row * LD + grp * 8) = vw;
      }
      __syncthreads();
      if (warp_needs(j0, pmax + 1))
        tc_chunk<T, D>(qa, ka, va, j0, pmax + 1, q, warp_full(j0, pmax + 1), a.softcap, o, mx, l, lane);
    }
  }

  // The rows' results: the output (one split), this split's partial (merged by prefill_merge_kernel), or
  // for float32 inputs the compressed rows' partial in attn_simple_kernel's format (rotated accumulator,
  // max in the natural-log domain; it adds the ring and the new tokens in float32).
#pragma unroll
  for (int k = 0; k < 2; ++k) {
    l[k] += __shfl_xor_sync(kFull, l[k], 1);
    l[k] += __shfl_xor_sync(kFull, l[k], 2);
    const int m = warp * 16 + r + 8 * k, i = i0 + m / G;
    if (m >= QT * G || i >= a.S) continue;
    const int64_t qi = ((int64_t)b * a.S + i) * a.Hq + g * G + m % G;
    if (kF32 || ns > 1) {
      if (!q.ok[k]) continue;  // (padding: the simple kernel / the merge writes zeros)
      const int64_t pi = kF32 ? qi : qi * ns + split;
#pragma unroll
      for (int n = 0; n < D / 8; ++n)
        *reinterpret_cast<float2*>(sp.part_o + pi * D + n * 8 + 2 * t) = make_float2(o[n][2 * k], o[n][2 * k + 1]);
      if (t == 0)
        *reinterpret_cast<float2*>(sp.part_ml + 2 * pi) = make_float2(kF32 ? mx[k] * 0.6931471805599453f : mx[k], l[k]);
      continue;
    }
    if constexpr (!kF32) {
      const float inv = q.ok[k] ? 1.f / l[k] : 0.f;  // padding queries: zeros
      T* orow = out + qi * D;
#pragma unroll
      for (int n = 0; n < D / 8; ++n)
        *reinterpret_cast<uint32_t*>(orow + n * 8 + 2 * t) = pack2<T>(o[n][2 * k] * inv, o[n][2 * k + 1] * inv);
    }
  }
}

// One warp per (batch, token, head): the splits' partials -> output (NaN for bad seqlens, zeros for
// right padding, as prefill_tc_kernel with one split).
template <typename T>
__global__ void __launch_bounds__(128) prefill_merge_kernel(AttnArgs a, TcSplits sp) {
  const int64_t w = (int64_t)blockIdx.x * 4 + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (w >= (int64_t)a.B * a.S * a.Hq) return;
  const int d = a.d, ns = sp.n;
  const int i = (int)((w / a.Hq) % a.S), b = (int)(w / ((int64_t)a.Hq * a.S));
  T* out = reinterpret_cast<T*>(a.out) + w * d;
  int Lb, past, nvalid;
  const bool geo = batch_geometry(a.seqlens, b, a.S, a.Pp, Lb, past, nvalid);
  if (!geo || i >= nvalid) {
    const float fill = geo ? 0.f : __int_as_float(0x7fc00000);
    for (int c = lane; c < d; c += 32) out[c] = from_f<T>(fill);
    return;
  }
  const float* ml = sp.part_ml + w * ns * 2;
  float M = -INFINITY;
  for (int s = 0; s < ns; ++s) M = fmaxf(M, ml[2 * s]);
  float L = 0.f, acc[4] = {0.f, 0.f, 0.f, 0.f};
  for (int s = 0; s < ns; ++s) {
    const float ms = ml[2 * s];
    const float wgt = ms == -INFINITY ? 0.f : exp2f(ms - M);
    L += wgt * ml[2 * s + 1];
    const float* po = sp.part_o + (w * ns + s) * d;
#pragma unroll
    for (int e = 0; e < 4; ++e)
      if (e * 32 + lane < d) acc[e] += wgt * po[e * 32 + lane];
  }
  const float inv = 1.f / L;
#pragma unroll
  for (int e = 0; e < 4; ++e)
    if (e * 32 + lane < d) out[e * 32 + lane] = from_f<T>(acc[e] * inv);
}

}  // namespace cuda
}  // namespace tq
