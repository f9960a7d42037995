// TurboQuantAttention on CUDA (docs/ops.md section 4; design in docs/cuda.md).
//
// Launch sequence of tq_cuda_attention:
//   1. prep_qk: query/key -> float32 scratch (RoPE applied exactly when do_rotary).
//   2. present = past (one cudaMemcpy2DAsync unless the buffers are shared), then the S new keys /
//      values are encoded (or copied, value_bits = 0) into rows past_len .. past_len+S-1.
//   3a. S == 1 and a supported shape (steps 1-2 folded in: the queries in decode_pre_kernel, the new
//       rows' encode beside the merge): split-K flash decoding over the compressed rows with tensor
//       cores (decode_split_kernel), then decode_combine_kernel: combine_head merges the splits,
//       rotates the value accumulator back once and adds the new token exactly; encode_new_row writes
//       the new rows (its warps start while the split kernel runs).
//   3b. otherwise attn_simple_kernel: one warp per (batch, query token, head), all cases.
// Recent window (R > 0, docs/ops.md 4): cached positions [max(0, past_len - R), past_len) are read
// exactly from the rings instead of from the rows. 3a: the split kernels stop at past_len - R, the
// pre-pass computes one more partial (max, sum, unrotated accumulator) per query head over the ring
// segment, the combine merges it and writes the new token's ring slot (after every read: stream
// order). 3b: the simple kernel reads the ring segment itself; ring_write_kernel writes the slots
// afterwards. R = 0 runs the same instantiations as before the window existed (RING = false).
//
// This file picks among the kernel families (attention_*.cuh) and launches them; entry points
// attention_workspace / attention, called by the C ABI (tq_cuda_api.cu).
#include <math.h>
#include <stdlib.h>

#include <type_traits>

#include "attention_decode_combine.cuh"
#include "attention_decode_pre.cuh"
#include "attention_decode_split.cuh"
#include "attention_launch.cuh"
#include "attention_plan.cuh"
#include "attention_prefill_rows.cuh"
#include "attention_prefill_tc.cuh"
#include "attention_prep.cuh"
#include "attention_simple.cuh"
#include "codec.cuh"
#include "tq_cuda_api.h"

