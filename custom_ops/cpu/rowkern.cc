// Portable versions of the row kernels and the run-time dispatch.
#include "cpu/rowkern.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

#include "core/bitpack.h"
#include "core/half.h"

namespace tq::cpu {
namespace {

inline void load_row(const RowSpan& rs, int64_t r, float* dst) {
  const uint8_t* p = rs.base + r * rs.stride + rs.code_off;
  if (rs.bits == 32) {
    const float* f = reinterpret_cast<const float*>(p);
    for (int i = 0; i < rs.n; ++i) dst[i] = f[i];
  } else if (rs.bits == 16) {
    const uint16_t* h = reinterpret_cast<const uint16_t*>(p);
    for (int i = 0; i < rs.n; ++i) dst[i] = half_to_float(h[i]);
  } else {
    for (int i = 0; i < rs.n; ++i) dst[i] = rs.table[unpack_code(p, i, rs.bits)];
  }
}

inline float row_scale(const RowSpan& rs, int64_t r, int scale_off) {
  if (scale_off < 0) return 1.0f;
  float f;
  std::memcpy(&f, rs.base + r * rs.stride + scale_off, 4);
  return f;
}

void dot_rows_portable(const RowSpan& rs, int64_t count, const float* q, int64_t q_ld, int nv, float* out,
                       int64_t out_ld, int scale_off, float mult, bool accumulate) {
  std::vector<float> row(rs.n);
  for (int64_t r = 0; r < count; ++r) {
    load_row(rs, r, row.data());
    const float f = mult * row_scale(rs, r, scale_off);
    for (int v = 0; v < nv; ++v) {
      float s = 0.0f;
      for (int i = 0; i < rs.n; ++i) s += q[v * q_ld + i] * row[i];
      out[v * out_ld + r] = (accumulate ? out[v * out_ld + r] : 0.0f) + f * s;
    }
  }
}

void acc_rows_portable(const RowSpan& rs, int64_t count, const float* w, int64_t w_ld, int nv, float* acc,
                       int64_t acc_ld, int scale_off) {
  std::vector<float> row(rs.n);
  for (int64_t r = 0; r < count; ++r) {
    load_row(rs, r, row.data());
    const float f = row_scale(rs, r, scale_off);
    for (int v = 0; v < nv; ++v) {
      const float wv = w[v * w_ld + r] * f;
      if (wv == 0.0f) continue;
      for (int i = 0; i < rs.n; ++i) acc[v * acc_ld + i] += wv * row[i];
    }
  }
}

}  // namespace

bool use_avx2() {
  static const bool ok = [] {
    const char* off = std::getenv("TQ_ORT_NO_AVX2");
    if (off && *off && *off != '0') return false;
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
#else
    return false;
#endif
  }();
  return ok;
}

bool use_avx512() {
  static const bool ok = [] {
    const char* off = std::getenv("TQ_ORT_NO_AVX512");
    if ((off && *off && *off != '0') || !use_avx2()) return false;
#if defined(__x86_64__) || defined(__i386__)
    return bool(__builtin_cpu_supports("avx512f"));
#else
    return false;
#endif
  }();
  return ok;
}

void dot_rows(const RowSpan& rs, int64_t count, const float* q, int64_t q_ld, int nv, float* out,
              int64_t out_ld, int scale_off, float mult, bool accumulate) {
  if (count <= 0 || nv <= 0) return;
  if (use_avx512() && detail::avx512_handles(rs))
    return detail::dot_rows_avx512(rs, count, q, q_ld, nv, out, out_ld, scale_off, mult, accumulate);
  if (use_avx2()) return detail::dot_rows_avx2(rs, count, q, q_ld, nv, out, out_ld, scale_off, mult, accumulate);
  dot_rows_portable(rs, count, q, q_ld, nv, out, out_ld, scale_off, mult, accumulate);
}

void acc_rows(const RowSpan& rs, int64_t count, const float* w, int64_t w_ld, int nv, float* acc,
              int64_t acc_ld, int scale_off) {
  if (count <= 0 || nv <= 0) return;
  if (use_avx512() && detail::avx512_handles(rs))
    return detail::acc_rows_avx512(rs, count, w, w_ld, nv, acc, acc_ld, scale_off);
  if (use_avx2()) return detail::acc_rows_avx2(rs, count, w, w_ld, nv, acc, acc_ld, scale_off);
  acc_rows_portable(rs, count, w, w_ld, nv, acc, acc_ld, scale_off);
}

float exp_shift_sum(float* x, int64_t n) {
  if (n <= 0) return 0.0f;
  if (use_avx2()) return detail::exp_shift_sum_avx2(x, n);
  float mx = -std::numeric_limits<float>::infinity();
  for (int64_t i = 0; i < n; ++i) mx = std::max(mx, x[i]);
  float sum = 0.0f;
  for (int64_t i = 0; i < n; ++i) sum += (x[i] = std::exp(x[i] - mx));
  return sum;
}

}  // namespace tq::cpu
