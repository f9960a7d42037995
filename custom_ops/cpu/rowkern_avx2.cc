// AVX2/FMA/F16C row kernels. Every function carries the target attribute instead of compiling the
// file with -mavx2, so no inline function shared with other files is built for AVX2 by accident.
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#include <cstring>

#include "cpu/rowkern.h"

#define TQ_AVX2 __attribute__((target("avx2,fma,f16c")))
#define TQ_AVX2_INLINE __attribute__((target("avx2,fma,f16c"), always_inline)) inline

namespace tq::cpu::detail {
namespace {

// Decoders: 8 consecutive coordinates (group g) of one row as floats.
template <int BITS>
struct CodeDec {  // BITS in {1, 2, 3, 4}: 8 codes = BITS bytes, looked up with permutes
  __m256 t0, t1;
  __m256i shifts, mask;
  TQ_AVX2_INLINE explicit CodeDec(const float* table) {
    float lo[8] = {0, 0, 0, 0, 0, 0, 0, 0}, hi[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int k = 0; k < (1 << BITS) && k < 8; ++k) lo[k] = table[k];
    for (int k = 8; k < (1 << BITS); ++k) hi[k - 8] = table[k];
    t0 = _mm256_loadu_ps(lo);
    t1 = _mm256_loadu_ps(hi);
    shifts = _mm256_setr_epi32(0, BITS, 2 * BITS, 3 * BITS, 4 * BITS, 5 * BITS, 6 * BITS, 7 * BITS);
    mask = _mm256_set1_epi32((1 << BITS) - 1);
  }
  TQ_AVX2_INLINE __m256 operator()(const uint8_t* p, int g) const {
    const uint8_t* q = p + g * BITS;
    uint32_t w;  // assembled in registers: a BITS-byte memcpy into a stack word stalls store forwarding
    if (BITS == 4) {
      std::memcpy(&w, q, 4);
    } else if (BITS == 3) {
      uint16_t lo;
      std::memcpy(&lo, q, 2);
      w = lo | uint32_t(q[2]) << 16;
    } else if (BITS == 2) {
      uint16_t lo;
      std::memcpy(&lo, q, 2);
      w = lo;
    } else {
      w = q[0];
    }
    __m256i idx = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(int(w)), shifts), mask);
    __m256 lo = _mm256_permutevar8x32_ps(t0, idx);
    if (BITS < 4) return lo;
    __m256 hi = _mm256_permutevar8x32_ps(t1, idx);
    return _mm256_blendv_ps(lo, hi, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
  }
};

template <>
struct CodeDec<8> {  // one byte per code: gather
  const float* table;
  TQ_AVX2_INLINE explicit CodeDec(const float* t) : table(t) {}
  TQ_AVX2_INLINE __m256 operator()(const uint8_t* p, int g) const {
    __m256i idx = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + g * 8)));
    return _mm256_i32gather_ps(table, idx, 4);
  }
};

template <int BITS>
struct WideDec {  // BITS in {5, 6}: 8 codes = BITS bytes, shifted out of one 64-bit word, then a gather
  const float* table;
  TQ_AVX2_INLINE explicit WideDec(const float* t) : table(t) {}
  TQ_AVX2_INLINE __m256 operator()(const uint8_t* p, int g) const {
    uint64_t w = 0;
    std::memcpy(&w, p + g * BITS, BITS);
    constexpr uint64_t m = (1u << BITS) - 1u;
    const __m256i idx = _mm256_setr_epi32(int(w & m), int(w >> BITS & m), int(w >> 2 * BITS & m),
                                          int(w >> 3 * BITS & m), int(w >> 4 * BITS & m), int(w >> 5 * BITS & m),
                                          int(w >> 6 * BITS & m), int(w >> 7 * BITS & m));
    return _mm256_i32gather_ps(table, idx, 4);
  }
};

