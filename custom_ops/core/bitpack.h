// LSB-first bit streams: code i occupies bits [i*b, i*b+b) (docs/ops.md 1.4).
#pragma once
#include "core/defs.h"
#include "core/layout.h"

namespace tq {

// Writes n codes of b bits (codes[i] - base each) into out[0..nbytes) (nbytes >= ceil(n*b/8)); the
// rest is zeroed.
TQ_HD inline void pack_codes(const uint8_t* codes, int n, int b, uint8_t* out, int nbytes, int base = 0) {
  for (int i = 0; i < nbytes; ++i) out[i] = 0;
  if (b == 8) {
    for (int i = 0; i < n; ++i) out[i] = uint8_t(codes[i] - base);
    return;
  }
  for (int i = 0; i < n; ++i) {
    int bit = i * b;
    uint32_t v = uint32_t(codes[i] - base) << (bit & 7);
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

// Row codes as codebook-input indices (docs/ops.md 1.4.1): coordinate i < hi holds 2^bits + its
// (bits+1)-bit code, the others their bits-bit code; codes[d] <-> the row's code bytes (at codes_offset).
TQ_HD inline int code_index(const uint8_t* code_bytes, const RowLayout& l, int i) {
  if (i < l.hi) return (1 << l.bits) + unpack_code(code_bytes, i, l.bits + 1);
  return unpack_code(code_bytes + l.hi_code_bytes(), i - l.hi, l.bits);
}

TQ_HD inline void pack_row_codes(const uint8_t* codes, const RowLayout& l, uint8_t* out) {
  if (!l.hi) return pack_codes(codes, l.d, l.bits, out, l.code_bytes());
  pack_codes(codes, l.hi, l.bits + 1, out, l.hi_code_bytes(), 1 << l.bits);  // less the 2^bits offset
  pack_codes(codes + l.hi, l.d - l.hi, l.bits, out + l.hi_code_bytes(), l.lo_code_bytes());
}

TQ_HD inline int get_bit(const uint8_t* s, int j) { return (s[j >> 3] >> (j & 7)) & 1; }

}  // namespace tq
