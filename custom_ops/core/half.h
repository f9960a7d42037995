// IEEE binary16 <-> float32 without hardware support (exact; round-to-nearest-even on the way down).
#pragma once
#include "core/defs.h"

namespace tq {

TQ_HD inline float half_to_float(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t man = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0) {
    if (man == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      int e = -1;
      do { man <<= 1; ++e; } while ((man & 0x400u) == 0);
      bits = sign | uint32_t(127 - 15 - e) << 23 | (man & 0x3ffu) << 13;
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | man << 13;
  } else {
    bits = sign | (exp + 112u) << 23 | man << 13;
  }
  union { uint32_t u; float f; } v{bits};
  return v.f;
}

TQ_HD inline uint16_t float_to_half(float f) {
  union { float f; uint32_t u; } v{f};
  uint32_t x = v.u;
  uint16_t sign = uint16_t((x >> 16) & 0x8000u);
  uint32_t ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u) return uint16_t(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u : 0u));
  if (ax >= 0x477ff000u) return uint16_t(sign | 0x7c00u);  // rounds to >= 65520: inf
  if (ax < 0x38800000u) {  // subnormal or zero in half
    if (ax < 0x33000000u) return sign;  // < 2^-25: rounds to 0
    uint32_t e = ax >> 23;
    uint32_t man = (ax & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126u - e;  // 14 + (112 - e) + ...
    uint32_t hm = man >> (shift);
    uint32_t rem = man & ((1u << shift) - 1u);
    uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (hm & 1u))) ++hm;
    return uint16_t(sign | hm);
  }
  uint32_t r = ax - 0x38000000u;  // rebias exponent 127 -> 15
  uint32_t hm = r >> 13;
  uint32_t rem = r & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (hm & 1u))) ++hm;
  return uint16_t(sign | hm);
}

}  // namespace tq