struct F32Dec {
  TQ_AVX2_INLINE explicit F32Dec(const float*) {}
  TQ_AVX2_INLINE __m256 operator()(const uint8_t* p, int g) const {
    return _mm256_loadu_ps(reinterpret_cast<const float*>(p) + g * 8);
  }
};

struct F16Dec {
  TQ_AVX2_INLINE explicit F16Dec(const float*) {}
  TQ_AVX2_INLINE __m256 operator()(const uint8_t* p, int g) const {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + g * 16)));
  }
};

// Scalar value of coordinate i (the n % 8 tail).
TQ_AVX2_INLINE float scalar_at(const RowSpan& rs, const uint8_t* p, int i) {
  if (rs.bits == 32) { float f; std::memcpy(&f, p + 4 * i, 4); return f; }
  if (rs.bits == 16) {
    uint16_t h; std::memcpy(&h, p + 2 * i, 2);
    return _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h)));
  }
  int bit = i * rs.bits;
  uint32_t v = p[bit >> 3];
  if ((bit & 7) + rs.bits > 8) v |= uint32_t(p[(bit >> 3) + 1]) << 8;
  return rs.table[(v >> (bit & 7)) & ((1u << rs.bits) - 1u)];
}

// Horizontal sums of 8 vectors -> one vector [sum(a0), ..., sum(a7)].
TQ_AVX2_INLINE __m256 hsum8(const __m256* a) {
  __m256 t0 = _mm256_hadd_ps(a[0], a[1]), t1 = _mm256_hadd_ps(a[2], a[3]);
  __m256 t2 = _mm256_hadd_ps(a[4], a[5]), t3 = _mm256_hadd_ps(a[6], a[7]);
  t0 = _mm256_hadd_ps(t0, t1);
  t2 = _mm256_hadd_ps(t2, t3);
  return _mm256_add_ps(_mm256_permute2f128_ps(t0, t2, 0x20), _mm256_permute2f128_ps(t0, t2, 0x31));
}

TQ_AVX2_INLINE float load_scale(const uint8_t* row, int scale_off) {
  if (scale_off < 0) return 1.0f;
  float f;
  std::memcpy(&f, row + scale_off, 4);
  return f;
}

template <class Dec, int NV>
TQ_AVX2 void dot_kernel(const RowSpan& rs, int64_t count, const float* q, int64_t q_ld, float* out,
                        int64_t out_ld, int scale_off, float mult, bool accumulate) {
  const Dec dec(rs.table);
  const int ng = rs.n / 8;
  alignas(32) float sums[8];
  for (int64_t r = 0; r < count; ++r) {
    const uint8_t* p = rs.base + r * rs.stride + rs.code_off;
    __m256 acc[8];
    for (int v = 0; v < 8; ++v) acc[v] = _mm256_setzero_ps();
    for (int g = 0; g < ng; ++g) {
      const __m256 cv = dec(p, g);
      for (int v = 0; v < NV; ++v) acc[v] = _mm256_fmadd_ps(_mm256_loadu_ps(q + v * q_ld + 8 * g), cv, acc[v]);
    }
    _mm256_store_ps(sums, hsum8(acc));
    for (int i = 8 * ng; i < rs.n; ++i) {
      const float c = scalar_at(rs, p, i);
      for (int v = 0; v < NV; ++v) sums[v] += q[v * q_ld + i] * c;
    }
    const float f = mult * load_scale(rs.base + r * rs.stride, scale_off);
    if (accumulate) {
      for (int v = 0; v < NV; ++v) out[v * out_ld + r] += f * sums[v];
    } else {
      for (int v = 0; v < NV; ++v) out[v * out_ld + r] = f * sums[v];
    }
  }
}

