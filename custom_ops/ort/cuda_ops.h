// TurboQuantEncode / Decode / Attention for ONNX Runtime's CUDAExecutionProvider (docs/cuda.md).
// Registered into the one domain by register.cc when the library is built with TQ_WITH_CUDA.
#pragma once
#include <onnxruntime_cxx_api.h>

namespace tq {

// Adds the CUDA EP kernels of the three ops to the domain (the CPU kernels are added by the caller).
void RegisterCudaOps(Ort::CustomOpDomain& domain);

}  // namespace tq
