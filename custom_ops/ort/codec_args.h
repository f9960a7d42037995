// Validation of the codec inputs (rotation, codebook, qjl_matrix) shared by the three ops.
#pragma once
#include "cpu/codec.h"
#include "ort/common.h"

namespace tq::ort {

// d from the rotation: [d] signs (d a power of two) or [d, d].
int head_dim_of(const Input& rotation);

// bits from the codebook length: 2^bits (bits in {1,2,3,4,5,6,8}), or with split widths (hi > 0,
// docs/ops.md 1.4.1) 2^bits + 2^(bits+1); when bits_attr >= 0 it must agree (attr_name says which
// attribute). The codebook must be float32, rank 1, and ascending (each part, when split).
int bits_of(const Input& codebook, int64_t bits_attr, const char* attr_name, int64_t hi = 0);

// A hi_channels attribute's value: 0 (one width) or a count of coordinates, checked against d later.
int64_t hi_attr(const OrtKernelInfo* info, const char* name);

// A complete codec for head_dim d; qjl_matrix is required iff use_qjl (then float32 [m, d]); hi: the
// split-width attribute (hi_name), 0 or a multiple of 8 in (0, d) with bits + 1 <= 6.
cpu::Codec make_codec(const Input& rotation, const Input& codebook, const Input& qjl, int64_t bits_attr,
                      const char* bits_attr_name, bool use_qjl, int64_t hi = 0, const char* hi_name = "hi_channels");

}  // namespace tq::ort
