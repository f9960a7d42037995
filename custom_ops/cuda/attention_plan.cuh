// TurboQuantAttention, host side: which path runs (fast_path_ok, prefill_tc_ok, ...), its tuning
// (splits, stages, subtiles; the TQ_CUDA_* knobs of docs/cuda.md) and the workspace layout (carve).
#pragma once

#include <stdlib.h>

#include "attention_decode_split.cuh"
#include "attention_prefill_rows.cuh"
#include "attention_prefill_tc.cuh"
#include "tq_cuda_api.h"

namespace tq {
namespace cuda {

struct Workspace {
  float* qf;
  float* kf;
  __half* qh;
  __half* sqh;
  float* part_o;
  float* part_ml;
  float* ring_o;   // recent window on the fast path: [B*Hq, d] and [B*Hq, 2]
  float* ring_ml;
  float* pre_o;    // the compressed rows' partials for the simple kernel: [B*S*Hq, d] and [B*S*Hq, 2]
  float* pre_ml;
  size_t bytes;
};

static size_t al256(size_t x) { return (x + 255) & ~(size_t)255; }

// Tuning knobs (docs/cuda.md): TQ_CUDA_STAGES=2|3 caps the pipeline depth, TQ_CUDA_SPLITS=n fixes the
// number of splits per (batch, kv head), TQ_CUDA_NOPDL=1 launches without PDL; unset = automatic.
static int env_int(const char* name) {
  const char* v = getenv(name);
  return v ? atoi(v) : 0;
}

// Shared-memory layout of decode_split_kernel (v6): the pair table (kLutStride bytes per entry), the
// QJL sign table, then `nstages` cp.async stages of kTileKeys key rows and value rows; the warps'
// merge reuses the whole space afterwards.
struct DecodeLayout {
  int stage_bytes = 0, nstages = 0, lut_bytes = 0;
  size_t smem = 0;
};

static bool decode_layout(const TqAttnParams* p, DecodeLayout& L, int ks) {
  const int d = (int)p->d, kb = (int)p->key_bits, vb = (int)p->value_bits;
  const int Rk = row_bytes(d, kb, (int)p->use_qjl, (int)p->m), Rv = row_bytes(d, vb, 0, 0);
  const int kspan = ((ks * kTileKeys * Rk + 16 + 8) + 15) & ~15;
  const int vspan = ((ks * kTileKeys * Rv + 16 + 8) + 15) & ~15;
  L.stage_bytes = kspan + vspan;
  L.lut_bytes = kLutStride * (1 << (2 * (kb > vb ? kb : vb)));
  const size_t G = (size_t)(p->Hq / p->Hkv), nmt = 4 * (size_t)((d + 63) / 64), nb = G > 8 ? 2 : 1;
  const size_t merge = sizeof(float) * (kDecodeWarps / 2) * 32 * nb * (nmt * 4 + 4);  // the warps' tree merge
  const size_t fixed = (size_t)L.lut_bytes + (p->use_qjl ? kQjlLutBytes : 0) + kMbarBytes;
  static const int max_stages = env_int("TQ_CUDA_STAGES") == 2 ? 2 : 3;
  for (int nst = max_stages; nst >= 2; --nst) {
    size_t s = fixed + (size_t)nst * L.stage_bytes;
    if (s < merge) s = merge;
    if (s <= (size_t)smem_optin_limit()) {
      L.nstages = nst;
      L.smem = s;
      return true;
    }
  }
  return false;
}

static bool fast_path_ok(const TqAttnParams* p) {
  if (p->force_path == 1) return false;
  if (p->S != 1) return false;
  if (p->value_bits < 1 || p->value_bits > 4 || p->key_bits < 1 || p->key_bits > 4) return false;
  int d = (int)p->d;
  if (!(d == 64 || d == 80 || d == 96 || d == 128 || d == 256)) return false;
  int G = (int)(p->Hq / p->Hkv);
  if (G > 16) return false;
  if (p->use_qjl && (p->m % 32 != 0 || p->m > 256)) return false;
  // decode_split_kernel addresses its table at the absolute shared address kSmemBase: dynamic shared
  // memory starts right after the reserved part (1 KB on sm_80 .. sm_90; the kernel checks it too).
  if (device_attr<cudaDevAttrReservedSharedMemoryPerBlock>(0) != (int)kSmemBase) return false;
  DecodeLayout L;
  return decode_layout(p, L, 1);  // shared memory of this GPU (sm_80: 163 KB) too small: the simple kernel
}

// Subtiles per warp and stage (v8): two for the compile-time d = 128 caches with G <= 8 (two independent
// score chains per warp, half the per-stage overhead per key) where two stages of 512 keys fit in
// shared memory (sm_90; not sm_80's 163 KB with the 64 KB table of 4-bit codes), else one.
static int decode_ks(const TqAttnParams* p) {
  static const int forced = env_int("TQ_CUDA_KS");  // tuning knob: TQ_CUDA_KS=1
  if (forced == 1 || p->d != 128 || p->use_qjl || p->Hq / p->Hkv > 8) return 1;
  const int kb = (int)p->key_bits, vb = (int)p->value_bits;
  if (!(kb == 4 && (vb == 4 || vb == 3)) && !(kb == 3 && vb == 3)) return 1;
  DecodeLayout L;
  return decode_layout(p, L, 2) ? 2 : 1;
}

// One resident block per SM (v6): as many splits per (batch, kv head) as fill the SMs once, never a
// partial second wave (B * Hkv >= #SMs: one split each).
static int choose_nsplit(const TqAttnParams* p) {
  const int64_t pairs = p->B * p->Hkv, sms = num_sms();
  static const int forced = env_int("TQ_CUDA_SPLITS");
  int64_t ns = forced > 0 ? forced : pairs >= sms ? 1 : sms / pairs;
  const int64_t maxs = (p->Pp + kTileKeys - 1) / kTileKeys;
  if (ns > maxs) ns = maxs;
  if (ns > 512) ns = 512;
  if (ns < 1) ns = 1;
  return (int)ns;
}

// v11: the split kernel rotates its own queries (no pre-pass launch) for a randomized Hadamard
// without QJL or recent window, where the last stage's buffer holds the G*D halves and G*D floats it
// uses for that. TQ_CUDA_SELFQ=2 keeps the pre-pass (tuning knob).
static bool decode_selfq(const TqAttnParams* p, const DecodeLayout& L) {
  static const int forced = env_int("TQ_CUDA_SELFQ");
  if (forced == 2) return false;
  const int64_t G = p->Hq / p->Hkv;
  return p->rot_rank == 1 && !p->use_qjl && p->recent_window == 0 && (int64_t)L.stage_bytes >= 6 * G * p->d;
}

// Prefill kernels (S > 1), TQ_CUDA_PREFILL: 0 = the simple kernel only, 1 = prefill_rows_kernel (v14) for
// the compressed rows, unset or 2 = prefill_tc_kernel where it applies, else as 1.
static int prefill_mode() {
  static const int mode = getenv("TQ_CUDA_PREFILL") ? env_int("TQ_CUDA_PREFILL") : 2;
  return mode;
}

// Dynamic shared memory of prefill_tc_kernel for these parameters (0: d not supported).
static int prefill_tc_smem(const TqAttnParams* p) {
  const int d = (int)p->d, m = p->use_qjl ? (int)p->m : 0;
  const int Rk = row_bytes(d, (int)p->key_bits, (int)p->use_qjl, (int)p->m), Rv = row_bytes(d, (int)p->value_bits, 0, 0);
  switch (d) {
    case 64: return tc_smem_bytes<64>(Rk, Rv, m);
    case 80: return tc_smem_bytes<80>(Rk, Rv, m);
    case 96: return tc_smem_bytes<96>(Rk, Rv, m);
    case 128: return tc_smem_bytes<128>(Rk, Rv, m);
    default: return 0;
  }
}

// Whether prefill_tc_kernel applies (compressed values, d in {64, 80, 96, 128}, Hadamard only for 64 and
// 128, G <= 128, QJL with m a multiple of 16 up to 256; force_path = 1 keeps the simple kernel for the tests).
static bool prefill_tc_shape_ok(const TqAttnParams* p) {
  const int d = (int)p->d, G = (int)(p->Hq / p->Hkv), smem = prefill_tc_smem(p);
  return prefill_mode() == 2 && p->force_path != 1 && p->S > 1 && p->value_bits > 0 && smem > 0 && G <= kTcQ &&
         (!p->use_qjl || (p->m % 16 == 0 && p->m <= 256)) && (p->rot_rank != 1 || d == 64 || d == 128) &&
         smem <= smem_optin_limit();
}
// fp16/bf16: prefill_tc_kernel computes the whole prefill. float32: it computes the compressed rows'
// partials (prefill_tc_f32) and attn_simple_kernel the exact rest in float32.
static bool prefill_tc_ok(const TqAttnParams* p) {
  return (p->dtype == 10 || p->dtype == 16) && prefill_tc_shape_ok(p);
}
static bool prefill_tc_f32(const TqAttnParams* p) { return p->dtype == 1 && prefill_tc_shape_ok(p); }

// Whether a prefill computes the compressed rows' partials before the simple kernel (prefill_rows_kernel,
// or prefill_tc_kernel for float32 inputs): the workspace holds them.
static bool prefill_partials_ok(const TqAttnParams* p) {
  const int G = (int)(p->Hq / p->Hkv);
  if (prefill_tc_f32(p)) return true;  // the partials come from prefill_tc_kernel<float> instead
  return prefill_mode() != 0 && !prefill_tc_ok(p) && p->S > 1 && !p->use_qjl && p->value_bits > 0 && p->d <= 128 &&
         G <= kPreQ && prefill_smem_floats((int)p->d) * sizeof(float) <= (size_t)smem_optin_limit();
}

// Splits per query tile of prefill_tc_kernel: enough blocks for two per SM when the tiles alone are fewer,
// each split at least 4 chunks of cached rows (TQ_CUDA_PREFILL_SPLITS=n fixes it; 1 = no split).
static int prefill_tc_splits(const TqAttnParams* p) {
  static const int forced = env_int("TQ_CUDA_PREFILL_SPLITS");
  const int64_t tiles = (p->S + kTcQ / (p->Hq / p->Hkv) - 1) / (kTcQ / (p->Hq / p->Hkv));
  const int64_t blocks = tiles * p->Hkv * p->B, want = 2 * (int64_t)num_sms();
  int64_t ns = forced > 0 ? forced : blocks >= want ? 1 : (want + blocks - 1) / blocks;
  const int64_t most = forced > 0 ? 64 : (p->Pp / kTcKeys) / 4;
  if (ns > most) ns = most;
  if (ns > 64) ns = 64;
  return ns < 1 ? 1 : (int)ns;
}

static Workspace carve(const TqAttnParams* p, void* base) {
  Workspace w{};
  size_t off = 0;
  auto take = [&](size_t n) {
    size_t o = off;
    off += al256(n);
    return base ? (void*)((char*)base + o) : nullptr;
  };
  if (!fast_path_ok(p)) {  // the simple path's float32 q and k (the fast path reads the inputs)
    w.qf = (float*)take(sizeof(float) * p->B * p->S * p->Hq * p->d);
    w.kf = (float*)take(sizeof(float) * p->B * p->S * p->Hkv * p->d);
    const int tc_splits = prefill_tc_ok(p) ? prefill_tc_splits(p) : 1;
    if (tc_splits > 1) {
      const size_t n = (size_t)p->B * p->S * p->Hq * tc_splits;
      w.part_o = (float*)take(sizeof(float) * n * p->d);
      w.part_ml = (float*)take(sizeof(float) * n * 2);
    }
    if (prefill_partials_ok(p)) {
      w.pre_o = (float*)take(sizeof(float) * p->B * p->S * p->Hq * p->d);
      w.pre_ml = (float*)take(sizeof(float) * p->B * p->S * p->Hq * 2);
    }
  } else {
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

}  // namespace cuda
}  // namespace tq
