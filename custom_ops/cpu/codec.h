// CPU encode/decode of row tensors. Plain pointers and sizes only (no ORT types).
#pragma once
#include <cstdint>
#include <vector>
#include "core/layout.h"
#include "core/rotation.h"

namespace tq::cpu {

struct Codec {
  Rotation rot;             // signs [d] or R [d, d]
  const float* codebook;    // [2^bits], ascending
  RowLayout lay;            // d, bits, qjl, m
  const float* qjl;         // [m, d] or null
};

// A codec prepared for encoding (boundaries, transposed dense R, the AVX2 decision), reusable.
struct Encoder {
  explicit Encoder(const Codec& c);
  // Encodes vectors [begin, end) of x[., d] into rows[., row_bytes] on the calling thread.
  // Returns -1 or the flat index of the first non-finite element (that vector's row is zeroed).
  int64_t encode(const void* x, bool half, int64_t begin, int64_t end, uint8_t* rows) const;

  Codec codec;
  std::vector<float> bounds, rot_t;
  bool avx2 = false;
};

// Encodes n vectors x[n, d] (float32, or float16 bits when half) into rows[n, row_bytes].
// Returns -1, or the flat index (vector * d + i) of the first non-finite input element (rows of
// such vectors are zero).
int64_t encode_rows(const Codec& c, const void* x, bool half, int64_t n, uint8_t* rows);

// Decodes n rows into x_hat[n, d] (float32, or float16 bits when half).
void decode_rows(const Codec& c, const uint8_t* rows, int64_t n, void* out, bool half);

// Index of the first non-finite element of x[n] (float32 or float16 bits), or -1.
int64_t find_nonfinite(const void* x, bool half, int64_t n);

}  // namespace tq::cpu
