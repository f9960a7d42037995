#include "ort/codec_args.h"

namespace tq::ort {

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

int bits_of(const Input& cb, int64_t bits_attr, const char* attr_name) {
  cb.require(cb.present, "a float32 codebook [2^bits]");
  cb.require_type(kF32);
  cb.require(cb.rank() == 1, "rank 1 [2^bits]");
  const int64_t K = cb.dim(0);
  int bits = 0;
  while ((int64_t(1) << bits) < K) ++bits;
  if (bits_attr >= 0) {
    if (!valid_bits_attr(bits_attr))
      fail(std::string("attribute ") + attr_name + "=" + std::to_string(bits_attr) + ": expected one of 1, 2, 3, 4, 8");
    cb.require(K == (int64_t(1) << bits_attr),
               "length 2^" + std::string(attr_name) + " = " + std::to_string(int64_t(1) << bits_attr));
  }
  cb.require((int64_t(1) << bits) == K && valid_bits(bits), "length 2^bits with bits in {1, 2, 3, 4, 8}");
  const float* c = cb.ptr<float>();
  for (int64_t k = 0; k + 1 < K; ++k)
    cb.require(c[k] <= c[k + 1], "ascending centroids (entry " + std::to_string(k) + " > entry " + std::to_string(k + 1) + ")");
  for (int64_t k = 0; k < K; ++k) cb.require(is_finite_bits(c[k]), "finite centroids");
  return bits;
}

cpu::Codec make_codec(const Input& rotation, const Input& codebook, const Input& qjl, int64_t bits_attr,
                      const char* bits_attr_name, bool use_qjl) {
  cpu::Codec c;
  const int d = head_dim_of(rotation);
  const int bits = bits_of(codebook, bits_attr, bits_attr_name);
  int m = 0;
  if (use_qjl) {
    qjl.require(qjl.present, "a float32 [m, " + std::to_string(d) + "] QJL matrix (use_qjl=1)");
    qjl.require_type(kF32);
    qjl.require(qjl.rank() == 2 && qjl.dim(1) == d && qjl.dim(0) >= 1, "[m, " + std::to_string(d) + "], m >= 1");
    m = int(qjl.dim(0));
  }
  c.rot = Rotation{rotation.ptr<float>(), d, rotation.rank() == 2};
  c.codebook = codebook.ptr<float>();
  c.lay = make_layout(d, bits, use_qjl, m);
  c.qjl = use_qjl ? qjl.ptr<float>() : nullptr;
  return c;
}

}  // namespace tq::ort
