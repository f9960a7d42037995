// The IPluginV3 plumbing the three plugins share: capabilities, identity, clone, attachToContext
// (keeps the execution context's error recorder and GPU allocator), serialization through the
// plugin's own fields, and the creator (IPluginCreatorV3One) that builds a plugin from the same fields.
//
// A plugin class P derives from PluginBase<P> and provides:
//   static constexpr const char* kName;                 the ONNX op type (docs/ops.md)
//   static const FieldNames& field_names();             what the creator advertises
//   static P* create(const char* layer, const nvinfer1::PluginFieldCollection* fc);  throws PluginError
//   void write_fields(FieldWriter& w) const;            the fields create() reads back
//   void check_dims(const nvinfer1::Dims* in, int nbInputs) const;   the op contract's shape checks
//                                                        (throws PluginError; -1 extents pass)
// and the build/runtime methods (getOutputShapes, supportsFormatCombination, enqueue, ...).
// configurePlugin (the profile's min and max) and onShapeChange (the run-time dims, remembered for
// enqueue in nb_in_) run check_dims here.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "trt/common/plugin_common.h"

namespace tq::trt {

template <class P>
class PluginBase : public nvinfer1::IPluginV3,
                   public nvinfer1::IPluginV3OneCore,
                   public nvinfer1::IPluginV3OneBuildV2,  // V2: getAliasedInput (in-place caches)
                   public nvinfer1::IPluginV3OneRuntime {
 public:
  explicit PluginBase(std::string layer) : layer_(std::move(layer)) {}
  PluginBase(const PluginBase& o) : layer_(o.layer_), nb_in_(o.nb_in_), recorder_(o.recorder_), alloc_(o.alloc_) {}
  ~PluginBase() override { release_scratch(); }

  // IPluginV3
  nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override {
    switch (type) {
      case nvinfer1::PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
      case nvinfer1::PluginCapabilityType::kBUILD: return static_cast<nvinfer1::IPluginV3OneBuildV2*>(this);
      case nvinfer1::PluginCapabilityType::kRUNTIME: return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
    }
    return nullptr;
  }
  nvinfer1::IPluginV3* clone() noexcept override {
    return guard(recorder_, where("clone"), static_cast<nvinfer1::IPluginV3*>(nullptr),
                 [&] { return static_cast<nvinfer1::IPluginV3*>(new P(static_cast<const P&>(*this))); });
  }

  // IPluginV3OneCore
  const char* getPluginName() const noexcept override { return P::kName; }
  const char* getPluginVersion() const noexcept override { return kPluginVersion; }
  const char* getPluginNamespace() const noexcept override { return kPluginNamespace; }

  // IPluginV3OneBuild
  int32_t configurePlugin(const nvinfer1::DynamicPluginTensorDesc* in, int32_t nbInputs,
                          const nvinfer1::DynamicPluginTensorDesc*, int32_t) noexcept override {
    return guard(recorder_, where("configurePlugin"), -1, [&] {
      std::vector<nvinfer1::Dims> lo, hi;
      for (int i = 0; i < nbInputs; ++i) lo.push_back(in[i].min), hi.push_back(in[i].max);
      self().check_dims(lo.data(), nbInputs);
      self().check_dims(hi.data(), nbInputs);
      return 0;
    });
  }

  // IPluginV3OneRuntime
  int32_t onShapeChange(const nvinfer1::PluginTensorDesc* in, int32_t nbInputs, const nvinfer1::PluginTensorDesc*,
                        int32_t) noexcept override {
    return guard(recorder_, where("onShapeChange"), -1, [&] {
      self().check_dims(dims_of(in, nbInputs).data(), nbInputs);
      nb_in_ = nbInputs;
      return 0;
    });
  }
  nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* ctx) noexcept override {
    nvinfer1::IPluginV3* c = clone();
    if (c && ctx) {
      auto* p = static_cast<P*>(c);
      p->recorder_ = ctx->getErrorRecorder();
      p->alloc_ = ctx->getGpuAllocator();
    }
    return c;
  }
  const nvinfer1::PluginFieldCollection* getFieldsToSerialize() noexcept override {
    return guard(recorder_, where("getFieldsToSerialize"), static_cast<const nvinfer1::PluginFieldCollection*>(nullptr),
                 [&] {
                   writer_ = FieldWriter();
                   static_cast<const P*>(this)->write_fields(writer_);
                   return writer_.collection();
                 });
  }

 protected:
  std::string where(const char* method) const {
    return std::string(P::kName) + " '" + layer_ + "' (" + method + ")";
  }
  // Device scratch beyond the workspace TensorRT reserved at build time (which is sized on the build
  // machine): grown through the execution context's GPU allocator, stream-ordered; nullptr when no
  // allocator was given or it failed (the caller then fails the launch with a message).
  void* scratch(size_t bytes, cudaStream_t stream) {
    if (bytes <= scratch_bytes_) return scratch_;
    if (!alloc_) return nullptr;
    release_scratch(stream);
    scratch_ = alloc_->allocateAsync(bytes, 256, 0, stream);
    scratch_bytes_ = scratch_ ? bytes : 0;
    scratch_stream_ = stream;
    return scratch_;
  }

  static std::vector<nvinfer1::Dims> dims_of(const nvinfer1::PluginTensorDesc* d, int n) {
    std::vector<nvinfer1::Dims> v;
    for (int i = 0; i < n; ++i) v.push_back(d[i].dims);
    return v;
  }
  const P& self() const { return static_cast<const P&>(*this); }

  std::string layer_;
  int nb_in_ = 0;  // inputs seen by onShapeChange (enqueue reads only those)
  nvinfer1::IErrorRecorder* recorder_ = nullptr;
  nvinfer1::IGpuAllocator* alloc_ = nullptr;

 private:
  void release_scratch(cudaStream_t stream = nullptr) {
    if (scratch_ && alloc_) alloc_->deallocateAsync(scratch_, stream ? stream : scratch_stream_);
    scratch_ = nullptr;
    scratch_bytes_ = 0;
  }
  FieldWriter writer_;
  void* scratch_ = nullptr;  // never copied: each clone grows its own
  size_t scratch_bytes_ = 0;
  cudaStream_t scratch_stream_ = nullptr;
};

template <class P>
class Creator : public nvinfer1::IPluginCreatorV3One {
 public:
  nvinfer1::IPluginV3* createPlugin(const char* name, const nvinfer1::PluginFieldCollection* fc,
                                    nvinfer1::TensorRTPhase) noexcept override {
    const std::string layer = name ? name : "";
    return guard(nullptr, std::string(P::kName) + " '" + layer + "' (createPlugin)",
                 static_cast<nvinfer1::IPluginV3*>(nullptr),
                 [&] { return static_cast<nvinfer1::IPluginV3*>(P::create(layer.c_str(), fc)); });
  }
  const nvinfer1::PluginFieldCollection* getFieldNames() noexcept override { return P::field_names().collection(); }
  const char* getPluginName() const noexcept override { return P::kName; }
  const char* getPluginVersion() const noexcept override { return kPluginVersion; }
  const char* getPluginNamespace() const noexcept override { return kPluginNamespace; }
};

}  // namespace tq::trt
