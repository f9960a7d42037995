// Inline-PTX wrappers of the attention kernels: the fp16 mma, cp.async spans, mbarriers and TMA bulk
// copies (sm_90), half2 packing. Shared by the decode split kernel and the tensor-core prefill.
#pragma once

#include "common.cuh"

namespace tq {
namespace cuda {

__device__ __forceinline__ void mma16816(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                         uint32_t b0, uint32_t b1) {
  // Not volatile: a pure function of its operands, free to be scheduled among the table loads.
  asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// Copy global bytes [g, g+nbytes) (g 4-byte aligned) so that byte x lands at
// sbuf + (x - (g & ~15)); returns the offset of g inside sbuf.
__device__ __forceinline__ int load_span(uint8_t* sbuf, const uint8_t* g, int nbytes) {
  const uintptr_t a = (uintptr_t)g, e = a + nbytes;
  const uintptr_t base = a & ~(uintptr_t)15;
  const uintptr_t a16 = (a + 15) & ~(uintptr_t)15, e16 = e & ~(uintptr_t)15;
  const int tid = threadIdx.x, nt = blockDim.x;
  if (a16 >= e16) {
    for (uintptr_t x = a + 4 * tid; x < e; x += 4 * nt) cp_async4(sbuf + (x - base), (const void*)x);
  } else {
    for (uintptr_t x = a + 4 * tid; x < a16; x += 4 * nt) cp_async4(sbuf + (x - base), (const void*)x);
    for (uintptr_t x = a16 + 16 * tid; x < e16; x += 16 * nt) cp_async16(sbuf + (x - base), (const void*)x);
    for (uintptr_t x = e16 + 4 * tid; x < e; x += 4 * nt) cp_async4(sbuf + (x - base), (const void*)x);
  }
  return (int)(a - base);
}

// sm_90 stage loads (v7): one thread copies a tile's key and value spans with two TMA bulk copies
// that complete on the stage's mbarrier (was: every thread issuing 16-byte cp.async, ~200 of the ~580
// instructions per warp and tile). The copy is the 16-byte aligned superset of the span, byte x landing
// at sbuf + (x - (g & ~15)) as with load_span; where rounding the end up would pass the end of the
// tensor, the last (< 16) bytes are copied by plain loads.
__device__ __forceinline__ void mbar_init(uint32_t bar) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void mbar_inval(uint32_t bar) {
  asm volatile("mbarrier.inval.shared::cta.b64 [%0];\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
  uint32_t done = 0;
  while (!done)
    asm volatile("{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n selp.u32 %0, 1, 0, p;\n}\n"
                 : "=r"(done) : "r"(bar), "r"(parity) : "memory");
}
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
__device__ __forceinline__ void fence_mbar_init() { asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory"); }
__device__ __forceinline__ void mbar_expect_tx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void bulk_g2s(void* dst, const void* src, uint32_t bytes, uint32_t bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n"
               ::"r"(smem_u32(dst)), "l"(src), "r"(bytes), "r"(bar) : "memory");
}
// Bytes of the bulk part of span [g, g + nbytes) (the aligned superset, cut at lim & ~15).
__device__ __forceinline__ uint32_t bulk_bytes(const uint8_t* g, int nbytes, const uint8_t* lim) {
  const uintptr_t a = (uintptr_t)g & ~(uintptr_t)15;
  uintptr_t e = ((uintptr_t)g + nbytes + 15) & ~(uintptr_t)15;
  if (e > (uintptr_t)lim) e = (uintptr_t)lim & ~(uintptr_t)15;
  return e > a ? (uint32_t)(e - a) : 0u;
}
__device__ __forceinline__ void bulk_span(uint8_t* sbuf, const uint8_t* g, int nbytes, uint32_t bulk, uint32_t bar) {
  const uintptr_t a = (uintptr_t)g & ~(uintptr_t)15;
  if (bulk) bulk_g2s(sbuf, (const void*)a, bulk, bar);
  for (uintptr_t x = a + bulk; x < (uintptr_t)g + nbytes; x += 4)  // tail past the last aligned granule of the tensor
    *reinterpret_cast<uint32_t*>(sbuf + (x - a)) = *reinterpret_cast<const uint32_t*>(x);
}
#endif

__device__ __forceinline__ uint32_t h2u(__half2 h) { return *reinterpret_cast<uint32_t*>(&h); }
__device__ __forceinline__ uint32_t pack_h2(float lo, float hi) { return h2u(__floats2half2_rn(lo, hi)); }

}  // namespace cuda
}  // namespace tq
