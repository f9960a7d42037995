#include "trt/common/shapes.h"

namespace tq::trt {

std::string Shape::str() const {
  std::string s = "[";
  for (size_t i = 0; i < d.size(); ++i) s += (i ? ", " : "") + (d[i] < 0 ? std::string("?") : tq::trt::str(d[i]));
  return s + "]";
}

void Shape::require(bool ok, const std::string& what) const {
  if (!ok) fail(name + ": got " + (present ? "shape " + str() : std::string("no tensor")) + ", expected " + what);
}

Shape shape_of(const std::string& name, const nvinfer1::DimsExprs& e) {
  Shape s{name, true, {}};
  for (int i = 0; i < e.nbDims; ++i) s.d.push_back(const_dim(e.d[i]));
  return s;
}

Shape shape_of(const std::string& name, const nvinfer1::Dims& d) {
  Shape s{name, true, {}};
  for (int i = 0; i < d.nbDims; ++i) s.d.push_back(d.d[i]);
  return s;
}

Shape absent(const std::string& name) { return Shape{name, false, {}}; }

Shape& empty_is_absent(Shape& s) {
  for (int64_t x : s.d)
    if (x == 0) {
      s.present = false;
      s.d.clear();
      break;
    }
  return s;
}

int rotation_dim(const Shape& rot) {
  const char* what = "float32 [d] with d a power of two, or [d, d], of known extents (an initializer)";
  rot.require(rot.present && (rot.rank() == 1 || rot.rank() == 2), what);
  for (int64_t x : rot.d) rot.require(x >= 0, what);
  const int64_t d = rot.dim(0);
  if (rot.rank() == 1) rot.require(d >= 2 && (d & (d - 1)) == 0, what);
  else rot.require(d >= 1 && rot.dim(1) == d, what);
  return int(d);
}

int codebook_bits(const Shape& cb) {
  const char* what = "float32 [2^bits] with bits in {1, 2, 3, 4, 5, 6, 8}, of known length (an initializer)";
  cb.require(cb.present && cb.rank() == 1 && cb.dim(0) >= 0, what);
  for (int b : {1, 2, 3, 4, 5, 6, 8})
    if (cb.dim(0) == (int64_t(1) << b)) return b;
  cb.require(false, what);
  return 0;
}

int qjl_rows(const Shape& qjl, int d, bool use_qjl) {
  if (!use_qjl) return 0;
  const std::string what = "float32 [m, " + str(d) + "] with 1 <= m <= 256, of known extents (use_qjl=1)";
  qjl.require(qjl.present && qjl.rank() == 2 && qjl.dim(0) >= 1 && qjl.dim(0) <= 256 && qjl.dim(1) == d, what);
  return int(qjl.dim(0));
}

RowsView rows_view(int64_t code) {
  require(code == 2 || code == 3 || code == 6, "field 'rows_dtype'=" + str(code) +
                                                   ": expected 2 (uint8 rows), 3 (int8) or 6 (int32 words, row_bytes / 4)");
  return RowsView{code};
}

}  // namespace tq::trt
