// Forward/inverse rotations (docs/ops.md 1.1). Rank-1 rotation = Hadamard signs, rank-2 = dense R.
#pragma once
#include <cmath>
#include "core/defs.h"

namespace tq {

struct Rotation {
  const float* data = nullptr;  // signs [d] or row-major R [d, d]
  int d = 0;
  bool dense = false;
};

TQ_HD inline bool is_pow2(int d) { return d >= 2 && (d & (d - 1)) == 0; }

// float32(1/sqrt(d)) for Hadamard (computed in double, rounded once, like the reference), 1 for dense.
TQ_HD inline float inv_sqrt_d(const Rotation& r) {
  return r.dense ? 1.0f : float(1.0 / ::sqrt(double(r.d)));
}

// In-place FWHT, Sylvester order, stages h = 1, 2, 4, ...; each butterfly is independent within a
// stage, so any order inside a stage (and SIMD) gives the same bits.
TQ_HD inline void fwht(float* v, int d) {
  for (int h = 1; h < d; h <<= 1) {
    for (int blk = 0; blk < d; blk += 2 * h) {
      for (int i = blk; i < blk + h; ++i) {
        float a = v[i], b = v[i + h];
        v[i] = fadd(a, b);
        v[i + h] = fsub(a, b);
      }
    }
  }
}

// z = H(s*x) or z = R x, exact (docs/ops.md 1.1): no inv_sqrt_d factor yet.
TQ_HD inline void rotate_forward_exact(const Rotation& r, const float* x, float* z) {
  const int d = r.d;
  if (!r.dense) {
    for (int i = 0; i < d; ++i) z[i] = fmul(r.data[i], x[i]);
    fwht(z, d);
    return;
  }
  for (int i = 0; i < d; ++i) z[i] = 0.0f;
  for (int j = 0; j < d; ++j) {
    const float xj = x[j];
    for (int i = 0; i < d; ++i) z[i] = fadd(z[i], fmul(r.data[i * d + j], xj));
  }
}

}  // namespace tq
