// TurboQuantAttention, path 3a: decode_split_kernel, split-K flash decoding over the compressed rows
// (decode step, S == 1). Its partials are merged by decode_combine_kernel (attention_decode_combine.cuh).
#pragma once

#include "attention_decode_common.cuh"
#include "attention_ptx.cuh"

namespace tq {
namespace cuda {

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

}  // namespace cuda
}  // namespace tq
