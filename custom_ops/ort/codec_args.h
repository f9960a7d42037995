// Validation of the codec inputs (rotation, codebook, qjl_matrix) shared by the three ops.
#pragma once
#include "cpu/codec.h"
#include "ort/common.h"

namespace tq::ort {

// d from the rotation: [d] signs (d a power of two) or [d, d].
int head_dim_of(const Input& rotation);

// bits from the codebook length (must be 2^bits, bits in {1,2,3,4,8}); when bits_attr >= 0 it must
// agree (attr_name says which attribute). The codebook must be float32, rank 1 and ascending.
int bits_of(const Input& codebook, int64_t bits_attr, const char* attr_name);

// A complete codec for head_dim d; qjl_matrix is required iff use_qjl (then float32 [m, d]).
cpu::Codec make_codec(const Input& rotation, const Input& codebook, const Input& qjl, int64_t bits_attr,
                      const char* bits_attr_name, bool use_qjl);

}  // namespace tq::ort
