// Shared helpers of the ORT CUDA EP adapters (cuda_common.h).
#include "ort/cuda_common.h"

#include <cuda_runtime.h>

#include "cuda/tq_cuda_api.h"

namespace tq::ort::cuda_ep {

std::string str(int64_t v) { return std::to_string(v); }

int dtype_code(ElemType t) { return t == kF32 ? 1 : t == kF16 ? 10 : t == kBF16 ? 16 : 0; }

Input opt_input(Ort::KernelContext& ctx, size_t i, const char* name) {
  Input in;
  in.name = name;
  if (i >= ctx.GetInputCount()) return in;
  auto v = ctx.GetInput(i);
  if (!v) return in;
  in = ort::get_input(ctx, i, name);
  if (in.numel() == 0) in.present = false;
  return in;
}

void check(int rc, const std::string& where) {
  if (rc != 0) ort::fail(where + ": CUDA kernel failed: " + tq_cuda_last_error());
}

int rotation_dim(const Input& rot) {
  rot.require_type(kF32);
  if (rot.rank() == 1) {
    int64_t d = rot.dim(0);
    rot.require(d >= 2 && (d & (d - 1)) == 0, "[d] with d a power of two, or [d, d]");
    return int(d);
  }
  rot.require(rot.rank() == 2 && rot.dim(0) == rot.dim(1), "[d] with d a power of two, or [d, d]");
  return int(rot.dim(0));
}

void reject_split_widths(const OrtKernelInfo* info, std::initializer_list<const char*> attrs) {
  for (const char* a : attrs)
    if (ort::attr_int(info, a, 0) != 0)
      ort::fail(std::string("attribute ") + a + "=" + str(ort::attr_int(info, a, 0)) +
                ": split widths (fractional bits, docs/ops.md 1.4.1) run on the CPU execution provider only in this "
                "version; use whole bit widths on CUDA, or the CPU EP");
}

int codebook_bits(const Input& cb) {
  cb.require_type(kF32);
  cb.require(cb.rank() == 1, "shape [2^bits]");
  for (int b : {1, 2, 3, 4, 5, 6, 8})
    if (cb.dim(0) == (int64_t(1) << b)) return b;
  cb.fail_expected("length 2^bits with bits in {1, 2, 3, 4, 5, 6, 8}");
}

int qjl_rows(const Input& qjl, int d, bool use_qjl) {
  if (!use_qjl) return 0;
  qjl.require(qjl.present, "a float32 [m, d] matrix (use_qjl=1)");
  qjl.require_type(kF32);
  qjl.require(qjl.rank() == 2 && qjl.dim(1) == d && qjl.dim(0) >= 1 && qjl.dim(0) <= 256,
              [&] { return "[m, " + str(d) + "] with 1 <= m <= 256"; });
  return int(qjl.dim(0));
}

Scratch::Scratch(Ort::KernelContext& ctx, size_t bytes) : alloc(nullptr) {
  if (!bytes) return;
  int dev = 0;
  cudaGetDevice(&dev);
  Ort::MemoryInfo mi("Cuda", OrtDeviceAllocator, dev, OrtMemTypeDefault);
  alloc = ctx.GetAllocator(*static_cast<const OrtMemoryInfo*>(mi));
  ptr = alloc.Alloc(bytes);
}

Scratch::~Scratch() {
  if (ptr) alloc.Free(ptr);
}

}  // namespace tq::ort::cuda_ep
