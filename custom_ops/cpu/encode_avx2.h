// The AVX2 encoder's job description (see encode.cc for when it is used).
#pragma once
#include <cstdint>

#include "core/layout.h"

namespace tq::cpu::detail {

struct EncodeJob {
  RowLayout lay;
  bool dense = false;
  const float* rot = nullptr;    // Hadamard signs [d]
  const float* rot_t = nullptr;  // dense: R transposed (column j contiguous) [d, d]
  float isd = 1.0f;
  const float* codebook = nullptr;
  const float* bounds = nullptr;  // K - 1 boundaries
  const float* qjl = nullptr;
  const void* x = nullptr;
  bool half = false;
  uint8_t* rows = nullptr;
};

// Encodes vectors [begin, end); d must be a multiple of 8 and <= 1024. Returns -1 or the flat
// index of the first non-finite input element.
int64_t encode_chunk_avx2(const EncodeJob& j, int64_t begin, int64_t end);

}  // namespace tq::cpu::detail
