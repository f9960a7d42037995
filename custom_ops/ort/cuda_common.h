// Shared helpers of the ORT CUDA EP adapters (cuda_*_op.cc): shape checks on the host, then the
// plain-pointer kernels of custom_ops/cuda/tq_cuda_api.h (the one door into the CUDA code) on the
// stream ORT gives the kernel (KernelContext_GetGPUComputeStream), scratch from the kernel context's
// CUDA allocator (KernelContext_GetAllocator). Device-side values (seqlens_k) are never read on the
// host: an out-of-range seqlens_k gives NaN outputs for that batch row.
#pragma once
#include <cstdint>
#include <initializer_list>
#include <string>

#include "ort/common.h"

namespace tq::ort::cuda_ep {

constexpr ElemType kBF16 = ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16;
constexpr const char* kCudaEP = "CUDAExecutionProvider";

std::string str(int64_t v);

// The C ABI's dtype code (1 float32, 10 float16, 16 bfloat16; 0 otherwise).
int dtype_code(ElemType t);

// An optional input: absent or empty gives present = false.
Input opt_input(Ort::KernelContext& ctx, size_t i, const char* name);

// Fails with the kernels' last error (tq_cuda_last_error) when rc != 0.
void check(int rc, const std::string& where);

// d and rank from the rotation initializer.
int rotation_dim(const Input& rot);

// Split widths (hi_channels > 0, docs/ops.md 1.4.1) have CPU kernels only so far: a clear error at
// session creation instead of misreading the rows.
void reject_split_widths(const OrtKernelInfo* info, std::initializer_list<const char*> attrs);

// bits from the codebook length.
int codebook_bits(const Input& cb);

// m from qjl_matrix [m, d] (0 without QJL).
int qjl_rows(const Input& qjl, int d, bool use_qjl);

// Device scratch from the kernel context's CUDA allocator.
struct Scratch {
  Scratch(Ort::KernelContext& ctx, size_t bytes);
  // Freed after the launches: ORT's CUDA allocator hands memory back in stream order (the same
  // contract as its own kernels' scratch buffers).
  ~Scratch();
  Ort::Allocator alloc;
  void* ptr = nullptr;
};

template <typename Op, typename Kernel>
struct CudaOpBase : ort::OpBase<Op, Kernel> {
  const char* GetExecutionProviderType() const { return kCudaEP; }
};

}  // namespace tq::ort::cuda_ep
