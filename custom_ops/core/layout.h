// Row layout (docs/ops.md 1.4): scale | codes | [rnorm | signs], fields 4-byte aligned. Version 2
// (1.4.1) splits the codes in two streams: rotated coordinates [0, hi) at bits + 1, then [hi, d) at
// bits; hi = 0 is version 1.
#pragma once
#include "core/defs.h"

namespace tq {

constexpr int kLayoutVersion = 2;

TQ_HD inline int pad4(int n) { return (n + 3) & ~3; }
TQ_HD inline bool valid_bits(int b) { return (b >= 1 && b <= 6) || b == 8; }
// hi coordinates at bits + 1: 0, or a multiple of 8 in (0, d) with bits + 1 a valid width.
TQ_HD inline bool valid_hi(int d, int bits, int hi) {
  return hi == 0 || (hi > 0 && hi < d && hi % 8 == 0 && bits + 1 <= 6 && valid_bits(bits));
}

struct RowLayout {
  int d = 0, bits = 0, m = 0;  // m = QJL sketch length, 0 without QJL
  int hi = 0;                  // coordinates [0, hi) at bits + 1 (split widths), 0: one width
  bool qjl = false;
  TQ_HD int hi_code_bytes() const { return hi ? pad4((hi * (bits + 1) + 7) / 8) : 0; }
  TQ_HD int lo_code_bytes() const { return pad4(((d - hi) * bits + 7) / 8); }
  TQ_HD int code_bytes() const { return hi_code_bytes() + lo_code_bytes(); }
  TQ_HD int sign_bytes() const { return qjl ? pad4((m + 7) / 8) : 0; }
  TQ_HD int codes_offset() const { return 4; }
  TQ_HD int lo_codes_offset() const { return 4 + hi_code_bytes(); }
  TQ_HD int rnorm_offset() const { return 4 + code_bytes(); }
  TQ_HD int signs_offset() const { return 8 + code_bytes(); }
  TQ_HD int row_bytes() const { return 4 + code_bytes() + (qjl ? 4 + sign_bytes() : 0); }
  // Entries of the codebook input: 2^bits, or with hi the 2^bits centroids then the 2^(bits+1).
  TQ_HD int table_size() const { return hi ? 3 << bits : 1 << bits; }
};

TQ_HD inline RowLayout make_layout(int d, int bits, bool qjl, int m, int hi = 0) {
  RowLayout l;
  l.d = d; l.bits = bits; l.qjl = qjl; l.m = qjl ? m : 0; l.hi = hi;
  return l;
}

}  // namespace tq
