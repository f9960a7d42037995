#include <algorithm>
#include <vector>

#include "core/bitpack.h"
#include "core/encode.h"
#include "core/half.h"
#include "cpu/codec.h"
#include "cpu/parallel.h"

namespace tq::cpu {

// x_hat = scale * R^T c[code] (docs/ops.md 1.5); not on the exact path.
void decode_rows(const Codec& c, const uint8_t* rows, int64_t n, void* out, bool half) {
  const int d = c.lay.d, rb = c.lay.row_bytes();
  const float isd = inv_sqrt_d(c.rot);
  constexpr int64_t kChunk = 256;
  parallel_for((n + kChunk - 1) / kChunk, [&](int64_t t) {
    std::vector<float> y(d), x(d);
    const int64_t e = std::min(n, (t + 1) * kChunk);
    for (int64_t v = t * kChunk; v < e; ++v) {
      const uint8_t* row = rows + v * rb;
      const float scale = load_f32(row);
      const uint8_t* codes = row + c.lay.codes_offset();
      for (int i = 0; i < d; ++i) y[i] = scale * c.codebook[code_index(codes, c.lay, i)];
      if (!c.rot.dense) {
        fwht(y.data(), d);
        for (int i = 0; i < d; ++i) x[i] = c.rot.data[i] * y[i] * isd;
      } else {
        std::fill(x.begin(), x.end(), 0.0f);
        for (int i = 0; i < d; ++i) {  // x = R^T y, row-major R: accumulate rows
          const float* ri = c.rot.data + size_t(i) * d;
          for (int j = 0; j < d; ++j) x[j] += ri[j] * y[i];
        }
      }
      if (half) {
        uint16_t* o = static_cast<uint16_t*>(out) + v * d;
        for (int i = 0; i < d; ++i) o[i] = float_to_half(x[i]);
      } else {
        std::copy(x.begin(), x.end(), static_cast<float*>(out) + v * d);
      }
    }
  });
}

}  // namespace tq::cpu
