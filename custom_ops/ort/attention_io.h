// TurboQuantAttention's inputs, outputs and recent-window rings (docs/ops.md 4), shared by the CPU
// and CUDA adapters: one schema, one set of ring checks and messages, one reading of the options.
#pragma once

#include <cstdint>
#include <vector>

#include "ort/common.h"

namespace tq::ort::attn {

enum In { kQuery, kKey, kValue, kPastKey, kPastValue, kSeqlens, kTotal, kRotation, kKeyCb, kValueCb, kQjl, kCos, kSin,
          kPastKeyRecent, kPastValueRecent, kNumIn };
inline const char* const kInNames[kNumIn] = {
    "query", "key", "value", "past_key", "past_value", "seqlens_k", "total_sequence_length", "rotation",
    "key_codebook", "value_codebook", "qjl_matrix", "cos_cache", "sin_cache", "past_key_recent", "past_value_recent"};
enum Out { kOutput, kPresentKey, kPresentValue, kPresentKeyRecent, kPresentValueRecent, kNumOut };

// Registration types, one registration per (T, past_value kind) so that ORT infers output types.
inline ElemType input_type(size_t i, ElemType T, bool keys_only) {
  switch (i) {
    case kQuery: return T;
    case kPastKey: return kU8;
    // keys-only takes any dtype so a mismatch reaches the kernel's message, not a kernel lookup failure
    case kPastValue: return keys_only ? kAny : kU8;
    case kSeqlens: case kTotal: return kI32;
    case kRotation: case kKeyCb: case kValueCb: case kQjl: return kF32;
    default: return kAny;  // key, value, cos/sin, rings: checked against the query's dtype by the kernel
  }
}
inline ElemType output_type(size_t i, ElemType T, bool keys_only) {
  switch (i) {
    case kPresentKey: return kU8;
    case kPresentValue: return keys_only ? T : kU8;
    default: return T;  // output and the recent-window rings
  }
}
inline OrtCustomOpInputOutputCharacteristic input_characteristic(size_t i) {
  return i >= kValueCb ? INPUT_OUTPUT_OPTIONAL : INPUT_OUTPUT_REQUIRED;
}
inline OrtCustomOpInputOutputCharacteristic output_characteristic(size_t i) {
  return i >= kPresentKeyRecent ? INPUT_OUTPUT_OPTIONAL : INPUT_OUTPUT_REQUIRED;
}

// All inputs, the optional ones (value_codebook onwards) absent when empty.
void read_inputs(Ort::KernelContext& ctx, Input (&in)[kNumIn]);

// The sizes every output derives from (keys-only: Rv = d, elements of T).
struct OutputDims {
  int64_t B, S, hq, hkv, d, P, total, Pp, Rk, Rv, R;
  ElemType T;
  bool keys_only;
};

// Checks every output the node produces against ort/common.h's size limits (memory_limit: see
// OutputSizes), before any is created: a capacity max(P, total_sequence_length) far beyond what
// fits, or head counts whose products overflow, fail here naming the output and the limit.
void check_output_sizes(Ort::KernelContext& ctx, const OutputDims& s, int64_t memory_limit);

// The recent-window rings as the kernels take them: all null when R = 0.
struct Rings {
  std::vector<int64_t> shape;  // [B, Hkv, R, d]
  const void* past_k = nullptr;
  const void* past_v = nullptr;  // keys-only: a well-formed value ring passes through, else null (zeros)
  void* present_k = nullptr;     // null when the node has no such output
  void* present_v = nullptr;
};

// Rejects a missing ring, or one not of dtype T and shape [B, Hkv, R, d] (R > 0; the value ring
// only when values are compressed); returns the ring shape.
std::vector<int64_t> check_rings(const Input (&in)[kNumIn], int64_t B, int64_t hkv, int64_t R, int64_t d, ElemType T,
                                 bool keys_only);

// Creates the ring outputs the node asks for ([B, Hkv, 0, d] when R = 0) and resolves the pointers.
Rings ring_io(Ort::KernelContext& ctx, const Input (&in)[kNumIn], std::vector<int64_t> shape, int64_t R, ElemType T,
              bool keys_only);

}  // namespace tq::ort::attn
