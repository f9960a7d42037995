// TurboQuantAttention, host side: the launchers of the tensor-core prefill, the split kernel (compile-
// time instantiations by d, G, bit widths) and the ring writes; PDL launches.
#pragma once

#include "attention_decode_split.cuh"
#include "attention_plan.cuh"
#include "attention_prefill_tc.cuh"
#include "attention_prep.cuh"

namespace tq {
namespace cuda {

template <typename T, int D, bool HAD, bool RING, bool QJL>
static int launch_prefill_tc(const TqAttnParams* p, const AttnArgs& aa, const TcSplits& sp, cudaStream_t stream) {
  const int QT = kTcQ / (int)(p->Hq / p->Hkv);
  const int smem = tc_smem_bytes<D>(aa.Rk, aa.Rv, QJL ? aa.m : 0);
  static int raised[64] = {0};
  const cudaError_t e = raise_smem_once((const void*)prefill_tc_kernel<T, D, HAD, RING, QJL>, smem, raised);
  if (e != cudaSuccess) return (int)e;
  prefill_tc_kernel<T, D, HAD, RING, QJL><<<dim3((unsigned)(((p->S + QT - 1) / QT) * sp.n), (unsigned)p->Hkv,
                                                 (unsigned)p->B), kTcWarps * 32, smem, stream>>>(aa, sp);
  if (sp.n > 1) {  // (float32 runs one split: attn_simple_kernel continues from the partials)
    const int64_t warps = p->B * p->S * p->Hq;
    prefill_merge_kernel<T><<<(unsigned)((warps + 3) / 4), 128, 0, stream>>>(aa, sp);
  }
  return (int)cudaGetLastError();
}
template <typename T, int D, bool HAD, bool RING>
static int launch_prefill_tc(const TqAttnParams* p, const AttnArgs& aa, const TcSplits& sp, cudaStream_t stream) {
  return aa.use_qjl ? launch_prefill_tc<T, D, HAD, RING, true>(p, aa, sp, stream)
                    : launch_prefill_tc<T, D, HAD, RING, false>(p, aa, sp, stream);
}

// prefill_tc_kernel for this d (E, the simple path's registers per lane, follows from d).
template <typename T, int E, bool HAD, bool RING>
static int dispatch_prefill_tc(const TqAttnParams* p, const AttnArgs& aa, const TcSplits& sp, cudaStream_t stream) {
  switch (aa.d) {
    case 64: if constexpr (E == 2) return launch_prefill_tc<T, 64, HAD, RING>(p, aa, sp, stream); break;
    case 80: if constexpr (E == 3 && !HAD) return launch_prefill_tc<T, 80, HAD, RING>(p, aa, sp, stream); break;
    case 96: if constexpr (E == 3 && !HAD) return launch_prefill_tc<T, 96, HAD, RING>(p, aa, sp, stream); break;
    case 128: if constexpr (E == 4) return launch_prefill_tc<T, 128, HAD, RING>(p, aa, sp, stream); break;
    default: break;
  }
  return -1;
}

// Launch with programmatic stream serialization (PDL) on sm_90+ when `pdl` (not for the op's first
// kernel: it must see everything before it on the stream), a plain launch otherwise.
template <typename... Args>
static int launch_pdl(void (*kern)(Args...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream, bool pdl,
                      Args... args) {
  const int major = device_attr<cudaDevAttrComputeCapabilityMajor>(0);
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  static const bool off = env_int("TQ_CUDA_NOPDL") != 0;  // tuning knob: plain launches
  cfg.numAttrs = pdl && major >= 9 && !off ? 1 : 0;
  return (int)cudaLaunchKernelEx(&cfg, kern, args...);
}

template <int D, bool QJL, bool BIGG, int KB, int VB, int KS = 1>
static int launch_split(const DecodeArgs& da, int B, int Hkv, size_t smem, cudaStream_t stream) {
  auto kern = decode_split_kernel<D, QJL, BIGG, KB, VB, KS>;
  static int raised[64] = {0};
  const cudaError_t e = raise_smem_once((const void*)kern, (int)smem, raised);
  if (e != cudaSuccess) return (int)e;
  return launch_pdl(kern, dim3(da.nsplit, Hkv, B), dim3(kDecodeWarps * 32), smem, stream, !da.selfq, da);
}

template <int D, bool BIGG>
static int launch_split_bits(const DecodeArgs& da, bool qjl, int ks, int B, int Hkv, size_t smem, cudaStream_t s) {
  // Compile-time bit widths for the common caches (K4V4, the balanced preset's K4V3, K3V3); QJL and
  // the rest take run-time widths. Two subtiles per warp (ks = 2): d = 128, G <= 8 (decode_ks).
  if constexpr (D == 128 && !BIGG) {
    if (ks == 2 && da.kbits == 4 && da.vbits == 4) return launch_split<D, false, BIGG, 4, 4, 2>(da, B, Hkv, smem, s);
    if (ks == 2 && da.kbits == 4 && da.vbits == 3) return launch_split<D, false, BIGG, 4, 3, 2>(da, B, Hkv, smem, s);
    if (ks == 2 && da.kbits == 3 && da.vbits == 3) return launch_split<D, false, BIGG, 3, 3, 2>(da, B, Hkv, smem, s);
  }
  if (qjl) return launch_split<D, true, BIGG, 0, 0>(da, B, Hkv, smem, s);
  if (da.kbits == 4 && da.vbits == 4) return launch_split<D, false, BIGG, 4, 4>(da, B, Hkv, smem, s);
  if (da.kbits == 4 && da.vbits == 3) return launch_split<D, false, BIGG, 4, 3>(da, B, Hkv, smem, s);
  if (da.kbits == 3 && da.vbits == 3) return launch_split<D, false, BIGG, 3, 3>(da, B, Hkv, smem, s);
  return launch_split<D, false, BIGG, 0, 0>(da, B, Hkv, smem, s);
}

template <int D>
static int launch_split_d(const DecodeArgs& da, bool qjl, bool bigg, int ks, int B, int Hkv, size_t smem, cudaStream_t s) {
  return bigg ? launch_split_bits<D, true>(da, qjl, ks, B, Hkv, smem, s)
              : launch_split_bits<D, false>(da, qjl, ks, B, Hkv, smem, s);
}

// Ring slots of the new tokens (recent window, S > 1), after the attention kernel read the rings.
template <typename T, bool RING>
static int write_new_ring_slots(const TqAttnParams* p, const AttnArgs& aa, cudaStream_t stream) {
  if (!RING || (!aa.pkr && !aa.pvr)) return 0;
  int64_t total = p->B * p->S * p->Hkv * p->d;
  int blocks = (int)((total + 255) / 256);
  if (blocks > num_sms() * 16) blocks = num_sms() * 16;
  ring_write_kernel<T><<<blocks, 256, 0, stream>>>(aa.kf, (const T*)aa.value, aa.seqlens, (T*)aa.pkr, (T*)aa.pvr,
                                                   aa.B, aa.S, aa.Hkv, aa.d, aa.Pp, aa.R);
  return (int)cudaGetLastError();
}

}  // namespace cuda
}  // namespace tq
