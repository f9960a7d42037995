#include "ort/codec_args.h"

namespace tq::ort {

namespace {

void require_ascending(const Input& cb, const float* c, int64_t from, int64_t to) {
  for (int64_t k = from; k + 1 < to; ++k)
    cb.require(c[k] <= c[k + 1], "ascending centroids (entry " + std::to_string(k) + " > entry " + std::to_string(k + 1) + ")");
}

// Split widths: [2^bits + 2^(bits+1)], the bits-bit centroids then the (bits+1)-bit ones, each ascending.
int split_bits_of(const Input& cb, int64_t bits_attr, const char* attr_name) {
  const int64_t n = cb.dim(0);
  int bits = 0;
  while (bits <= 5 && (int64_t(3) << bits) != n) ++bits;
  if (bits_attr >= 0) {
    if (!valid_bits_attr(bits_attr) || bits_attr > 5)
      fail(std::string("attribute ") + attr_name + "=" + std::to_string(bits_attr) +
           ": expected one of 1, 2, 3, 4, 5 with split widths (bits + 1 <= 6)");
    cb.require(n == (int64_t(3) << bits_attr), "length 2^" + std::string(attr_name) + " + 2^(" + attr_name +
               "+1) = " + std::to_string(int64_t(3) << bits_attr) + " (split widths)");
  }
  cb.require(bits <= 5, "length 2^bits + 2^(bits+1) with bits in {1, 2, 3, 4, 5} (split widths: the bits-bit "
             "centroids, then the (bits+1)-bit ones)");
  const float* c = cb.ptr<float>();
  for (int64_t k = 0; k < n; ++k) cb.require(is_finite_bits(c[k]), "finite centroids");
  require_ascending(cb, c, 0, int64_t(1) << bits);
  require_ascending(cb, c, int64_t(1) << bits, n);
  return bits;
}

}  // namespace

int64_t hi_attr(const OrtKernelInfo* info, const char* name) {
  const int64_t hi = attr_int(info, name, 0);
  if (hi < 0 || hi > (int64_t(1) << 20))
    fail(std::string("attribute ") + name + "=" + std::to_string(hi) +
         ": expected 0 (one width) or the count of rotated coordinates at bits + 1 (a multiple of 8 below d)");
  return hi;
}

int head_dim_of(const Input& r) {
  r.require(r.present, "a float32 rotation [d] (Hadamard signs, d a power of two) or [d, d]");
  r.require_type(kF32);
  if (r.rank() == 1) {
    r.require(is_pow2(int(r.dim(0))), "[d] with d a power of two >= 2 (else a dense [d, d] rotation)");
    return int(r.dim(0));
  }
  r.require(r.rank() == 2 && r.dim(0) == r.dim(1) && r.dim(0) >= 1,
            "[d] (Hadamard signs) or a square [d, d] rotation");
  return int(r.dim(0));
}

int bits_of(const Input& cb, int64_t bits_attr, const char* attr_name, int64_t hi) {
  cb.require(cb.present, "a float32 codebook [2^bits]");
  cb.require_type(kF32);
  cb.require(cb.rank() == 1, "rank 1 [2^bits]");
  if (hi) return split_bits_of(cb, bits_attr, attr_name);
  const int64_t K = cb.dim(0);
  int bits = 0;
  while ((int64_t(1) << bits) < K) ++bits;
  if (bits_attr >= 0) {
    if (!valid_bits_attr(bits_attr))
      fail(std::string("attribute ") + attr_name + "=" + std::to_string(bits_attr) + ": expected one of 1, 2, 3, 4, 5, 6, 8");
    cb.require(K == (int64_t(1) << bits_attr),
               "length 2^" + std::string(attr_name) + " = " + std::to_string(int64_t(1) << bits_attr));
  }
  cb.require((int64_t(1) << bits) == K && valid_bits(bits), "length 2^bits with bits in {1, 2, 3, 4, 5, 6, 8}");
  const float* c = cb.ptr<float>();
  require_ascending(cb, c, 0, K);
  for (int64_t k = 0; k < K; ++k) cb.require(is_finite_bits(c[k]), "finite centroids");
  return bits;
}

cpu::Codec make_codec(const Input& rotation, const Input& codebook, const Input& qjl, int64_t bits_attr,
                      const char* bits_attr_name, bool use_qjl, int64_t hi, const char* hi_name) {
  cpu::Codec c;
  const int d = head_dim_of(rotation);
  const int bits = bits_of(codebook, bits_attr, bits_attr_name, hi);
  if (!valid_hi(d, bits, int(hi)))
    fail(std::string("attribute ") + hi_name + "=" + std::to_string(hi) + " (d=" + std::to_string(d) + ", " +
         bits_attr_name + "=" + std::to_string(bits) + "): expected 0 or a multiple of 8 in (0, d), with " +
         bits_attr_name + " + 1 <= 6");
  int m = 0;
  if (use_qjl) {
    qjl.require(qjl.present, "a float32 [m, " + std::to_string(d) + "] QJL matrix (use_qjl=1)");
    qjl.require_type(kF32);
    qjl.require(qjl.rank() == 2 && qjl.dim(1) == d && qjl.dim(0) >= 1, "[m, " + std::to_string(d) + "], m >= 1");
    m = int(qjl.dim(0));
  }
  c.rot = Rotation{rotation.ptr<float>(), d, rotation.rank() == 2};
  c.codebook = codebook.ptr<float>();
  c.lay = make_layout(d, bits, use_qjl, m, int(hi));
  c.qjl = use_qjl ? qjl.ptr<float>() : nullptr;
  return c;
}

}  // namespace tq::ort