// Register-blocked accumulation: CG groups of 8 coordinates x NV vectors stay in registers while
// a block of rows (kept small enough for L1) streams through.
template <class Dec, int NV, int CG>
TQ_AVX2 void acc_kernel(const RowSpan& rs, int64_t count, const float* w, int64_t w_ld, float* acc,
                        int64_t acc_ld, int scale_off) {
  const Dec dec(rs.table);
  const int ng = rs.n / 8;
  const int64_t rblock = 128;
  for (int64_t r0 = 0; r0 < count; r0 += rblock) {
    const int64_t r1 = r0 + rblock < count ? r0 + rblock : count;
    for (int g0 = 0; g0 + CG <= ng; g0 += CG) {
      __m256 a[NV][CG];
      for (int v = 0; v < NV; ++v)
        for (int c = 0; c < CG; ++c) a[v][c] = _mm256_loadu_ps(acc + v * acc_ld + 8 * (g0 + c));
      for (int64_t r = r0; r < r1; ++r) {
        const uint8_t* p = rs.base + r * rs.stride + rs.code_off;
        const __m256 f = _mm256_set1_ps(load_scale(rs.base + r * rs.stride, scale_off));
        __m256 wv[NV];
        for (int v = 0; v < NV; ++v) wv[v] = _mm256_mul_ps(_mm256_broadcast_ss(w + v * w_ld + r), f);
        for (int c = 0; c < CG; ++c) {
          const __m256 cv = dec(p, g0 + c);
          for (int v = 0; v < NV; ++v) a[v][c] = _mm256_fmadd_ps(wv[v], cv, a[v][c]);
        }
      }
      for (int v = 0; v < NV; ++v)
        for (int c = 0; c < CG; ++c) _mm256_storeu_ps(acc + v * acc_ld + 8 * (g0 + c), a[v][c]);
    }
    for (int i = 8 * ng; i < rs.n; ++i) {  // tail coordinates
      for (int64_t r = r0; r < r1; ++r) {
        const float c = scalar_at(rs, rs.base + r * rs.stride + rs.code_off, i) *
                        load_scale(rs.base + r * rs.stride, scale_off);
        for (int v = 0; v < NV; ++v) acc[v * acc_ld + i] += w[v * w_ld + r] * c;
      }
    }
  }
}

template <class Dec, int NV>
TQ_AVX2 void acc_pick_cg(const RowSpan& rs, int64_t count, const float* w, int64_t w_ld, float* acc,
                         int64_t acc_ld, int so) {
  const int ng = rs.n / 8;
  constexpr int kMax = NV >= 8 ? 1 : (NV >= 4 ? 2 : (NV >= 2 ? 4 : 8));
  if (kMax >= 8 && ng % 8 == 0) return acc_kernel<Dec, NV, (kMax >= 8 ? 8 : 1)>(rs, count, w, w_ld, acc, acc_ld, so);
  if (kMax >= 4 && ng % 4 == 0) return acc_kernel<Dec, NV, (kMax >= 4 ? 4 : 1)>(rs, count, w, w_ld, acc, acc_ld, so);
  if (kMax >= 2 && ng % 2 == 0) return acc_kernel<Dec, NV, (kMax >= 2 ? 2 : 1)>(rs, count, w, w_ld, acc, acc_ld, so);
  return acc_kernel<Dec, NV, 1>(rs, count, w, w_ld, acc, acc_ld, so);
}

template <class Dec>
TQ_AVX2 void dot_nv(const RowSpan& rs, int64_t count, const float* q, int64_t q_ld, int nv, float* out,
                    int64_t out_ld, int so, float mult, bool accumulate) {
  switch (nv) {
    case 1: return dot_kernel<Dec, 1>(rs, count, q, q_ld, out, out_ld, so, mult, accumulate);
    case 2: return dot_kernel<Dec, 2>(rs, count, q, q_ld, out, out_ld, so, mult, accumulate);
    case 3: return dot_kernel<Dec, 3>(rs, count, q, q_ld, out, out_ld, so, mult, accumulate);
    case 4: return dot_kernel<Dec, 4>(rs, count, q, q_ld, out, out_ld, so, mult, accumulate);
    case 5: return dot_kernel<Dec, 5>(rs, count, q, q_ld, out, out_ld, so, mult, accumulate);
    case 6: return dot_kernel<Dec, 6>(rs, count, q, q_ld, out, out_ld, so, mult, accumulate);
    case 7: return dot_kernel<Dec, 7>(rs, count, q, q_ld, out, out_ld, so, mult, accumulate);
    default: return dot_kernel<Dec, 8>(rs, count, q, q_ld, out, out_ld, so, mult, accumulate);
  }
}

