#include "trt/encode/encode_plugin.h"

#include "cuda/tq_cuda_api.h"

namespace tq::trt {
namespace {
using nvinfer1::DataType;
const char* const kIn[] = {"x", "rotation", "codebook", "qjl_matrix"};
constexpr FieldSpec kBits{"bits", false, 0, true};
constexpr FieldSpec kUseQjl{"use_qjl", false, 0, false};

template <typename D>
std::vector<Shape> shapes(const D* in, int n) {
  return codec_shapes(kIn, in, n);
}
}  // namespace

const FieldNames& EncodePlugin::field_names() {
  static const FieldNames names({kBits, kUseQjl, kRowsDtypeSpec});
  return names;
}

EncodePlugin* EncodePlugin::create(const char* layer, const nvinfer1::PluginFieldCollection* fc) {
  FieldValues f(kName, {kBits, kUseQjl, kRowsDtypeSpec}, fc);
  const int64_t bits = f.i("bits"), q = f.i("use_qjl");
  require(bits == 1 || bits == 2 || bits == 3 || bits == 4 || bits == 8,
          "field 'bits'=" + str(bits) + ": expected one of 1, 2, 3, 4, 5, 6, 8");
  require(q == 0 || q == 1, "field 'use_qjl'=" + str(q) + ": expected 0 or 1");
  return new EncodePlugin(layer, int(bits), int(q), rows_view(f.i("rows_dtype")));
}

void EncodePlugin::write_fields(FieldWriter& w) const {
  w.add_i32("bits", bits_);
  w.add_i32("use_qjl", use_qjl_);
  w.add_i32("rows_dtype", rows_.code);
}

EncodePlugin::Dims3 EncodePlugin::check(const Shape* in, int nbInputs) const {
  require(nbInputs == 3 || nbInputs == 4,
          "expected 3 or 4 inputs (x, rotation, codebook [, qjl_matrix]), got " + str(nbInputs));
  const int d = rotation_dim(in[1]);
  const int bits = codebook_bits(in[2]);
  in[2].require(bits == bits_, "[" + str(int64_t(1) << bits_) + "] (2^bits with the field bits=" + str(bits_) + ")");
  const int m = qjl_rows(in[3], d, use_qjl_ != 0);
  in[0].require(in[0].rank() >= 1 && in[0].is(-1, d), "[..., " + str(d) + "] (d from rotation)");
  return {d, bits, m, tq_cuda_row_bytes(d, bits, use_qjl_, m)};
}

int32_t EncodePlugin::getOutputDataTypes(DataType* out, int32_t nbOutputs, const DataType* in,
                                         int32_t nbInputs) const noexcept {
  return guard(recorder_, where("getOutputDataTypes"), -1, [&] {
    require(nbOutputs == 1, "expected 1 output (rows), got " + str(nbOutputs));
    require(nbInputs >= 1 && is_float_act(in[0]),
            std::string("x: got dtype ") + (nbInputs ? type_name(in[0]) : "none") +
                ", expected float32, float16 or bfloat16");
    for (int i = 1; i < nbInputs; ++i)
      require(in[i] == DataType::kFLOAT,
              std::string(kIn[i < 4 ? i : 3]) + ": got dtype " + type_name(in[i]) + ", expected float32");
    out[0] = rows_.type();
    return 0;
  });
}

int32_t EncodePlugin::getOutputShapes(const nvinfer1::DimsExprs* in, int32_t nbInputs, const nvinfer1::DimsExprs*,
                                      int32_t nbShapeInputs, nvinfer1::DimsExprs* out, int32_t nbOutputs,
                                      nvinfer1::IExprBuilder& eb) noexcept {
  return guard(recorder_, where("getOutputShapes"), -1, [&] {
    require(nbShapeInputs == 0, "expected no shape inputs, got " + str(nbShapeInputs));
    require(nbOutputs == 1, "expected 1 output, got " + str(nbOutputs));
    const auto s = shapes(in, nbInputs);
    const Dims3 k = check(s.data(), nbInputs);
    out[0] = in[0];
    out[0].d[in[0].nbDims - 1] = eb.constant(k.row_bytes / rows_.unit());
    return 0;
  });
}

bool EncodePlugin::supportsFormatCombination(int32_t pos, const nvinfer1::DynamicPluginTensorDesc* io, int32_t nbInputs,
                                             int32_t) noexcept {
  const auto& t = io[pos].desc;
  if (t.format != nvinfer1::TensorFormat::kLINEAR) return false;
  if (pos == 0) return is_float_act(t.type);
  if (pos < nbInputs) return t.type == DataType::kFLOAT;
  return t.type == rows_.type();
}

void EncodePlugin::check_dims(const nvinfer1::Dims* in, int nbInputs) const {
  check(shapes(in, nbInputs).data(), nbInputs);
}

int32_t EncodePlugin::enqueue(const nvinfer1::PluginTensorDesc* inDesc, const nvinfer1::PluginTensorDesc*,
                              const void* const* inputs, void* const* outputs, void*, cudaStream_t stream) noexcept {
  count_enqueue();
  return guard(recorder_, where("enqueue"), -1, [&] {
    const int nb = nb_in_;
    const Dims3 k = check(shapes(dims_of(inDesc, nb).data(), nb).data(), nb);
    const int64_t n = volume(inDesc[0].dims) / k.d;
    if (n == 0) return 0;
    const int rc = tq_cuda_encode(inputs[0], onnx_dtype(inDesc[0].type), n, k.d, static_cast<const float*>(inputs[1]),
                                  inDesc[1].dims.nbDims, static_cast<const float*>(inputs[2]), k.bits, use_qjl_,
                                  use_qjl_ ? static_cast<const float*>(inputs[3]) : nullptr, k.m,
                                  static_cast<uint8_t*>(outputs[0]), stream);
    require(rc == 0, std::string("CUDA kernel failed: ") + tq_cuda_last_error());
    return 0;
  });
}

}  // namespace tq::trt
