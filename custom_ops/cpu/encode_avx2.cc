// AVX2 encoder: the same float32 operations as core/encode.h in the same order per coordinate
// (8 coordinates per instruction; never FMA on the exact steps), so the codes are bit-identical.
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#include <cmath>
#include <cstring>

#include "cpu/encode_avx2.h"
#include "core/bitpack.h"

#define TQ_AVX2 __attribute__((target("avx2,fma,f16c")))
#define TQ_AVX2_INLINE __attribute__((target("avx2,fma,f16c"), always_inline)) inline

namespace tq::cpu::detail {
namespace {

// In-place FWHT of d floats (d a power of two >= 8), Sylvester order, stages h = 1, 2, 4, ...
TQ_AVX2_INLINE void fwht8(float* z, int d) {
  for (int i = 0; i < d; i += 8) {  // h = 1, 2, 4 inside each group of 8 lanes
    __m256 v = _mm256_loadu_ps(z + i);
    __m256 sw = _mm256_permute_ps(v, 0xB1);  // a1 a0 a3 a2 ...
    v = _mm256_blend_ps(_mm256_add_ps(v, sw), _mm256_sub_ps(sw, v), 0xAA);
    sw = _mm256_permute_ps(v, 0x4E);  // a2 a3 a0 a1 ...
    v = _mm256_blend_ps(_mm256_add_ps(v, sw), _mm256_sub_ps(sw, v), 0xCC);
    sw = _mm256_permute2f128_ps(v, v, 0x01);  // a4..a7 a0..a3
    v = _mm256_blend_ps(_mm256_add_ps(v, sw), _mm256_sub_ps(sw, v), 0xF0);
    _mm256_storeu_ps(z + i, v);
  }
  for (int h = 8; h < d; h <<= 1)
    for (int blk = 0; blk < d; blk += 2 * h)
      for (int i = blk; i < blk + h; i += 8) {
        const __m256 a = _mm256_loadu_ps(z + i), b = _mm256_loadu_ps(z + i + h);
        _mm256_storeu_ps(z + i, _mm256_add_ps(a, b));
        _mm256_storeu_ps(z + i + h, _mm256_sub_ps(a, b));
      }
}

// Centroid lookup of 8 codes (epi32) in a codebook of K entries.
struct Lut {
  __m256 t0, t1;
  const float* c;
  int K;
  TQ_AVX2_INLINE Lut(const float* cb, int k) : c(cb), K(k) {
    float lo[8] = {0, 0, 0, 0, 0, 0, 0, 0}, hi[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int i = 0; i < K && i < 8; ++i) lo[i] = cb[i];
    for (int i = 8; i < K && i < 16; ++i) hi[i - 8] = cb[i];
    t0 = _mm256_loadu_ps(lo);
    t1 = _mm256_loadu_ps(hi);
  }
  TQ_AVX2_INLINE __m256 operator()(__m256i idx) const {
    if (K > 16) return _mm256_i32gather_ps(c, idx, 4);
    const __m256 lo = _mm256_permutevar8x32_ps(t0, idx);
    if (K <= 8) return lo;
    return _mm256_blendv_ps(lo, _mm256_permutevar8x32_ps(t1, idx), _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
  }
};

TQ_AVX2_INLINE float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// codes[i] = #{k : t[i] > B[k]}, 8 lanes.
TQ_AVX2_INLINE __m256i code8(__m256 t, const float* B, int K) {
  if (K <= 16) {
    __m256i n = _mm256_setzero_si256();
    for (int k = 0; k + 1 < K; ++k)
      n = _mm256_sub_epi32(n, _mm256_castps_si256(_mm256_cmp_ps(t, _mm256_broadcast_ss(B + k), _CMP_GT_OQ)));
    return n;
  }
  // K = 256: branch-free binary search over the 255 sorted boundaries.
  __m256i pos = _mm256_setzero_si256();
  for (int step = K / 2; step >= 1; step >>= 1) {
    const __m256i cand = _mm256_add_epi32(pos, _mm256_set1_epi32(step));
    const __m256 b = _mm256_i32gather_ps(B - 1, cand, 4);  // B[cand - 1]
    pos = _mm256_blendv_epi8(pos, cand, _mm256_castps_si256(_mm256_cmp_ps(t, b, _CMP_GT_OQ)));
  }
  return pos;
}

TQ_AVX2_INLINE void store_codes8(uint8_t* dst, __m256i c) {
  const __m128i lo = _mm256_castsi256_si128(c), hi = _mm256_extracti128_si256(c, 1);
  const __m128i w = _mm_packus_epi32(lo, hi);
  _mm_storel_epi64(reinterpret_cast<__m128i*>(dst), _mm_packus_epi16(w, w));
}

TQ_AVX2_INLINE void pack(const uint8_t* codes, int d, int bits, uint8_t* out, int nbytes) {
  std::memset(out, 0, nbytes);
  if (bits == 8) {
    std::memcpy(out, codes, d);
  } else if (bits == 4) {
    for (int j = 0; j < d / 2; ++j) out[j] = uint8_t(codes[2 * j] | (codes[2 * j + 1] << 4));
  } else if (bits == 2) {
    for (int j = 0; j < d / 4; ++j)
      out[j] = uint8_t(codes[4 * j] | codes[4 * j + 1] << 2 | codes[4 * j + 2] << 4 | codes[4 * j + 3] << 6);
  } else {  // 1, 3, 5 and 6 bits: 8 codes -> `bits` bytes
    for (int g = 0; g < d / 8; ++g) {
      uint64_t w = 0;
      for (int i = 0; i < 8; ++i) w |= uint64_t(codes[8 * g + i]) << (i * bits);
      for (int b = 0; b < bits; ++b) out[g * bits + b] = uint8_t(w >> (8 * b));
    }
  }
}

}  // namespace

TQ_AVX2 int64_t encode_chunk_avx2(const EncodeJob& j, int64_t begin, int64_t end) {
  const int d = j.lay.d, K = 1 << j.lay.bits, rb = j.lay.row_bytes(), hi = j.lay.hi;
  alignas(32) float xf[1024], z[1024], r[1024];
  alignas(32) uint8_t codes[1024];
  const Lut lut(j.codebook, j.lay.table_size());  // codes index the whole codebook input
  const __m256 vinv_sqrt_d = _mm256_set1_ps(j.isd);
  for (int64_t v = begin; v < end; ++v) {
    // Load (float16 -> float32 is exact), check finiteness.
    __m256i bad = _mm256_setzero_si256();
    const __m256i expmask = _mm256_set1_epi32(0x7f800000);
    for (int i = 0; i < d; i += 8) {
      __m256 x = j.half ? _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(
                              static_cast<const uint16_t*>(j.x) + v * d + i)))
                        : _mm256_loadu_ps(static_cast<const float*>(j.x) + v * d + i);
      _mm256_store_ps(xf + i, x);
      const __m256i e = _mm256_and_si256(_mm256_castps_si256(x), expmask);
      bad = _mm256_or_si256(bad, _mm256_cmpeq_epi32(e, expmask));
    }
    uint8_t* row = j.rows + v * rb;
    if (!_mm256_testz_si256(bad, bad)) {
      std::memset(row, 0, rb);
      for (int i = 0; i < d; ++i) {
        uint32_t u;
        std::memcpy(&u, xf + i, 4);
        if ((u & 0x7f800000u) == 0x7f800000u) return v * d + i;
      }
    }
    // z = H(s*x) or R x (exact: products and sums rounded, j ascending for dense).
    if (!j.dense) {
      for (int i = 0; i < d; i += 8)
        _mm256_store_ps(z + i, _mm256_mul_ps(_mm256_loadu_ps(j.rot + i), _mm256_load_ps(xf + i)));
      fwht8(z, d);
    } else {
      for (int i = 0; i < d; i += 8) _mm256_store_ps(z + i, _mm256_setzero_ps());
      for (int c = 0; c < d; ++c) {
        const __m256 xc = _mm256_set1_ps(xf[c]);
        const float* col = j.rot_t + size_t(c) * d;
        for (int i = 0; i < d; i += 8)
          _mm256_store_ps(z + i, _mm256_add_ps(_mm256_load_ps(z + i), _mm256_mul_ps(_mm256_loadu_ps(col + i), xc)));
      }
    }
    // ss in 8 lanes: lane l accumulates i % 8 == l, folded in the fixed order.
    __m256 acc = _mm256_setzero_ps();
    for (int i = 0; i < d; i += 8) {
      const __m256 zi = _mm256_load_ps(z + i);
      acc = _mm256_add_ps(acc, _mm256_mul_ps(zi, zi));
    }
    alignas(32) float a[8];
    _mm256_store_ps(a, acc);
    const float ss = ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]));
    float scale = 0.0f;
    if (ss == 0.0f) {
      std::memset(codes, K / 2, d);
      std::memset(codes, 2 * K, hi);  // split widths: 2^bits + the (bits+1)-bit middle code
    } else {
      const __m256 inv = _mm256_set1_ps(1.0f / std::sqrt(ss));
      __m256 zc = _mm256_setzero_ps(), cc = _mm256_setzero_ps();
      for (int i = 0; i < d; i += 8) {
        const __m256 zi = _mm256_load_ps(z + i);
        const __m256i code = i < hi ? _mm256_add_epi32(code8(_mm256_mul_ps(zi, inv), j.bounds + K, 2 * K),
                                                        _mm256_set1_epi32(K))
                                    : code8(_mm256_mul_ps(zi, inv), j.bounds, K);
        store_codes8(codes + i, code);
        const __m256 c = lut(code);
        zc = _mm256_fmadd_ps(zi, c, zc);
        cc = _mm256_fmadd_ps(c, c, cc);
      }
      const float czc = hsum(zc), ccc = hsum(cc);
      scale = ccc > 0.0f ? j.isd * czc / ccc : 0.0f;
    }
    std::memcpy(row, &scale, 4);
    if (hi) {
      pack_row_codes(codes, j.lay, row + 4);
    } else {
      pack(codes, d, j.lay.bits, row + 4, j.lay.code_bytes());
    }
    if (!j.lay.qjl) continue;
    // QJL: signs of S r, r = y - scale * c[code] in the rotated domain.
    const __m256 vs = _mm256_set1_ps(scale);
    __m256 rn = _mm256_setzero_ps();
    for (int i = 0; i < d; i += 8) {
      const __m256i code = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(codes + i)));
      const __m256 ri = _mm256_fnmadd_ps(vs, lut(code), _mm256_mul_ps(_mm256_load_ps(z + i), vinv_sqrt_d));
      _mm256_store_ps(r + i, ri);
      rn = _mm256_fmadd_ps(ri, ri, rn);
    }
    const float rnorm = std::sqrt(hsum(rn));
    std::memcpy(row + j.lay.rnorm_offset(), &rnorm, 4);
    uint8_t* signs = row + j.lay.signs_offset();
    std::memset(signs, 0, j.lay.sign_bytes());
    for (int m = 0; m < j.lay.m; ++m) {
      const float* sm = j.qjl + size_t(m) * d;
      __m256 p = _mm256_setzero_ps();
      for (int i = 0; i < d; i += 8) p = _mm256_fmadd_ps(_mm256_loadu_ps(sm + i), _mm256_load_ps(r + i), p);
      if (hsum(p) >= 0.0f) signs[m >> 3] |= uint8_t(1u << (m & 7));
    }
  }
  return -1;
}

}  // namespace tq::cpu::detail
#else
#include "cpu/encode_avx2.h"
namespace tq::cpu::detail {
int64_t encode_chunk_avx2(const EncodeJob&, int64_t, int64_t) { return -1; }
}  // namespace tq::cpu::detail
#endif
