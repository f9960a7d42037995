// AVX-512 versions of dot_rows / acc_rows for packed codes of 1-4 bits (16 coordinates per step,
// one vpermps for a 16-entry codebook). Other row kinds stay on the AVX2 kernels.
#if defined(__x86_64__) || defined(__i386__)
// GCC 12 flags the undefined-upper-lanes idiom inside its own AVX-512 headers.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <cstring>

#include "cpu/rowkern.h"

#define TQ_AVX512 __attribute__((target("avx512f,avx2,fma,f16c")))
#define TQ_AVX512_INLINE __attribute__((target("avx512f,avx2,fma,f16c"), always_inline)) inline

namespace tq::cpu::detail {
namespace {

// 16 codes of BITS bits (2 * BITS bytes at p + 2 * BITS * g) as floats.
template <int BITS>
struct Dec16 {
  __m512 table;
  __m256i shuf;
  __m512i shifts, mask;
  TQ_AVX512_INLINE explicit Dec16(const float* t) {
    float tb[16] = {0};
    for (int k = 0; k < (1 << BITS); ++k) tb[k] = t[k];
    table = _mm512_loadu_ps(tb);
    // 16-bit window j = bytes (j*BITS/8, +1); lanes 8..15 read from the upper 128-bit half.
    alignas(32) uint8_t sh[32];
    alignas(64) int32_t s[16];
    for (int j = 0; j < 16; ++j) {
      const int byte = (j * BITS) >> 3;
      sh[2 * j] = uint8_t(byte);
      sh[2 * j + 1] = uint8_t(byte + 1 < 16 ? byte + 1 : 15);
      s[j] = (j * BITS) & 7;
    }
    shuf = _mm256_load_si256(reinterpret_cast<const __m256i*>(sh));
    shifts = _mm512_load_si512(s);
    mask = _mm512_set1_epi32((1 << BITS) - 1);
  }
  TQ_AVX512_INLINE __m512 operator()(const uint8_t* p, int g) const {
    const uint8_t* q = p + g * 2 * BITS;
    uint64_t w;  // exactly 2 * BITS bytes, assembled in registers (never reads past the group)
    if (BITS == 4) {
      std::memcpy(&w, q, 8);
    } else if (BITS == 3) {
      uint32_t lo;
      uint16_t hi;
      std::memcpy(&lo, q, 4);
      std::memcpy(&hi, q + 4, 2);
      w = lo | uint64_t(hi) << 32;
    } else if (BITS == 2) {
      uint32_t lo;
      std::memcpy(&lo, q, 4);
      w = lo;
    } else {
      uint16_t lo;
      std::memcpy(&lo, q, 2);
      w = lo;
    }
    const __m256i bytes = _mm256_broadcastsi128_si256(_mm_cvtsi64_si128(int64_t(w)));
    const __m512i win = _mm512_cvtepu16_epi32(_mm256_shuffle_epi8(bytes, shuf));
    const __m512i idx = _mm512_and_si512(_mm512_srlv_epi32(win, shifts), mask);
    return _mm512_permutexvar_ps(idx, table);
  }
};

TQ_AVX512_INLINE float load_scale(const uint8_t* row, int scale_off) {
  if (scale_off < 0) return 1.0f;
  float f;
  std::memcpy(&f, row + scale_off, 4);
  return f;
}

TQ_AVX512_INLINE __m256 fold(__m512 v) {
  return _mm256_add_ps(_mm512_castps512_ps256(v), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
}

// Horizontal sums of NV (<= 8) accumulators into out8[0..NV) with one hadd tree.
template <int NV>
TQ_AVX512_INLINE void reduce_n(const __m512* acc, float* out8) {
  __m256 a[8];
  for (int v = 0; v < 8; ++v) a[v] = v < NV ? fold(acc[v]) : _mm256_setzero_ps();
  if (NV <= 4) {
    const __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
    _mm_storeu_ps(out8, _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1)));
    return;
  }
  __m256 t0 = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
  __m256 t1 = _mm256_hadd_ps(_mm256_hadd_ps(a[4], a[5]), _mm256_hadd_ps(a[6], a[7]));
  _mm256_storeu_ps(out8, _mm256_add_ps(_mm256_permute2f128_ps(t0, t1, 0x20), _mm256_permute2f128_ps(t0, t1, 0x31)));
}

template <int BITS, int NV>
TQ_AVX512 void dot16(const RowSpan& rs, int64_t count, const float* q, int64_t q_ld, float* out, int64_t out_ld,
                     int scale_off, float mult, bool accumulate) {
  const Dec16<BITS> dec(rs.table);
  const int ng = rs.n / 16;
  for (int64_t r = 0; r < count; ++r) {
    const uint8_t* row = rs.base + r * rs.stride;
    const uint8_t* p = row + rs.code_off;
    __m512 acc[NV];
    for (int v = 0; v < NV; ++v) acc[v] = _mm512_setzero_ps();
    for (int g = 0; g < ng; ++g) {
      const __m512 cv = dec(p, g);
      for (int v = 0; v < NV; ++v) acc[v] = _mm512_fmadd_ps(_mm512_loadu_ps(q + v * q_ld + 16 * g), cv, acc[v]);
    }
    const float f = mult * load_scale(row, scale_off);
    alignas(32) float sums[8];
    reduce_n<NV>(acc, sums);
    for (int v = 0; v < NV; ++v) {
      const float s = f * sums[v];
      out[v * out_ld + r] = accumulate ? out[v * out_ld + r] + s : s;
    }
  }
}

template <int BITS, int NV, int CG>
TQ_AVX512 void acc16(const RowSpan& rs, int64_t count, const float* w, int64_t w_ld, float* acc, int64_t acc_ld,
                     int scale_off) {
  const Dec16<BITS> dec(rs.table);
  const int ng = rs.n / 16;
  const int64_t rblock = 256;
  for (int64_t r0 = 0; r0 < count; r0 += rblock) {
    const int64_t r1 = r0 + rblock < count ? r0 + rblock : count;
    for (int g0 = 0; g0 + CG <= ng; g0 += CG) {
      __m512 a[NV][CG];
      for (int v = 0; v < NV; ++v)
        for (int c = 0; c < CG; ++c) a[v][c] = _mm512_loadu_ps(acc + v * acc_ld + 16 * (g0 + c));
      for (int64_t r = r0; r < r1; ++r) {
        const uint8_t* row = rs.base + r * rs.stride;
        const float f = load_scale(row, scale_off);
        __m512 wv[NV];
        for (int v = 0; v < NV; ++v) wv[v] = _mm512_set1_ps(w[v * w_ld + r] * f);
        for (int c = 0; c < CG; ++c) {
          const __m512 cv = dec(row + rs.code_off, g0 + c);
          for (int v = 0; v < NV; ++v) a[v][c] = _mm512_fmadd_ps(wv[v], cv, a[v][c]);
        }
      }
      for (int v = 0; v < NV; ++v)
        for (int c = 0; c < CG; ++c) _mm512_storeu_ps(acc + v * acc_ld + 16 * (g0 + c), a[v][c]);
    }
  }
}

template <int BITS, int NV>
TQ_AVX512 void acc_cg(const RowSpan& rs, int64_t count, const float* w, int64_t w_ld, float* acc, int64_t acc_ld,
                      int so) {
  const int ng = rs.n / 16;
  constexpr int kMax = NV >= 8 ? 2 : (NV >= 4 ? 4 : 8);  // NV * CG <= 16 of the 32 zmm registers
  if (kMax >= 8 && ng % 8 == 0) return acc16<BITS, NV, (kMax >= 8 ? 8 : 1)>(rs, count, w, w_ld, acc, acc_ld, so);
  if (kMax >= 4 && ng % 4 == 0) return acc16<BITS, NV, (kMax >= 4 ? 4 : 1)>(rs, count, w, w_ld, acc, acc_ld, so);
  if (ng % 2 == 0) return acc16<BITS, NV, 2>(rs, count, w, w_ld, acc, acc_ld, so);
  return acc16<BITS, NV, 1>(rs, count, w, w_ld, acc, acc_ld, so);
}

template <int BITS>
TQ_AVX512 void dot_bits(const RowSpan& rs, int64_t count, const float* q, int64_t q_ld, int nv, float* out,
                        int64_t out_ld, int so, float mult, bool acc) {
  switch (nv) {
    case 1: return dot16<BITS, 1>(rs, count, q, q_ld, out, out_ld, so, mult, acc);
    case 2: return dot16<BITS, 2>(rs, count, q, q_ld, out, out_ld, so, mult, acc);
    case 3: return dot16<BITS, 3>(rs, count, q, q_ld, out, out_ld, so, mult, acc);
    case 4: return dot16<BITS, 4>(rs, count, q, q_ld, out, out_ld, so, mult, acc);
    case 5: return dot16<BITS, 5>(rs, count, q, q_ld, out, out_ld, so, mult, acc);
    case 6: return dot16<BITS, 6>(rs, count, q, q_ld, out, out_ld, so, mult, acc);
    case 7: return dot16<BITS, 7>(rs, count, q, q_ld, out, out_ld, so, mult, acc);
    default: return dot16<BITS, 8>(rs, count, q, q_ld, out, out_ld, so, mult, acc);
  }
}

template <int BITS>
TQ_AVX512 void acc_bits(const RowSpan& rs, int64_t count, const float* w, int64_t w_ld, int nv, float* acc,
                        int64_t acc_ld, int so) {
  switch (nv) {
    case 1: return acc_cg<BITS, 1>(rs, count, w, w_ld, acc, acc_ld, so);
    case 2: return acc_cg<BITS, 2>(rs, count, w, w_ld, acc, acc_ld, so);
    case 3: return acc_cg<BITS, 3>(rs, count, w, w_ld, acc, acc_ld, so);
    case 4: return acc_cg<BITS, 4>(rs, count, w, w_ld, acc, acc_ld, so);
    case 5: return acc_cg<BITS, 5>(rs, count, w, w_ld, acc, acc_ld, so);
    case 6: return acc_cg<BITS, 6>(rs, count, w, w_ld, acc, acc_ld, so);
    case 7: return acc_cg<BITS, 7>(rs, count, w, w_ld, acc, acc_ld, so);
    default: return acc_cg<BITS, 8>(rs, count, w, w_ld, acc, acc_ld, so);
  }
}

}  // namespace

