// LSB-first bit streams: code i occupies bits [i*b, i*b+b) (docs/ops.md 1.4).
#pragma once
#include "core/defs.h"

namespace tq {

// Writes n codes of b bits into out[0..nbytes) (nbytes >= ceil(n*b/8)); the rest is zeroed.
TQ_HD inline void pack_codes(const uint8_t* codes, int n, int b, uint8_t* out, int nbytes) {
  for (int i = 0; i < nbytes; ++i) out[i] = 0;
  if (b == 8) {
    for (int i = 0; i < n; ++i) out[i] = codes[i];
    return;
  }
  for (int i = 0; i < n; ++i) {
    int bit = i * b;
    uint32_t v = uint32_t(codes[i]) << (bit & 7);
    out[bit >> 3] |= uint8_t(v);
    if ((bit & 7) + b > 8) out[(bit >> 3) + 1] |= uint8_t(v >> 8);
  }
}

// Code i of a b-bit stream; never reads past the byte that holds its last bit.
TQ_HD inline int unpack_code(const uint8_t* s, int i, int b) {
  int bit = i * b;
  uint32_t v = s[bit >> 3];
  if ((bit & 7) + b > 8) v |= uint32_t(s[(bit >> 3) + 1]) << 8;
  return int((v >> (bit & 7)) & ((1u << b) - 1u));
}

TQ_HD inline int get_bit(const uint8_t* s, int j) { return (s[j >> 3] >> (j & 7)) & 1; }

}  // namespace tq
