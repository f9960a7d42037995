// Row layout version 1 (docs/ops.md 1.4): scale | codes | [rnorm | signs], fields 4-byte aligned.
#pragma once
#include "core/defs.h"

namespace tq {

constexpr int kLayoutVersion = 1;

TQ_HD inline int pad4(int n) { return (n + 3) & ~3; }
TQ_HD inline bool valid_bits(int b) { return b == 1 || b == 2 || b == 3 || b == 4 || b == 8; }

struct RowLayout {
  int d = 0, bits = 0, m = 0;  // m = QJL sketch length, 0 without QJL
  bool qjl = false;
  TQ_HD int code_bytes() const { return pad4((d * bits + 7) / 8); }
  TQ_HD int sign_bytes() const { return qjl ? pad4((m + 7) / 8) : 0; }
  TQ_HD int codes_offset() const { return 4; }
  TQ_HD int rnorm_offset() const { return 4 + code_bytes(); }
  TQ_HD int signs_offset() const { return 8 + code_bytes(); }
  TQ_HD int row_bytes() const { return 4 + code_bytes() + (qjl ? 4 + sign_bytes() : 0); }
};

TQ_HD inline RowLayout make_layout(int d, int bits, bool qjl, int m) {
  RowLayout l;
  l.d = d; l.bits = bits; l.qjl = qjl; l.m = qjl ? m : 0;
  return l;
}

}  // namespace tq
