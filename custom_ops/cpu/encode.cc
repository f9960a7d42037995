// TurboQuantEncode on the CPU: the AVX2 encoder when the CPU and d allow, else core/encode.h one
// vector at a time. Both produce the same codes (tests compare each against the reference).
#include <algorithm>
#include <atomic>
#include <cstring>
#include <vector>

#include "core/encode.h"
#include "core/half.h"
#include "cpu/codec.h"
#include "cpu/encode_avx2.h"
#include "cpu/parallel.h"
#include "cpu/rowkern.h"

namespace tq::cpu {
namespace {

constexpr int64_t kChunk = 256;  // vectors per task

// Portable path for vectors [begin, end).
int64_t encode_portable(const Encoder& e, const void* x, bool half, int64_t begin, int64_t end, uint8_t* rows) {
  const Codec& c = e.codec;
  const int d = c.lay.d, rb = c.lay.row_bytes();
  std::vector<float> xf(d), z(d), r(d);
  std::vector<uint8_t> codes(d);
  for (int64_t v = begin; v < end; ++v) {
    if (half) {
      const uint16_t* xh = static_cast<const uint16_t*>(x) + v * d;
      for (int i = 0; i < d; ++i) xf[i] = half_to_float(xh[i]);
    } else {
      std::memcpy(xf.data(), static_cast<const float*>(x) + v * d, sizeof(float) * d);
    }
    uint8_t* row = rows + v * rb;
    for (int i = 0; i < d; ++i) {
      if (!is_finite_bits(xf[i])) {
        std::memset(row, 0, rb);
        return v * d + i;
      }
    }
    encode_vector(c.rot, c.codebook, e.bounds.data(), c.lay, c.qjl, xf.data(),
                  EncodeScratch{z.data(), codes.data(), r.data()}, row);
  }
  return -1;
}

}  // namespace

Encoder::Encoder(const Codec& c) : codec(c) {
  const int d = c.lay.d;
  bounds.resize(c.lay.table_size());
  make_layout_boundaries(c.codebook, c.lay, bounds.data());
  avx2 = use_avx2() && d % 8 == 0 && d <= 1024;
  if (avx2 && c.rot.dense) {  // transpose once: the exact axpy order reads R column by column
    rot_t.resize(size_t(d) * d);
    for (int r = 0; r < d; ++r)
      for (int k = 0; k < d; ++k) rot_t[size_t(k) * d + r] = c.rot.data[size_t(r) * d + k];
  }
}

int64_t Encoder::encode(const void* x, bool half, int64_t begin, int64_t end, uint8_t* rows) const {
  if (!avx2) return encode_portable(*this, x, half, begin, end, rows);
  detail::EncodeJob j;
  j.lay = codec.lay;
  j.dense = codec.rot.dense;
  j.rot = codec.rot.data;
  j.rot_t = rot_t.data();
  j.isd = inv_sqrt_d(codec.rot);
  j.codebook = codec.codebook;
  j.bounds = bounds.data();
  j.qjl = codec.qjl;
  j.x = x;
  j.half = half;
  j.rows = rows;
  return detail::encode_chunk_avx2(j, begin, end);
}

int64_t encode_rows(const Codec& c, const void* x, bool half, int64_t n, uint8_t* rows) {
  const Encoder enc(c);
  std::atomic<int64_t> bad{-1};
  parallel_for((n + kChunk - 1) / kChunk, [&](int64_t t) {
    const int64_t at = enc.encode(x, half, t * kChunk, std::min(n, (t + 1) * kChunk), rows);
    if (at < 0) return;
    int64_t cur = bad.load();  // keep the smallest index so the error message is deterministic
    while ((cur < 0 || at < cur) && !bad.compare_exchange_weak(cur, at)) {}
  });
  return bad.load();
}

int64_t find_nonfinite(const void* x, bool half, int64_t n) {
  if (half) {
    const uint16_t* h = static_cast<const uint16_t*>(x);
    for (int64_t i = 0; i < n; ++i)
      if ((h[i] & 0x7c00u) == 0x7c00u) return i;
  } else {
    const float* f = static_cast<const float*>(x);
    for (int64_t i = 0; i < n; ++i)
      if (!is_finite_bits(f[i])) return i;
  }
  return -1;
}

}  // namespace tq::cpu
