// TurboQuantEncode as a TensorRT IPluginV3 (docs/ops.md 2; fields and formats: README.md here).
#pragma once

#include "trt/common/plugin_base.h"
#include "trt/common/shapes.h"

namespace tq::trt {

class EncodePlugin : public PluginBase<EncodePlugin> {
 public:
  static constexpr const char* kName = "TurboQuantEncode";
  static const FieldNames& field_names();
  static EncodePlugin* create(const char* layer, const nvinfer1::PluginFieldCollection* fc);
  void write_fields(FieldWriter& w) const;
  void check_dims(const nvinfer1::Dims* in, int nbInputs) const;

  EncodePlugin(std::string layer, int bits, int use_qjl, RowsView rows)
      : PluginBase(std::move(layer)), bits_(bits), use_qjl_(use_qjl), rows_(rows) {}

  // IPluginV3OneBuild
  int32_t getNbOutputs() const noexcept override { return 1; }
  int32_t getOutputDataTypes(nvinfer1::DataType* out, int32_t nbOutputs, const nvinfer1::DataType* in,
                             int32_t nbInputs) const noexcept override;
  int32_t getOutputShapes(const nvinfer1::DimsExprs* in, int32_t nbInputs, const nvinfer1::DimsExprs* shapeInputs,
                          int32_t nbShapeInputs, nvinfer1::DimsExprs* out, int32_t nbOutputs,
                          nvinfer1::IExprBuilder& eb) noexcept override;
  bool supportsFormatCombination(int32_t pos, const nvinfer1::DynamicPluginTensorDesc* inOut, int32_t nbInputs,
                                 int32_t nbOutputs) noexcept override;
  // IPluginV3OneRuntime
  int32_t enqueue(const nvinfer1::PluginTensorDesc* inDesc, const nvinfer1::PluginTensorDesc* outDesc,
                  const void* const* inputs, void* const* outputs, void* workspace,
                  cudaStream_t stream) noexcept override;

 private:
  struct Dims3 {
    int d, bits, m, row_bytes;
  };
  // Checks the inputs against docs/ops.md 2 (unknown extents pass) and returns d, bits, m, row_bytes.
  Dims3 check(const Shape* in, int nbInputs) const;
  int bits_, use_qjl_;
  RowsView rows_;
};

}  // namespace tq::trt
