// Tensor shapes as the plugins check them: the same checks run on build-time expressions
// (getOutputShapes: unknown extents are -1 and pass), on the profile's dims (configurePlugin) and on
// the run-time dims (onShapeChange), so one message text serves all three.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "trt/common/plugin_common.h"

namespace tq::trt {

struct Shape {
  std::string name;          // the op input's name (docs/ops.md)
  bool present = false;      // false: an absent optional input (not given, or an empty tensor)
  std::vector<int64_t> d;    // -1: not known yet
  int rank() const { return int(d.size()); }
  int64_t dim(int i) const { return d[i < 0 ? d.size() + i : i]; }
  std::string str() const;   // "[2, ?, 64]"
  // Fails with "<name>: got shape <shape>, expected <what>" unless ok.
  void require(bool ok, const std::string& what) const;
  // True when the extent is unknown or equals v.
  bool is(int i, int64_t v) const { return dim(i) < 0 || dim(i) == v; }
};

Shape shape_of(const std::string& name, const nvinfer1::DimsExprs& e);
Shape shape_of(const std::string& name, const nvinfer1::Dims& d);
// An absent optional input.
Shape absent(const std::string& name);
// Marks a shape with a known zero volume absent (the way to leave out a middle optional input).
Shape& empty_is_absent(Shape& s);

// The four inputs of TurboQuantEncode/Decode (x or rows, rotation, codebook, qjl_matrix) from
// TensorRT's dims or expressions; a missing or empty qjl_matrix is absent.
template <typename D>
std::vector<Shape> codec_shapes(const char* const (&names)[4], const D* in, int n) {
  std::vector<Shape> s;
  for (int i = 0; i < 4; ++i) s.push_back(i < n ? shape_of(names[i], in[i]) : absent(names[i]));
  empty_is_absent(s[3]);
  return s;
}

// Codec inputs (docs/ops.md 1.1, 1.2, 2): head dim d from `rotation` ([d], d a power of two, or
// [d, d]; its extents must be known: an initializer); code bits from `codebook` ([2^bits]); QJL rows m
// from `qjl_matrix` ([m, d], 1 <= m <= 256, required iff use_qjl).
int rotation_dim(const Shape& rot);
int codebook_bits(const Shape& cb);
int qjl_rows(const Shape& qjl, int d, bool use_qjl);

// How the compressed rows travel (field `rows_dtype`, ONNX dtype codes): 2 = uint8 [..., row_bytes]
// (the ORT layout, the default); 3 = int8 [..., row_bytes], the same bytes typed int8; 6 = int32
// [..., row_bytes / 4], the same bytes as 32-bit words (row_bytes is always a multiple of 4, docs/ops.md
// 1.4). TensorRT(-RTX) rejects uint8 plugin inputs/outputs, so TensorRT graphs use 3 or 6.
struct RowsView {
  int64_t code = 2;
  nvinfer1::DataType type() const {
    return code == 6 ? nvinfer1::DataType::kINT32 : code == 3 ? nvinfer1::DataType::kINT8 : nvinfer1::DataType::kUINT8;
  }
  int unit() const { return code == 6 ? 4 : 1; }  // bytes per element
  std::string name() const { return code == 6 ? "int32" : code == 3 ? "int8" : "uint8"; }
};
inline constexpr FieldSpec kRowsDtypeSpec{"rows_dtype", false, 2, false};
RowsView rows_view(int64_t code);  // fails naming the field for codes other than 2 and 6

}  // namespace tq::trt