template <class Dec>
TQ_AVX2 void acc_nv(const RowSpan& rs, int64_t count, const float* w, int64_t w_ld, int nv, float* acc,
                    int64_t acc_ld, int so) {
  switch (nv) {
    case 1: return acc_pick_cg<Dec, 1>(rs, count, w, w_ld, acc, acc_ld, so);
    case 2: return acc_pick_cg<Dec, 2>(rs, count, w, w_ld, acc, acc_ld, so);
    case 3: return acc_pick_cg<Dec, 3>(rs, count, w, w_ld, acc, acc_ld, so);
    case 4: return acc_pick_cg<Dec, 4>(rs, count, w, w_ld, acc, acc_ld, so);
    case 5: return acc_pick_cg<Dec, 5>(rs, count, w, w_ld, acc, acc_ld, so);
    case 6: return acc_pick_cg<Dec, 6>(rs, count, w, w_ld, acc, acc_ld, so);
    case 7: return acc_pick_cg<Dec, 7>(rs, count, w, w_ld, acc, acc_ld, so);
    default: return acc_pick_cg<Dec, 8>(rs, count, w, w_ld, acc, acc_ld, so);
  }
}

}  // namespace

TQ_AVX2 void dot_rows_avx2(const RowSpan& rs, int64_t count, const float* q, int64_t q_ld, int nv, float* out,
                           int64_t out_ld, int so, float mult, bool accumulate) {
  switch (rs.bits) {
    case 1: return dot_nv<CodeDec<1>>(rs, count, q, q_ld, nv, out, out_ld, so, mult, accumulate);
    case 2: return dot_nv<CodeDec<2>>(rs, count, q, q_ld, nv, out, out_ld, so, mult, accumulate);
    case 3: return dot_nv<CodeDec<3>>(rs, count, q, q_ld, nv, out, out_ld, so, mult, accumulate);
    case 4: return dot_nv<CodeDec<4>>(rs, count, q, q_ld, nv, out, out_ld, so, mult, accumulate);
    case 5: return dot_nv<WideDec<5>>(rs, count, q, q_ld, nv, out, out_ld, so, mult, accumulate);
    case 6: return dot_nv<WideDec<6>>(rs, count, q, q_ld, nv, out, out_ld, so, mult, accumulate);
    case 8: return dot_nv<CodeDec<8>>(rs, count, q, q_ld, nv, out, out_ld, so, mult, accumulate);
    case 16: return dot_nv<F16Dec>(rs, count, q, q_ld, nv, out, out_ld, so, mult, accumulate);
    default: return dot_nv<F32Dec>(rs, count, q, q_ld, nv, out, out_ld, so, mult, accumulate);
  }
}

TQ_AVX2 void acc_rows_avx2(const RowSpan& rs, int64_t count, const float* w, int64_t w_ld, int nv, float* acc,
                           int64_t acc_ld, int so) {
  switch (rs.bits) {
    case 1: return acc_nv<CodeDec<1>>(rs, count, w, w_ld, nv, acc, acc_ld, so);
    case 2: return acc_nv<CodeDec<2>>(rs, count, w, w_ld, nv, acc, acc_ld, so);
    case 3: return acc_nv<CodeDec<3>>(rs, count, w, w_ld, nv, acc, acc_ld, so);
    case 4: return acc_nv<CodeDec<4>>(rs, count, w, w_ld, nv, acc, acc_ld, so);
    case 5: return acc_nv<WideDec<5>>(rs, count, w, w_ld, nv, acc, acc_ld, so);
    case 6: return acc_nv<WideDec<6>>(rs, count, w, w_ld, nv, acc, acc_ld, so);
    case 8: return acc_nv<CodeDec<8>>(rs, count, w, w_ld, nv, acc, acc_ld, so);
    case 16: return acc_nv<F16Dec>(rs, count, w, w_ld, nv, acc, acc_ld, so);
    default: return acc_nv<F32Dec>(rs, count, w, w_ld, nv, acc, acc_ld, so);
  }
}

