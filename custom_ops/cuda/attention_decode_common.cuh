// TurboQuantAttention, decode step (S == 1): what the pre-pass, the split kernel and the combine share
// (programmatic dependent launch, the query rotation, the split kernel's constants and arguments).
#pragma once

#include "attention_common.cuh"

namespace tq {
namespace cuda {

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

}  // namespace cuda
}  // namespace tq
