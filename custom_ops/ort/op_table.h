// The CPU op tables each adapter file contributes to the one registration table (register.cc).
#pragma once
#include <vector>

#include <onnxruntime_cxx_api.h>

namespace tq::ort {

void add_encode_ops(std::vector<const OrtCustomOp*>& ops);
void add_decode_ops(std::vector<const OrtCustomOp*>& ops);
void add_attention_ops(std::vector<const OrtCustomOp*>& ops);

}  // namespace tq::ort
