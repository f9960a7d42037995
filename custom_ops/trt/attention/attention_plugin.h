// TurboQuantAttention as a TensorRT IPluginV3 (docs/ops.md 4; fields, inputs, shapes: README.md here).
#pragma once

#include <vector>

#include "trt/common/plugin_base.h"
#include "trt/common/shapes.h"

struct TqAttnParams;

namespace tq::trt {

class AttentionPlugin : public PluginBase<AttentionPlugin> {
 public:
  static constexpr const char* kName = "TurboQuantAttention";
  static const FieldNames& field_names();
  static AttentionPlugin* create(const char* layer, const nvinfer1::PluginFieldCollection* fc);
  void write_fields(FieldWriter& w) const;
  void check_dims(const nvinfer1::Dims* in, int nbInputs) const;

  struct Attrs {
    int64_t hq = 0, hkv = 0, key_bits = -1, value_bits = -1, use_qjl = 0, do_rotary = 0, window = -1, recent = 0;
    double scale = 0, softcap = 0;
    RowsView rows;             // uint8 or int32 words (field rows_dtype)
    bool shared = false;       // field shared_buffer=1: present_* alias past_* (docs/ops.md 4, shared buffer)
    bool shape_total = false;  // total_sequence_length is a shape input (tensorrt_plugin_shape_input_indices=[6])
  };
  AttentionPlugin(std::string layer, const Attrs& a) : PluginBase(std::move(layer)), a_(a) {}

  // IPluginV3OneBuild
  int32_t getNbOutputs() const noexcept override;
  int32_t getOutputDataTypes(nvinfer1::DataType* out, int32_t nbOutputs, const nvinfer1::DataType* in,
                             int32_t nbInputs) const noexcept override;
  int32_t getOutputShapes(const nvinfer1::DimsExprs* in, int32_t nbInputs, const nvinfer1::DimsExprs* shapeInputs,
                          int32_t nbShapeInputs, nvinfer1::DimsExprs* out, int32_t nbOutputs,
                          nvinfer1::IExprBuilder& eb) noexcept override;
  bool supportsFormatCombination(int32_t pos, const nvinfer1::DynamicPluginTensorDesc* inOut, int32_t nbInputs,
                                 int32_t nbOutputs) noexcept override;
  int32_t getAliasedInput(int32_t outputIndex) noexcept override;
  size_t getWorkspaceSize(const nvinfer1::DynamicPluginTensorDesc* in, int32_t nbInputs,
                          const nvinfer1::DynamicPluginTensorDesc* out, int32_t nbOutputs) const noexcept override;
  // IPluginV3OneRuntime
  int32_t enqueue(const nvinfer1::PluginTensorDesc* inDesc, const nvinfer1::PluginTensorDesc* outDesc,
                  const void* const* inputs, void* const* outputs, void* workspace,
                  cudaStream_t stream) noexcept override;

  // The values the shape checks find (docs/ops.md 4).
  struct Geometry {
    int64_t B = -1, S = -1, P = -1, d = 0, kb = 0, vb = 0, m = 0, Rk = 0, Rv = 0, max_pos = 0, rot_rank = 0;
  };

 private:
  bool keys_only() const { return a_.value_bits == 0; }
  // TensorRT input position of op input i (docs/ops.md 4 numbering), -1 when it has none.
  int position(int op_index) const;
  // The op's 15 inputs from TensorRT's inputs (absent when not given or empty).
  template <typename D>
  std::vector<Shape> op_shapes(const D* in, int nbInputs) const;
  Geometry check(const std::vector<Shape>& in, int nbInputs) const;
  void fill(TqAttnParams& p, const Geometry& g, int64_t Pp, int dtype) const;
  Attrs a_;
  mutable size_t reserved_ = 0;  // the workspace TensorRT reserves (from getWorkspaceSize, serialized)
};

}  // namespace tq::trt
