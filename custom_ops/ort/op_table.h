// The op lists each adapter file contributes to the one ORT registration table (op_table.cc).
// One function per (op, execution provider); each adds that op's registrations (one per type
// variant) in the order ORT must see them.
#pragma once
#include <vector>

#include <onnxruntime_cxx_api.h>

namespace tq::ort {

// CPUExecutionProvider (cpu_*_op.cc).
void add_cpu_encode_ops(std::vector<const OrtCustomOp*>& ops);
void add_cpu_decode_ops(std::vector<const OrtCustomOp*>& ops);
void add_cpu_attention_ops(std::vector<const OrtCustomOp*>& ops);

// CUDAExecutionProvider (cuda_*_op.cc), when the library is built with TQ_WITH_CUDA (docs/cuda.md).
void add_cuda_encode_ops(std::vector<const OrtCustomOp*>& ops);
void add_cuda_decode_ops(std::vector<const OrtCustomOp*>& ops);
void add_cuda_attention_ops(std::vector<const OrtCustomOp*>& ops);

}  // namespace tq::ort