bool avx512_handles(const RowSpan& rs) { return rs.bits >= 1 && rs.bits <= 4 && rs.n % 16 == 0; }

TQ_AVX512 void dot_rows_avx512(const RowSpan& rs, int64_t count, const float* q, int64_t q_ld, int nv, float* out,
                               int64_t out_ld, int so, float mult, bool acc) {
  switch (rs.bits) {
    case 1: return dot_bits<1>(rs, count, q, q_ld, nv, out, out_ld, so, mult, acc);
    case 2: return dot_bits<2>(rs, count, q, q_ld, nv, out, out_ld, so, mult, acc);
    case 3: return dot_bits<3>(rs, count, q, q_ld, nv, out, out_ld, so, mult, acc);
    default: return dot_bits<4>(rs, count, q, q_ld, nv, out, out_ld, so, mult, acc);
  }
}

TQ_AVX512 void acc_rows_avx512(const RowSpan& rs, int64_t count, const float* w, int64_t w_ld, int nv, float* acc,
                               int64_t acc_ld, int so) {
  switch (rs.bits) {
    case 1: return acc_bits<1>(rs, count, w, w_ld, nv, acc, acc_ld, so);
    case 2: return acc_bits<2>(rs, count, w, w_ld, nv, acc, acc_ld, so);
    case 3: return acc_bits<3>(rs, count, w, w_ld, nv, acc, acc_ld, so);
    default: return acc_bits<4>(rs, count, w, w_ld, nv, acc, acc_ld, so);
  }
}

}  // namespace tq::cpu::detail
#else  // not x86: never called (use_avx512() is false)
#include "cpu/rowkern.h"
namespace tq::cpu::detail {
bool avx512_handles(const RowSpan&) { return false; }
void dot_rows_avx512(const RowSpan&, int64_t, const float*, int64_t, int, float*, int64_t, int, float, bool) {}
void acc_rows_avx512(const RowSpan&, int64_t, const float*, int64_t, int, float*, int64_t, int) {}
}  // namespace tq::cpu::detail
#endif