// exp by range reduction to [-ln2/2, ln2/2] and a degree-6 polynomial (Cephes expf): ~1 ulp.
// Inputs below -88.37 (and -inf) give 0; inputs are <= 0 in softmax use.
TQ_AVX2_INLINE __m256 exp256(__m256 v) {
  const __m256 hi = _mm256_set1_ps(88.3762626647949f), lo = _mm256_set1_ps(-88.3762626647949f);
  const __m256 under = _mm256_cmp_ps(v, lo, _CMP_LT_OQ);
  v = _mm256_max_ps(_mm256_min_ps(v, hi), lo);
  const __m256 fx = _mm256_floor_ps(_mm256_fmadd_ps(v, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)));
  v = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), v);
  v = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), v);
  const __m256 z = _mm256_mul_ps(v, v);
  __m256 y = _mm256_fmadd_ps(_mm256_set1_ps(1.9875691500E-4f), v, _mm256_set1_ps(1.3981999507E-3f));
  y = _mm256_fmadd_ps(y, v, _mm256_set1_ps(8.3334519073E-3f));
  y = _mm256_fmadd_ps(y, v, _mm256_set1_ps(4.1665795894E-2f));
  y = _mm256_fmadd_ps(y, v, _mm256_set1_ps(1.6666665459E-1f));
  y = _mm256_fmadd_ps(y, v, _mm256_set1_ps(5.0000001201E-1f));
  y = _mm256_fmadd_ps(y, z, _mm256_add_ps(v, _mm256_set1_ps(1.0f)));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(fx), _mm256_set1_epi32(127)), 23);
  return _mm256_andnot_ps(under, _mm256_mul_ps(y, _mm256_castsi256_ps(e)));
}

TQ_AVX2 float exp_shift_sum_avx2(float* x, int64_t n) {
  const float ninf = -__builtin_inff();
  __m256 mv = _mm256_set1_ps(ninf);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) mv = _mm256_max_ps(mv, _mm256_loadu_ps(x + i));
  alignas(32) float m8[8];
  _mm256_store_ps(m8, mv);
  float mx = ninf;
  for (int k = 0; k < 8; ++k) mx = m8[k] > mx ? m8[k] : mx;
  for (int64_t k = i; k < n; ++k) mx = x[k] > mx ? x[k] : mx;
  const __m256 vmx = _mm256_set1_ps(mx);
  __m256 sv = _mm256_setzero_ps();
  for (i = 0; i + 8 <= n; i += 8) {
    const __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(x + i), vmx));
    _mm256_storeu_ps(x + i, e);
    sv = _mm256_add_ps(sv, e);
  }
  _mm256_store_ps(m8, sv);
  float sum = 0.0f;
  for (int k = 0; k < 8; ++k) sum += m8[k];
  for (; i < n; ++i) sum += (x[i] = __builtin_expf(x[i] - mx));
  return sum;
}

}  // namespace tq::cpu::detail
#else  // not x86: never called (use_avx2() is false), defined so the library links
#include "cpu/rowkern.h"
namespace tq::cpu::detail {
void dot_rows_avx2(const RowSpan&, int64_t, const float*, int64_t, int, float*, int64_t, int, float, bool) {}
void acc_rows_avx2(const RowSpan&, int64_t, const float*, int64_t, int, float*, int64_t, int) {}
float exp_shift_sum_avx2(float*, int64_t) { return 0.0f; }
}  // namespace tq::cpu::detail
#endif
