#include "trt/decode/decode_plugin.h"

#include "cuda/tq_cuda_api.h"

namespace tq::trt {
namespace {
using nvinfer1::DataType;
const char* const kIn[] = {"rows", "rotation", "codebook", "qjl_matrix"};
constexpr FieldSpec kUseQjl{"use_qjl", false, 0, false};
constexpr FieldSpec kOutDtype{"output_dtype", false, 1, false};

template <typename D>
std::vector<Shape> shapes(const D* in, int n) {
  return codec_shapes(kIn, in, n);
}
}  // namespace

const FieldNames& DecodePlugin::field_names() {
  static const FieldNames names({kUseQjl, kOutDtype, kRowsDtypeSpec});
  return names;
}

DecodePlugin* DecodePlugin::create(const char* layer, const nvinfer1::PluginFieldCollection* fc) {
  FieldValues f(kName, {kUseQjl, kOutDtype, kRowsDtypeSpec}, fc);
  const int64_t q = f.i("use_qjl"), od = f.i("output_dtype");
  require(q == 0 || q == 1, "field 'use_qjl'=" + str(q) + ": expected 0 or 1");
  trt_dtype(od, "field 'output_dtype'");  // validates
  return new DecodePlugin(layer, int(q), int(od), rows_view(f.i("rows_dtype")));
}

void DecodePlugin::write_fields(FieldWriter& w) const {
  w.add_i32("use_qjl", use_qjl_);
  w.add_i32("output_dtype", od_);
  w.add_i32("rows_dtype", rows_.code);
}

DecodePlugin::Dims3 DecodePlugin::check(const Shape* in, int nbInputs) const {
  require(nbInputs == 3 || nbInputs == 4,
          "expected 3 or 4 inputs (rows, rotation, codebook [, qjl_matrix]), got " + str(nbInputs));
  const int d = rotation_dim(in[1]);
  const int bits = codebook_bits(in[2]);
  const int m = qjl_rows(in[3], d, use_qjl_ != 0);
  const int rb = tq_cuda_row_bytes(d, bits, use_qjl_, m);
  in[0].require(in[0].rank() >= 1 && in[0].is(-1, rb / rows_.unit()),
                rows_.name() + " [..., " + str(rb / rows_.unit()) + "] (row_bytes " + str(rb) + " for d=" + str(d) + ", bits=" + str(bits) +
                    ", use_qjl=" + str(use_qjl_) + ")");
  return {d, bits, m, rb};
}

int32_t DecodePlugin::getOutputDataTypes(DataType* out, int32_t nbOutputs, const DataType* in,
                                         int32_t nbInputs) const noexcept {
  return guard(recorder_, where("getOutputDataTypes"), -1, [&] {
    require(nbOutputs == 1, "expected 1 output (x_hat), got " + str(nbOutputs));
    require(nbInputs >= 1 && in[0] == rows_.type(), std::string("rows: got dtype ") +
                                                        (nbInputs ? type_name(in[0]) : "none") + ", expected " +
                                                        rows_.name() + " (field rows_dtype=" + str(rows_.code) + ")");
    for (int i = 1; i < nbInputs; ++i)
      require(in[i] == DataType::kFLOAT,
              std::string(kIn[i < 4 ? i : 3]) + ": got dtype " + type_name(in[i]) + ", expected float32");
    out[0] = trt_dtype(od_, "field 'output_dtype'");
    return 0;
  });
}

int32_t DecodePlugin::getOutputShapes(const nvinfer1::DimsExprs* in, int32_t nbInputs, const nvinfer1::DimsExprs*,
                                      int32_t nbShapeInputs, nvinfer1::DimsExprs* out, int32_t nbOutputs,
                                      nvinfer1::IExprBuilder& eb) noexcept {
  return guard(recorder_, where("getOutputShapes"), -1, [&] {
    require(nbShapeInputs == 0, "expected no shape inputs, got " + str(nbShapeInputs));
    require(nbOutputs == 1, "expected 1 output, got " + str(nbOutputs));
    const auto s = shapes(in, nbInputs);
    const Dims3 k = check(s.data(), nbInputs);
    out[0] = in[0];
    out[0].d[in[0].nbDims - 1] = eb.constant(k.d);
    return 0;
  });
}

bool DecodePlugin::supportsFormatCombination(int32_t pos, const nvinfer1::DynamicPluginTensorDesc* io, int32_t nbInputs,
                                             int32_t) noexcept {
  const auto& t = io[pos].desc;
  if (t.format != nvinfer1::TensorFormat::kLINEAR) return false;
  if (pos == 0) return t.type == rows_.type();
  if (pos < nbInputs) return t.type == DataType::kFLOAT;
  return onnx_dtype(t.type) == od_;
}

void DecodePlugin::check_dims(const nvinfer1::Dims* in, int nbInputs) const {
  check(shapes(in, nbInputs).data(), nbInputs);
}

int32_t DecodePlugin::enqueue(const nvinfer1::PluginTensorDesc* inDesc, const nvinfer1::PluginTensorDesc*,
                              const void* const* inputs, void* const* outputs, void*, cudaStream_t stream) noexcept {
  count_enqueue();
  return guard(recorder_, where("enqueue"), -1, [&] {
    const int nb = nb_in_;
    const Dims3 k = check(shapes(dims_of(inDesc, nb).data(), nb).data(), nb);
    const int64_t n = volume(inDesc[0].dims) * rows_.unit() / k.row_bytes;
    if (n == 0) return 0;
    const int rc = tq_cuda_decode(static_cast<const uint8_t*>(inputs[0]), n, k.d, static_cast<const float*>(inputs[1]),
                                  inDesc[1].dims.nbDims, static_cast<const float*>(inputs[2]), k.bits, use_qjl_, k.m,
                                  outputs[0], od_, stream);
    require(rc == 0, std::string("CUDA kernel failed: ") + tq_cuda_last_error());
    return 0;
  });
}

}  // namespace tq::trt
