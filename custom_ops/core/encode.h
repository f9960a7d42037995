// Encode one vector into a row (docs/ops.md 1.3). Codes are bit-exact across CPU, CUDA and numpy:
// every marked step uses the exact fmul/fadd helpers in a fixed order. x must be finite.
#pragma once
#include <cmath>
#include "core/bitpack.h"
#include "core/layout.h"
#include "core/rotation.h"

namespace tq {

// Boundaries B[k] = (c[k] + c[k+1]) * 0.5f, k = 0..K-2 (exact).
TQ_HD inline void make_boundaries(const float* c, int K, float* B) {
  for (int k = 0; k + 1 < K; ++k) B[k] = fmul(fadd(c[k], c[k + 1]), 0.5f);
}

// The boundaries of a layout's codebook input into B[table_size()]: B[0, K-1) of the 2^bits
// centroids, and with split widths B[K, 3K-1) of the 2^(bits+1) ones (K = 2^bits).
TQ_HD inline void make_layout_boundaries(const float* c, const RowLayout& l, float* B) {
  const int K = 1 << l.bits;
  make_boundaries(c, K, B);
  if (l.hi) make_boundaries(c + K, 2 * K, B + K);
}

// #{k : t > B[k]} for ascending B (ties go to the lower centroid).
TQ_HD inline int code_of(float t, const float* B, int K) {
  if (K <= 16) {  // branch-free count: vectorizes, and matches the definition literally
    int n = 0;
    for (int k = 0; k + 1 < K; ++k) n += t > B[k] ? 1 : 0;
    return n;
  }
  int lo = 0, hi = K - 1;  // first k with !(t > B[k]); B ascending makes that the count
  while (lo < hi) {
    int mid = (lo + hi) >> 1;
    if (t > B[mid]) lo = mid + 1; else hi = mid;
  }
  return lo;
}

// Sum of z[i]^2 in 8 lanes, folded in the fixed order of 1.3 step 3 (exact).
TQ_HD inline float sum_sq_8lanes(const float* z, int d) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (int i = 0; i < d; ++i) acc[i & 7] = fadd(acc[i & 7], fmul(z[i], z[i]));
  return fadd(fadd(fadd(acc[0], acc[4]), fadd(acc[2], acc[6])),
              fadd(fadd(acc[1], acc[5]), fadd(acc[3], acc[7])));
}

TQ_HD inline float exact_rsqrt(float ss) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(1.0f, __fsqrt_rn(ss));
#else
  return 1.0f / sqrtf(ss);  // both correctly rounded (IEEE)
#endif
}

TQ_HD inline void store_f32(uint8_t* p, float v) {
  union { float f; uint8_t b[4]; } u{v};
  for (int i = 0; i < 4; ++i) p[i] = u.b[i];  // little-endian hosts and GPUs
}
TQ_HD inline float load_f32(const uint8_t* p) {
  union { float f; uint8_t b[4]; } u;
  for (int i = 0; i < 4; ++i) u.b[i] = p[i];
  return u.f;
}

struct EncodeScratch {  // caller-provided, d floats / bytes each (r only with QJL)
  float* z;
  uint8_t* codes;
  float* r;
};

// Steps 2-6 of 1.3 for one finite vector x[d]; writes the whole row (padding zeroed). B: as
// make_layout_boundaries; c: the codebook input (c[codes[i]] is coordinate i's centroid).
TQ_HD inline void encode_vector(const Rotation& rot, const float* c, const float* B, const RowLayout& lay,
                                const float* qjl, const float* x, EncodeScratch s, uint8_t* row) {
  const int d = lay.d, K = 1 << lay.bits;
  const float isd = inv_sqrt_d(rot);
  float* z = s.z;
  rotate_forward_exact(rot, x, z);
  const float ss = sum_sq_8lanes(z, d);
  float scale = 0.0f;
  const int hi = lay.hi;  // split widths: [0, hi) code 2^bits + the (bits+1)-bit code (B + K)
  if (ss == 0.0f) {
    for (int i = 0; i < d; ++i) s.codes[i] = uint8_t(i < hi ? K + K : K / 2);
  } else {
    const float inv = exact_rsqrt(ss);
    for (int i = 0; i < hi; ++i) s.codes[i] = uint8_t(K + code_of(fmul(z[i], inv), B + K, 2 * K));
    for (int i = hi; i < d; ++i) s.codes[i] = uint8_t(code_of(fmul(z[i], inv), B, K));
    float zc = 0.0f, cc = 0.0f;  // least-squares scale (not bit-exact, any order)
    for (int i = 0; i < d; ++i) {
      const float ci = c[s.codes[i]];
      zc += z[i] * ci;
      cc += ci * ci;
    }
    scale = cc > 0.0f ? isd * zc / cc : 0.0f;
  }
  store_f32(row, scale);
  pack_row_codes(s.codes, lay, row + lay.codes_offset());
  if (!lay.qjl) return;
  // QJL on the rotated residual r = y - scale * c[code], y = z * inv_sqrt_d.
  float rn = 0.0f;
  for (int i = 0; i < d; ++i) {
    s.r[i] = z[i] * isd - scale * c[s.codes[i]];
    rn += s.r[i] * s.r[i];
  }
  store_f32(row + lay.rnorm_offset(), sqrtf(rn));
  uint8_t* signs = row + lay.signs_offset();
  for (int j = 0; j < lay.sign_bytes(); ++j) signs[j] = 0;
  for (int j = 0; j < lay.m; ++j) {
    const float* sj = qjl + size_t(j) * d;
    float p = 0.0f;
    for (int i = 0; i < d; ++i) p += sj[i] * s.r[i];
    if (p >= 0.0f) signs[j >> 3] |= uint8_t(1u << (j & 7));
  }
}

}  // namespace tq
