// Inner loops of the attention kernel over compressed rows: AVX-512 (1-4 bit codes), AVX2/FMA/F16C
// and portable versions, picked once at run time (TQ_ORT_NO_AVX512=1 / TQ_ORT_NO_AVX2=1 turn the
// faster ones off).
#pragma once
#include <cstdint>

namespace tq::cpu {

// `count` rows at base + r * stride. Either packed codes (bits in {1,2,3,4,8}) at byte code_off,
// decoded through table[code], or plain float32 / float16 vectors at code_off (bits = 32 / 16).
struct RowSpan {
  const uint8_t* base;
  int64_t stride;
  int code_off;
  int bits;
  int n;               // coordinates per row (d, or m for QJL signs)
  const float* table;  // centroids [2^bits] (unused for plain vectors)
};

// Per-row float32 factor stored in the row itself (the scale at byte 0, QJL's rnorm), or none.
constexpr int kNoRowScale = -1;

// out[v * out_ld + r] (+)= mult * rowscale_r * sum_i q[v * q_ld + i] * row_r[i], for v < nv (nv <= 8);
// rowscale_r is the float at byte scale_off of row r (1 if kNoRowScale); += when accumulate.
void dot_rows(const RowSpan& rs, int64_t count, const float* q, int64_t q_ld, int nv, float* out,
              int64_t out_ld, int scale_off, float mult, bool accumulate);

// acc[v * acc_ld + i] += sum_r w[v * w_ld + r] * rowscale_r * row_r[i], for v < nv (nv <= 8).
void acc_rows(const RowSpan& rs, int64_t count, const float* w, int64_t w_ld, int nv, float* acc,
              int64_t acc_ld, int scale_off);

// Softmax numerator in place: x[i] = exp(x[i] - max(x)) (-inf -> 0); returns the sum.
float exp_shift_sum(float* x, int64_t n);

bool use_avx2();
bool use_avx512();  // AVX-512F as well (TQ_ORT_NO_AVX512=1 turns it off)

namespace detail {
void dot_rows_avx2(const RowSpan&, int64_t, const float*, int64_t, int, float*, int64_t, int, float, bool);
void acc_rows_avx2(const RowSpan&, int64_t, const float*, int64_t, int, float*, int64_t, int);
float exp_shift_sum_avx2(float*, int64_t);
bool avx512_handles(const RowSpan&);
void dot_rows_avx512(const RowSpan&, int64_t, const float*, int64_t, int, float*, int64_t, int, float, bool);
void acc_rows_avx512(const RowSpan&, int64_t, const float*, int64_t, int, float*, int64_t, int);
}  // namespace detail

}  // namespace tq::cpu
