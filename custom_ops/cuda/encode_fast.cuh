// Throughput encode for the common case (docs/cuda.md, "Encode"): Hadamard rotation, no QJL,
// d in {32, 64, 128, 256}, b in {2, 3, 4}. Same codes as encode_warp (docs/ops.md 1.3, bit-exact),
// laid out for bandwidth instead of latency:
//   - a warp encodes 1024/d vectors at once, d/32 lanes per vector, 32 coordinates per lane;
//   - lane k of a vector holds the runs i = 8t + R*k + r (R = 8*32/d, r < R, t < d/8), so the
//     spec's 8 partial sums of squares (acc[i % 8], increasing i) are lane-local and only the FWHT
//     stages h = R .. 4 cross lanes;
//   - input tiles stream through a per-warp cp.async ring in shared memory (3 stages), so each warp
//     keeps two tiles of loads in flight while it computes;
//   - codes go to a per-warp byte buffer, and the lane that computed a vector's (b*32)-bit group
//     of codes packs and stores it;
//   - b >= 3: the code search is one grid-cell lookup and one compare (v17) where no cell of the
//     codebook's grid holds two boundaries, else the binary search (b = 2 always).
#pragma once

#include <type_traits>

#include "codec.cuh"

namespace tq {
namespace cuda {

constexpr int kFastEncWarps = 8;
constexpr int kFastEncStages = 3;  // 2 measured the same; 2 blocks per SM (up to 128 registers) beat 3 (80) by 2-10%
constexpr int kCbOff = 64;  // byte offset of the centroids after the boundaries (at most 15 of them, then +inf)
constexpr int kGridOff = 128;  // byte offset of the grid-cell table (v17)
constexpr int kGridCells = 32;  // one word each: with at most 32 entries, distinct cells are distinct banks
constexpr int kEncHeader = kGridOff + 4 * kGridCells;

template <typename Tin, int D>
struct FastEncLayout {
  static constexpr int LPV = D / 32;  // lanes per vector
  static constexpr int VPW = 32 / LPV;  // vectors per warp tile
  static constexpr int R = 8 / LPV;  // consecutive coordinates per lane in each block of 8
  static constexpr int T = D / 8;  // blocks of 8 per vector
  static constexpr int SZ = (int)sizeof(Tin);
  // Input slot per vector: d elements + 8 more, so the lanes of a tile's vectors read distinct banks.
  static constexpr int IN_STRIDE = (D + 8) * SZ;
  static constexpr int TILE = VPW * IN_STRIDE;
  // Code-byte slot per vector: d bytes + 16 (each 32-code group stays 16-byte aligned, banks spread).
  static constexpr int CODE_STRIDE = D + 16;
  static constexpr int WARP_BYTES = kFastEncStages * TILE + VPW * CODE_STRIDE;
};

// Shared memory: the boundaries (byte 0), centroids (byte kCbOff) and grid-cell table (byte kGridOff),
// then each warp's stages and code buffer.
template <typename Tin, int D>
constexpr size_t fast_encode_smem_bytes() {
  return kEncHeader + (size_t)kFastEncWarps * FastEncLayout<Tin, D>::WARP_BYTES;
}

// The raw 32-bit words of R consecutive elements of type Tin at shared address p (aligned to their size,
// or to 16): one or two shared loads. A 16-bit element alone sits in the low half of its word.
template <typename Tin, int R>
struct RawRun {
  static constexpr int B = R * (int)sizeof(Tin);
  static constexpr int W = B < 4 ? 1 : B / 4;
  uint32_t w[W];
};
template <typename Tin, int R>
__device__ __forceinline__ RawRun<Tin, R> load_raw(const uint8_t* p) {
  RawRun<Tin, R> o;
  constexpr int B = RawRun<Tin, R>::B;
  if constexpr (B >= 16) {
#pragma unroll
    for (int c = 0; c < B / 16; ++c) {
      const uint4 v = reinterpret_cast<const uint4*>(p)[c];
      o.w[4 * c] = v.x; o.w[4 * c + 1] = v.y; o.w[4 * c + 2] = v.z; o.w[4 * c + 3] = v.w;
    }
  } else if constexpr (B == 8) {
    const uint2 v = *reinterpret_cast<const uint2*>(p);
    o.w[0] = v.x; o.w[1] = v.y;
  } else if constexpr (B == 4) {
    o.w[0] = *reinterpret_cast<const uint32_t*>(p);
  } else {
    o.w[0] = *reinterpret_cast<const unsigned short*>(p);
  }
  return o;
}

// Element r of a raw run as float.
template <typename Tin, int R>
__device__ __forceinline__ float raw_elem(const RawRun<Tin, R>& raw, int r) {
  if constexpr (sizeof(Tin) == 4) {
    return __uint_as_float(raw.w[r]);
  } else {
    const unsigned short h = (unsigned short)(raw.w[r >> 1] >> (16 * (r & 1)));
    return to_f<Tin>(*reinterpret_cast<const Tin*>(&h));
  }
}

// x * s for Hadamard signs s = +-1 is x with its sign bit flipped where s < 0 (exact, NaN stays NaN).
// `sbits` holds the lane's 32 sign bits, bit e for its coordinate e = t*R + r, pre-arranged so that
// one shift and one LOP3 give each raw word's flip mask: for 16-bit pairs, bit w = coordinate 2w and
// bit 16 + w = coordinate 2w + 1 (see arrange_signs).
template <typename Tin, int R>
__device__ __forceinline__ void flip_signs(RawRun<Tin, R>& raw, uint32_t sbits, int t) {
#pragma unroll
  for (int i = 0; i < RawRun<Tin, R>::W; ++i) {
    if constexpr (sizeof(Tin) == 4) {
      const int e = t * R + i;  // sign bit e -> bit 31
      raw.w[i] ^= (sbits << (31 - e)) & 0x80000000u;
    } else if constexpr (R == 1) {
      const int e = t;  // sign bit e -> bit 15
      raw.w[i] ^= (e <= 15 ? sbits << (15 - e) : sbits >> (e - 15)) & 0x8000u;
    } else {
      const int w = (t * R) / 2 + i;  // bits w, 16 + w -> bits 15, 31
      raw.w[i] ^= (sbits << (15 - w)) & 0x80008000u;
    }
  }
}

// The lane's sign bits in flip_signs' arrangement, from its coordinates' signs (bit e: coordinate e < 0).
template <typename Tin, int R>
__device__ __forceinline__ uint32_t arrange_signs(uint32_t neg) {
  if constexpr (sizeof(Tin) == 4 || R == 1) {
    return neg;
  } else {
    uint32_t o = 0;
#pragma unroll
    for (int e = 0; e < 32; ++e) o |= ((neg >> e) & 1u) << ((e & 1) * 16 + (e >> 1));
    return o;
  }
}

// a += STEP where t > b, as one predicated add (the compiler's select form costs an extra move).
template <int STEP>
__device__ __forceinline__ void add_if_gt(uint32_t& a, float t, float b) {
  asm("{\n .reg .pred p;\n setp.gt.f32 p, %1, %2;\n @p add.u32 %0, %0, %3;\n}\n" : "+r"(a) : "f"(t), "f"(b), "n"(STEP));
}

// Grid-cell code search (v17). cell(t) = round(sat(t * gs + gb) * (kGridCells - 1)) is non-decreasing
// in t, so a boundary whose own cell is below t's is below t, and one whose cell is above is above it.
// With cnt[c] = #{k : cell(B[k]) < c}, the code of t in cell c is cnt[c] + (t > B[cnt[c]]), exactly
// the binary search's #{k : t > B[k]}, wherever no cell holds two boundaries (checked per block, which
// otherwise searches; B[K-1] = +inf). The result's bits are 0x4B000000 + cell (2^23 <= v < 2^24).
__device__ __forceinline__ uint32_t grid_cell_bits(float t, float gs, float gb) {
  float u;
  asm("fma.rn.sat.f32 %0, %1, %2, %3;\n" : "=f"(u) : "f"(t), "f"(gs), "f"(gb));  // NaN -> 0
  return __float_as_uint(__fmaf_rn(u, (float)(kGridCells - 1), 8388608.f));
}

// A word at shared address a.
__device__ __forceinline__ uint32_t lds_u32(uint32_t a) {
  uint32_t v;
  asm("ld.shared.u32 %0, [%1];\n" : "=r"(v) : "r"(a));
  return v;
}

// R code bytes (little-endian in run) to shared memory.
template <int R>
__device__ __forceinline__ void store_run(uint8_t* pc, uint64_t run) {
  if constexpr (R == 1) *pc = (uint8_t)run;
  else if constexpr (R == 2) *reinterpret_cast<unsigned short*>(pc) = (unsigned short)run;
  else if constexpr (R == 4) *reinterpret_cast<uint32_t*>(pc) = (uint32_t)run;
  else *reinterpret_cast<uint64_t*>(pc) = run;
}

// A float at shared address a + OFF (bytes).
template <int OFF>
__device__ __forceinline__ float lds_f32(uint32_t a) {
  float v;
  asm("ld.shared.f32 %0, [%1+%2];\n" : "=f"(v) : "r"(a), "n"(OFF));
  return v;
}

// 32 codes (one byte each, little-endian in cw) -> BITS words of the LSB-first stream.
template <int BITS>
__device__ __forceinline__ void pack32(const uint32_t (&cw)[8], uint32_t (&o)[BITS]) {
  if constexpr (BITS == 4) {
#pragma unroll
    for (int w = 0; w < 4; ++w) {
      // byte 2j of a = code 2j | code 2j+1 << 4; the permute keeps bytes 0 and 2 of each half
      uint32_t a = cw[2 * w] | (cw[2 * w] >> 4), b = cw[2 * w + 1] | (cw[2 * w + 1] >> 4);
      o[w] = __byte_perm(a, b, 0x6420);
    }
  } else {
#pragma unroll
    for (int w = 0; w < BITS; ++w) o[w] = 0u;
#pragma unroll
    for (int i = 0; i < 32; ++i) {
      const uint32_t c = (cw[i >> 2] >> (8 * (i & 3))) & 0xffu;
      const int bit = i * BITS, wi = bit >> 5, sh = bit & 31;
      o[wi] |= c << sh;
      if (sh + BITS > 32) o[wi + 1] |= c >> (32 - sh);
    }
  }
}

template <typename Tin, int D, int BITS>
__global__ void __launch_bounds__(kFastEncWarps * 32, 2)
    encode_fast_kernel(const Tin* __restrict__ x, int64_t n, const float* __restrict__ signs,
                       const float* __restrict__ cb_g, RowSink out, float inv_sqrt_d, int allow_grid) {
  using L = FastEncLayout<Tin, D>;
  constexpr int K = 1 << BITS, R = L::R, T = L::T, LPV = L::LPV, VPW = L::VPW;
  static_assert(T * R == 32, "32 coordinates per lane");
  extern __shared__ float4 smem4[];
  float* bnd = reinterpret_cast<float*>(smem4);  // boundaries at byte 0, centroids at byte kCbOff
  float* cb = bnd + kCbOff / 4;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  uint32_t* grid = reinterpret_cast<uint32_t*>(reinterpret_cast<uint8_t*>(smem4) + kGridOff);
  uint8_t* wsm = reinterpret_cast<uint8_t*>(smem4) + kEncHeader + warp * L::WARP_BYTES;
  uint8_t* codes = wsm + kFastEncStages * L::TILE;
  for (int k = threadIdx.x; k < K; k += blockDim.x) cb[k] = cb_g[k];
  for (int k = threadIdx.x; k < K - 1; k += blockDim.x) bnd[k] = __fmul_rn(__fadd_rn(cb_g[k], cb_g[k + 1]), 0.5f);
  if (threadIdx.x == 0) bnd[K - 1] = INFINITY;  // the grid search's compare for cells above every boundary

  const int g = lane / LPV, k = lane % LPV;
  // Hadamard signs of this lane's coordinates as sign bits (x * -1 is x with its sign bit flipped).
  uint32_t neg = 0;
#pragma unroll
  for (int t = 0; t < T; ++t)
#pragma unroll
    for (int r = 0; r < R; ++r) neg |= (signs[8 * t + R * k + r] < 0.f ? 1u : 0u) << (t * R + r);
  const uint32_t sbits = arrange_signs<Tin, R>(neg);

  const int64_t ntiles = (n + VPW - 1) / VPW;
  const int64_t w0 = (int64_t)blockIdx.x * kFastEncWarps + warp, nw = (int64_t)gridDim.x * kFastEncWarps;
  // Every call commits one group (empty past the end), so wait_group counts stay uniform.
  auto issue = [&](int64_t tile, int stage) {
    if (tile < ntiles) {
      constexpr int CH = D * L::SZ / 16;  // 16-byte chunks per vector
      const uint8_t* src = reinterpret_cast<const uint8_t*>(x + tile * VPW * D);
      const int nv = (int)min((int64_t)VPW, n - tile * VPW);
      uint8_t* dst = wsm + stage * L::TILE;
#pragma unroll
      for (int j = 0; j < VPW * CH / 32; ++j) {
        const int q = lane + 32 * j, v = q / CH, c = q - v * CH;
        if (v < nv) cp_async16(dst + v * L::IN_STRIDE + c * 16, src + (size_t)q * 16);
      }
    }
    cp_commit();
  };
#pragma unroll
  for (int s = 0; s < kFastEncStages - 1; ++s) issue(w0 + s * nw, s);
  __syncthreads();  // codebook and boundaries
  const uint32_t sb = smem_u32(bnd);
  const float bmid = bnd[K / 2 - 1];  // the binary search's first boundary, kept in a register
  // Grid cells (b >= 3; for 2-bit codes the binary search is one shared load and the grid measured 10%
  // slower, for 3-bit codes the same): B[0] at the middle of cell 1, B[K-2] at the middle of cell
  // kGridCells - 2.
  constexpr bool kGrid = BITS >= 3;
  const float blo = bnd[0], bhi = bnd[K - 2];
  const float gs = ((float)(kGridCells - 3) / (float)(kGridCells - 1)) / (bhi - blo);
  const float gb = 1.f / (float)(kGridCells - 1) - blo * gs;
  bool cell_ok = kGrid && allow_grid && bhi > blo && finitef(gs) && finitef(gb);
  if (kGrid && threadIdx.x < kGridCells) {
    const uint32_t c = 0x4B000000u + threadIdx.x;
    int below = 0, at = 0;
    for (int k = 0; k < K - 1; ++k) {
      const uint32_t ck = grid_cell_bits(bnd[k], gs, gb);
      below += ck < c;
      at += ck == c;
    }
    grid[threadIdx.x] = sb + 4u * below;  // the address of B[below]
    cell_ok &= at <= 1;
  }
  const bool use_grid = __syncthreads_and(cell_ok);
  // + 4 * bits = the cell's word (mod 2^32). Plus a run-time zero (allow_grid is nonzero wherever the
  // grid runs), so that the address is one LEA: from a known value the compiler split the constant into
  // a second add per lookup.
  const uint32_t gadj = smem_u32(grid) - 4u * 0x4B000000u + (uint32_t)(allow_grid == 0);

  // The tile loop, compiled once per code search (a branch inside it measured the search 3x slower).
  auto tiles = [&](auto grid_search) {
    int stage = 0;
    for (int64_t tile = w0; tile < ntiles; tile += nw) {
      issue(tile + (kFastEncStages - 1) * nw, stage == 0 ? kFastEncStages - 1 : stage - 1);
      cp_wait<kFastEncStages - 1>();
      __syncwarp();
      const uint8_t* src = wsm + stage * L::TILE + g * L::IN_STRIDE;
      float z[T][R];
      // Non-finite input (docs/ops.md 1.3 step 1). For float16 the check is ss's: any inf or NaN reaches
      // every FWHT output, and finite float16 vectors cannot overflow ss (|z_i| <= d * 65504).
      bool lane_bad = false;
#pragma unroll
      for (int t = 0; t < T; ++t) {
        RawRun<Tin, R> raw = load_raw<Tin, R>(src + (8 * t + R * k) * L::SZ);
        flip_signs<Tin, R>(raw, sbits, t);
#pragma unroll
        for (int r = 0; r < R; ++r) {
          z[t][r] = raw_elem<Tin, R>(raw, r);
          if constexpr (!std::is_same<Tin, __half>::value) lane_bad |= !finitef(z[t][r]);
        }
      }
      const uint32_t gmask = ((1u << LPV) - 1u) << (g * LPV);
      const bool in_bad = (__ballot_sync(kFull, lane_bad) & gmask) != 0u;
      // FWHT, stages h = 1, 2, ..., d/2 (docs/ops.md 1.1): first within runs, then across the
      // vector's lanes, then across blocks of 8.
#pragma unroll
      for (int h = 1; h < R; h <<= 1)
#pragma unroll
        for (int t = 0; t < T; ++t)
#pragma unroll
          for (int r = 0; r < R; ++r)
            if (!(r & h)) {
              const float a = z[t][r], b = z[t][r + h];
              z[t][r] = __fadd_rn(a, b);
              z[t][r + h] = __fsub_rn(a, b);
            }
#pragma unroll
      for (int h = R; h < 8; h <<= 1) {
        const float sgn = (k & (h / R)) ? -1.f : 1.f;
#pragma unroll
        for (int t = 0; t < T; ++t)
#pragma unroll
          for (int r = 0; r < R; ++r) {
            // (k & h/R) ? p - v : v + p as fma(sgn, v, p): sgn * v is exact, so one rounding (as warp_fwht)
            const float p = __shfl_xor_sync(kFull, z[t][r], h / R);
            z[t][r] = __fmaf_rn(sgn, z[t][r], p);
          }
      }
#pragma unroll
      for (int h = 1; h < T; h <<= 1)
#pragma unroll
        for (int t = 0; t < T; ++t)
          if (!(t & h)) {
#pragma unroll
            for (int r = 0; r < R; ++r) {
              const float a = z[t][r], b = z[t + h][r];
              z[t][r] = __fadd_rn(a, b);
              z[t + h][r] = __fsub_rn(a, b);
            }
          }
      // ss (exact, docs/ops.md 1.3 step 3): lane-local partials acc[i % 8] in increasing i, then
      // ((a0+a4)+(a2+a6)) + ((a1+a5)+(a3+a7)), each level across lanes or within the lane.
      float acc[R];
#pragma unroll
      for (int r = 0; r < R; ++r) acc[r] = 0.f;
#pragma unroll
      for (int t = 0; t < T; ++t)
#pragma unroll
        for (int r = 0; r < R; ++r) acc[r] = __fadd_rn(acc[r], __fmul_rn(z[t][r], z[t][r]));
#pragma unroll
      for (int hb = 4; hb >= 1; hb >>= 1) {
        if (hb >= R) {
#pragma unroll
          for (int r = 0; r < R; ++r) acc[r] = __fadd_rn(acc[r], __shfl_xor_sync(kFull, acc[r], hb / R));
        } else {
#pragma unroll
          for (int r = 0; r < R; ++r)
            if (!(r & hb)) acc[r] = __fadd_rn(acc[r], acc[r + hb]);
        }
      }
      const float ss = acc[0];
      const bool bad = std::is_same<Tin, __half>::value ? !finitef(ss) : in_bad;
      const float inv = __frcp_rn(__fsqrt_rn(ss));
      // Quantize: code = #{k : t > B[k]} (grid cell or binary search); codes to the byte buffer.
      const bool special = bad || ss == 0.f;
      const uint64_t fill = bad ? 0u : (uint64_t)(K >> 1) * 0x0101010101010101ull;  // R code bytes
      uint8_t* cvec = codes + g * L::CODE_STRIDE;
      float zc = 0.f, cc = 0.f;
      // The code's search on the shared address a = &bnd[code]: the centroid is at a + kCbOff, the code
      // (a - sb) / 4.
#pragma unroll
      for (int t = 0; t < T; ++t) {
        uint64_t run = 0;
#pragma unroll
        for (int r = 0; r < R; ++r) {
          const float tv = __fmul_rn(z[t][r], inv);
          uint32_t a;
          if constexpr (decltype(grid_search)::value) {
            a = lds_u32(gadj + 4u * grid_cell_bits(tv, gs, gb));
            add_if_gt<4>(a, tv, lds_f32<0>(a));
          } else {  // binary search, the first step against a register
            a = tv > bmid ? sb + 4 * (K >> 1) : sb;
#pragma unroll
            for (int step = K >> 2; step; step >>= 1) {
              if (step == 4) add_if_gt<16>(a, tv, lds_f32<12>(a));
              if (step == 2) add_if_gt<8>(a, tv, lds_f32<4>(a));
              if (step == 1) add_if_gt<4>(a, tv, lds_f32<0>(a));
            }
          }
          const float cv = lds_f32<kCbOff>(a);
          zc = fmaf(z[t][r], cv, zc);
          cc = fmaf(cv, cv, cc);
          run |= (uint64_t)((a - sb) >> 2) << (8 * r);
        }
        store_run<R>(cvec + 8 * t + R * k, run);
      }
      // Zero or non-finite vectors (rare): their lanes overwrite the codes (a select per run measured
      // 48 of the loop's ~1230 instructions per tile).
      if (special) {
#pragma unroll
        for (int t = 0; t < T; ++t) store_run<R>(cvec + 8 * t + R * k, fill);
      }
#pragma unroll
      for (int o = 1; o < LPV; o <<= 1) {
        zc += __shfl_xor_sync(kFull, zc, o);
        cc += __shfl_xor_sync(kFull, cc, o);
      }
      const float scale = bad ? __int_as_float(0x7fc00000) : (ss == 0.f ? 0.f : inv_sqrt_d * zc / cc);
      __syncwarp();
      // Lane (g, k) packs codes 32k .. 32k+31 of vector g: bits [32 k BITS, 32 (k+1) BITS) of the stream.
      uint32_t cw[8];
      const uint4* cg = reinterpret_cast<const uint4*>(cvec + 32 * k);
      const uint4 c0 = cg[0], c1 = cg[1];
      cw[0] = c0.x; cw[1] = c0.y; cw[2] = c0.z; cw[3] = c0.w;
      cw[4] = c1.x; cw[5] = c1.y; cw[6] = c1.z; cw[7] = c1.w;
      uint32_t ow[BITS];
      pack32<BITS>(cw, ow);
      const int64_t v = tile * VPW + g;
      if (v < n) {
        uint32_t* orow = reinterpret_cast<uint32_t*>(sink_row(out, v));
        if (orow) {
          if (k == 0) orow[0] = __float_as_uint(scale);
#pragma unroll
          for (int w = 0; w < BITS; ++w) orow[1 + k * BITS + w] = ow[w];
        }
      }
      __syncwarp();  // this stage and the code buffer are rewritten next
      stage = stage == kFastEncStages - 1 ? 0 : stage + 1;
    }
  };
  if constexpr (kGrid) {
    if (use_grid) tiles(std::true_type{});
    else tiles(std::false_type{});
  } else {
    tiles(std::false_type{});
  }
  cp_wait<0>();
}

// Whether encode_fast_kernel covers these arguments (else encode_kernel runs).
inline bool fast_encode_ok(const void* x, int d, int rot_rank, int bits, int qjl) {
  return rot_rank == 1 && !qjl && (d == 32 || d == 64 || d == 128 || d == 256) && bits >= 2 && bits <= 4 &&
         ((uintptr_t)x & 15) == 0;
}

}  // namespace cuda
}  // namespace tq