namespace tq {
namespace cuda {

template <typename T, int E, bool HAD, bool RING>
static int run_attention_t(const TqAttnParams* p, const AttnArgs& aa, const Workspace& ws, cudaStream_t stream) {
  if (fast_path_ok(p)) {
    const int ns = choose_nsplit(p);
    const float qscale = (float)aa.scale * (aa.softcap > 0.f ? 1.f : kLog2e);
    const int ks = decode_ks(p);
    DecodeLayout lay;
    decode_layout(p, lay, ks);  // fits: fast_path_ok (ks = 1) or decode_ks
    const bool selfq = HAD && !RING && decode_selfq(p, lay);
    QueryArgs qa{};
    qa.q = p->query;
    qa.cosc = p->cos_cache;
    qa.sinc = p->sin_cache;
    qa.rot = aa.rot;
    qa.rotary = aa.rotary;
    qa.max_pos = aa.max_pos;
    qa.dtype = (int)p->dtype;
    qa.qscale = qscale;
    qa.inv_sqrt_d = aa.inv_sqrt_d;
    if (!selfq) {
      PreArgs pa{};
      pa.qa = qa;
      pa.seqlens = p->seqlens_k;
      pa.S = p->use_qjl ? aa.qjl : nullptr;
      pa.qh = ws.qh;
      pa.sqh = ws.sqh;
      pa.B = aa.B;
      pa.Hq = aa.Hq;
      pa.Hkv = aa.Hkv;
      pa.d = aa.d;
      pa.Pp = aa.Pp;
      pa.use_qjl = aa.use_qjl;
      pa.m = aa.m;
      int blocks = (int)((p->B * p->Hq + 3) / 4);
      size_t dyn = 0;
      if (RING) {
        pa.kr = aa.kr;
        pa.vr = aa.vr;
        pa.ring_o = ws.ring_o;
        pa.ring_ml = ws.ring_ml;
        pa.R = aa.R;
        pa.window = aa.window;
        pa.scale = aa.scale;
        pa.softcap = aa.softcap;
        dyn = ring_block_smem(p, pa.ring_tk);
        blocks += (int)(p->B * p->Hkv);
        static int raised[64] = {0};
        const cudaError_t e = raise_smem_once((const void*)decode_pre_kernel<T, E, HAD, RING>, (int)dyn, raised);
        if (e != cudaSuccess) return (int)e;
      }
      decode_pre_kernel<T, E, HAD, RING><<<blocks, 128, dyn, stream>>>(pa);
      const int rc = (int)cudaGetLastError();
      if (rc) return rc;
    }
    int rc = 0;
    DecodeArgs da{};
    da.pk = aa.pk;
    da.pv = (const uint8_t*)aa.pv;
    da.seqlens = aa.seqlens;
    da.qh = ws.qh;
    da.sqh = ws.sqh;
    da.kcb = aa.kcb;
    da.vcb = aa.vcb;
    da.part_o = ws.part_o;
    da.part_ml = ws.part_ml;
    da.Hq = aa.Hq;
    da.Hkv = aa.Hkv;
    da.G = aa.Hq / aa.Hkv;
    da.Pp = aa.Pp;
    da.Rk = aa.Rk;
    da.Rv = aa.Rv;
    da.kbits = aa.kbits;
    da.vbits = aa.vbits;
    da.m = aa.m;
    da.window = aa.window;
    da.nsplit = ns;
    da.softcap = aa.softcap;
    da.R = RING ? aa.R : 0;
    da.selfq = selfq ? 1 : 0;
    da.qa = qa;
    da.stage_bytes = lay.stage_bytes;
    da.nstages = lay.nstages;
    da.lut_bytes = lay.lut_bytes;
    const size_t smem = lay.smem;
    bool qjl = p->use_qjl != 0, bigg = da.G > 8;
    switch (aa.d) {
      case 64: rc = launch_split_d<64>(da, qjl, bigg, ks, aa.B, aa.Hkv, smem, stream); break;
      case 80: rc = launch_split_d<80>(da, qjl, bigg, ks, aa.B, aa.Hkv, smem, stream); break;
      case 96: rc = launch_split_d<96>(da, qjl, bigg, ks, aa.B, aa.Hkv, smem, stream); break;
      case 128: rc = launch_split_d<128>(da, qjl, bigg, ks, aa.B, aa.Hkv, smem, stream); break;
      case 256: rc = launch_split_d<256>(da, qjl, bigg, ks, aa.B, aa.Hkv, smem, stream); break;
      default: return -1;
    }
    if (rc) return rc;
    AttnArgs fin = aa;  // the merge's arguments: the ring partial from the workspace
    if (RING) {
      fin.ring_o = ws.ring_o;
      fin.ring_ml = ws.ring_ml;
    }
    const int64_t warps = p->B * (2 * p->Hkv + p->Hq);  // new rows, then the merge's heads
    return launch_pdl(decode_combine_kernel<E>, dim3((unsigned)((warps + 3) / 4)), dim3(128), 0, stream, true, fin,
                      (const float*)ws.part_o, (const float*)ws.part_ml, ns, (int)p->dtype, HAD ? 1 : 0);
  }
  if (prefill_tc_ok(p)) {
    const TcSplits sp{prefill_tc_splits(p), ws.part_o, ws.part_ml};
    const int rc = dispatch_prefill_tc<T, E, HAD, RING>(p, aa, sp, stream);
    return rc ? rc : write_new_ring_slots<T, RING>(p, aa, stream);
  }
  AttnArgs sa = aa;
  if (ws.pre_o && prefill_tc_f32(p)) {  // float32: the compressed rows on tensor cores, the rest below
    const int rc = dispatch_prefill_tc<T, E, HAD, RING>(p, aa, TcSplits{1, ws.pre_o, ws.pre_ml}, stream);
    if (rc) return rc;
    sa.pre_o = ws.pre_o;
    sa.pre_ml = ws.pre_ml;
  } else if (ws.pre_o) {
    if constexpr (E <= 4) {
      const int QT = kPreQ / (int)(p->Hq / p->Hkv);
      const int smem = (int)(prefill_smem_floats((int)p->d) * sizeof(float));
      static int raised[64] = {0};
      cudaError_t e = raise_smem_once((const void*)prefill_rows_kernel<E, HAD>, smem, raised);
      if (e != cudaSuccess) return (int)e;
      prefill_rows_kernel<E, HAD><<<dim3((unsigned)((p->S + QT - 1) / QT), (unsigned)p->Hkv, (unsigned)p->B),
                                    kPreWarps * 32, smem, stream>>>(aa, ws.pre_o, ws.pre_ml);
      e = cudaGetLastError();
      if (e != cudaSuccess) return (int)e;
      sa.pre_o = ws.pre_o;
      sa.pre_ml = ws.pre_ml;
    }
  }
  int64_t warps = (int64_t)p->B * p->S * p->Hq;
  attn_simple_kernel<T, E, HAD, RING><<<(unsigned)((warps + kSimpleWarps - 1) / kSimpleWarps), kSimpleWarps * 32, 0, stream>>>(sa);
  const int rc = (int)cudaGetLastError();
  return rc ? rc : write_new_ring_slots<T, RING>(p, aa, stream);
}

template <typename T>
static int run_attention_e(const TqAttnParams* p, const AttnArgs& aa, const Workspace& ws, cudaStream_t stream,
                           const char** msg) {
  int E = (aa.d + 31) / 32;
  bool had = p->rot_rank == 1;
  const bool ring = p->recent_window > 0;
#define TQ_ATT_CASE(EE)                                                                          \
  case EE:                                                                                       \
    if (ring)                                                                                    \
      return had ? run_attention_t<T, EE, true, true>(p, aa, ws, stream)                         \
                 : run_attention_t<T, EE, false, true>(p, aa, ws, stream);                       \
    return had ? run_attention_t<T, EE, true, false>(p, aa, ws, stream)                          \
               : run_attention_t<T, EE, false, false>(p, aa, ws, stream);
  switch (E) {
    TQ_ATT_CASE(1)
    TQ_ATT_CASE(2)
    TQ_ATT_CASE(3)
    TQ_ATT_CASE(4)
    TQ_ATT_CASE(8)
    default: *msg = "head_dim not supported by the CUDA kernels"; return -1;
  }
#undef TQ_ATT_CASE
}

template <typename T>
static int run_attention(const TqAttnParams* p, void* wsp, cudaStream_t stream, const char** msg) {
  Workspace ws = carve(p, wsp);
  const int d = (int)p->d;
  const int Rk = row_bytes(d, (int)p->key_bits, (int)p->use_qjl, (int)p->m);
  const int Rv = p->value_bits ? row_bytes(d, (int)p->value_bits, 0, 0) : d * (int)sizeof(T);
  const bool fast = fast_path_ok(p);  // S == 1: steps 1-2 are folded into the decode kernels
  // 1. q, k -> float32 (+ RoPE).
  if (!fast) {
    int64_t total = p->B * p->S * (p->Hq + p->Hkv) * p->d;
    int blocks = (int)((total + 255) / 256);
    if (blocks > num_sms() * 16) blocks = num_sms() * 16;
    prep_qk_kernel<T><<<blocks, 256, 0, stream>>>((const T*)p->query, (const T*)p->key, (const T*)p->cos_cache,
                                                  (const T*)p->sin_cache, p->seqlens_k, ws.qf, ws.kf, (int)p->B,
                                                  (int)p->S, (int)p->Hq, (int)p->Hkv, d, (int)p->do_rotary,
                                                  (int)p->max_pos);
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) { *msg = cudaGetErrorString(e); return (int)e; }
  }
  // 2. present = past, then the new rows.
  if (p->past_key != p->present_key && p->P > 0) {
    cudaError_t e = cudaMemcpy2DAsync(p->present_key, (size_t)p->Pp * Rk, p->past_key, (size_t)p->P * Rk,
                                      (size_t)p->P * Rk, (size_t)(p->B * p->Hkv), cudaMemcpyDeviceToDevice, stream);
    if (e != cudaSuccess) { *msg = cudaGetErrorString(e); return (int)e; }
  }
  if (p->past_value != p->present_value && p->P > 0) {
    cudaError_t e = cudaMemcpy2DAsync(p->present_value, (size_t)p->Pp * Rv, p->past_value, (size_t)p->P * Rv,
                                      (size_t)p->P * Rv, (size_t)(p->B * p->Hkv), cudaMemcpyDeviceToDevice, stream);
    if (e != cudaSuccess) { *msg = cudaGetErrorString(e); return (int)e; }
  }
  // Recent window: present rings = past rings unless shared (the kernels read the past rings and
  // write only the new slots of the present ones); keys-only: the value ring passes through, or is
  // zeroed when none (of the ring's shape) was given.
  if (p->recent_window > 0) {
    const size_t ring_bytes = (size_t)(p->B * p->Hkv * p->recent_window * p->d) * (p->dtype == kF32 ? 4 : 2);
    if (p->present_key_recent && p->present_key_recent != p->past_key_recent) {
      cudaError_t e = cudaMemcpyAsync(p->present_key_recent, p->past_key_recent, ring_bytes, cudaMemcpyDeviceToDevice,
                                      stream);
      if (e != cudaSuccess) { *msg = cudaGetErrorString(e); return (int)e; }
    }
    if (p->present_value_recent && p->present_value_recent != p->past_value_recent) {
      cudaError_t e = p->past_value_recent
                          ? cudaMemcpyAsync(p->present_value_recent, p->past_value_recent, ring_bytes,
                                            cudaMemcpyDeviceToDevice, stream)
                          : cudaMemsetAsync(p->present_value_recent, 0, ring_bytes, stream);
      if (e != cudaSuccess) { *msg = cudaGetErrorString(e); return (int)e; }
    }
  }
  if (!fast) {
    RowSink sk{(uint8_t*)p->present_key, Rk, 1, (int)p->S, (int)p->Hkv, (int)p->Pp, p->seqlens_k};
    int rc = launch_encode(ws.kf, kF32, p->B * p->S * p->Hkv, d, p->rotation, (int)p->rot_rank, p->key_codebook,
                           (int)p->key_bits, (int)p->use_qjl, p->qjl, (int)p->m, sk, stream, msg);
    if (rc) return rc;
    if (p->value_bits) {
      RowSink sv{(uint8_t*)p->present_value, Rv, 1, (int)p->S, (int)p->Hkv, (int)p->Pp, p->seqlens_k};
      rc = launch_encode(p->value, (int)p->dtype, p->B * p->S * p->Hkv, d, p->rotation, (int)p->rot_rank,
                         p->value_codebook, (int)p->value_bits, 0, nullptr, 0, sv, stream, msg);
      if (rc) return rc;
    } else {
      int64_t total = p->B * p->S * p->Hkv * p->d;
      int blocks = (int)((total + 255) / 256);
      if (blocks > num_sms() * 16) blocks = num_sms() * 16;
      copy_values_kernel<T><<<blocks, 256, 0, stream>>>((const T*)p->value, (T*)p->present_value, p->seqlens_k,
                                                        (int)p->B, (int)p->S, (int)p->Hkv, d, (int)p->Pp);
      cudaError_t e = cudaGetLastError();
      if (e != cudaSuccess) { *msg = cudaGetErrorString(e); return (int)e; }
    }
  }
  // 3. attention.
  AttnArgs aa{};
  aa.qf = ws.qf;
  aa.kf = ws.kf;
  aa.value = p->value;
  aa.query = p->query;
  aa.key = p->key;
  aa.cosc = p->cos_cache;
  aa.sinc = p->sin_cache;
  aa.rotary = (int)p->do_rotary;
  aa.max_pos = (int)p->max_pos;
  aa.pk = (const uint8_t*)p->present_key;
  aa.pv = p->present_value;
  aa.seqlens = p->seqlens_k;
  aa.rot = p->rotation;
  aa.kcb = p->key_codebook;
  aa.vcb = p->value_codebook;
  aa.qjl = p->qjl;
  aa.out = p->output;
  aa.B = (int)p->B;
  aa.S = (int)p->S;
  aa.Hq = (int)p->Hq;
  aa.Hkv = (int)p->Hkv;
  aa.d = d;
  aa.Pp = (int)p->Pp;
  aa.Rk = Rk;
  aa.Rv = Rv;
  aa.kbits = (int)p->key_bits;
  aa.vbits = (int)p->value_bits;
  aa.use_qjl = (int)p->use_qjl;
  aa.m = (int)p->m;
  aa.window = (int)p->local_window;
  aa.scale = p->scale != 0.0 ? (float)p->scale : (float)(1.0 / sqrt((double)d));
  aa.softcap = (float)p->softcap;
  aa.inv_sqrt_d = p->rot_rank == 1 ? (float)(1.0 / sqrt((double)d)) : 1.f;
  if (p->recent_window > 0) {
    aa.R = (int)p->recent_window;
    aa.kr = p->past_key_recent;
    aa.vr = p->value_bits ? p->past_value_recent : nullptr;
    aa.pkr = p->present_key_recent;
    aa.pvr = p->value_bits ? p->present_value_recent : nullptr;  // keys-only: passed through above
  }
  int rc = run_attention_e<T>(p, aa, ws, stream, msg);
  if (rc && !*msg) *msg = cudaGetErrorString((cudaError_t)rc);
  return rc;
}

size_t attention_workspace(const TqAttnParams* p) { return carve(p, nullptr).bytes; }

int attention(const TqAttnParams* p, void* ws, size_t ws_bytes, cudaStream_t stream, const char** msg) {
  if (p->Hkv <= 0 || p->Hq % p->Hkv) { *msg = "num_heads must be a multiple of kv_num_heads"; return -1; }
  if (p->rot_rank == 1 && !is_pow2((int)p->d)) { *msg = "rotation of rank 1 needs d a power of two"; return -1; }
  if (p->key_bits < 1 || p->key_bits > 8 || p->value_bits < 0 || p->value_bits > 8) { *msg = "bits out of range"; return -1; }
  if (p->use_qjl && (!p->qjl || p->m < 1 || p->m > 256)) { *msg = "qjl_matrix: m must be in [1, 256]"; return -1; }
  if (p->do_rotary && (!p->cos_cache || !p->sin_cache || p->max_pos < 1)) { *msg = "cos_cache/sin_cache required"; return -1; }
  if (p->recent_window < 0) { *msg = "recent_window must be >= 0"; return -1; }
  if (p->recent_window > 0 && (!p->past_key_recent || (p->value_bits && !p->past_value_recent))) {
    *msg = "recent_window > 0: past_key_recent (and past_value_recent when value_bits > 0) required";
    return -1;
  }
  if (ws_bytes < attention_workspace(p)) { *msg = "workspace too small"; return -1; }
  if (p->B <= 0 || p->S <= 0) return 0;
  switch (p->dtype) {
    case kF32: return run_attention<float>(p, ws, stream, msg);
    case kF16: return run_attention<__half>(p, ws, stream, msg);
    case kBF16: return run_attention<__nv_bfloat16>(p, ws, stream, msg);
    default: *msg = "dtype must be float32, float16 or bfloat16"; return -1;
  }
}

}  // namespace cuda
}  // namespace tq
