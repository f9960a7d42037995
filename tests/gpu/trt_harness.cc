// A TensorRT stand-in that drives the TurboQuant plugins of libtq_trt_plugins.so the way TensorRT
// does, without TensorRT (TensorRT-RTX engines do not run on Hopper, docs/tensorrt.md): getCreators,
// createPlugin from fields, getOutputDataTypes, getOutputShapes (a constant-folding IExprBuilder),
// supportsFormatCombination, configurePlugin, getWorkspaceSize, getFieldsToSerialize -> createPlugin
// (runtime phase), attachToContext (an error recorder and a cudaMallocAsync GPU allocator),
// onShapeChange and enqueue. A plain C ABI for ctypes (tests/gpu/trt_harness.py). Dims are passed as
// nb + 8 extents per tensor. Everything up to enqueue runs without a GPU.
#include <NvInfer.h>
#include <cuda_runtime_api.h>
#include <dlfcn.h>

#include <cstdio>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

using namespace nvinfer1;

#define H_EXPORT extern "C" __attribute__((visibility("default")))

namespace {

std::string g_msgs;  // everything the plugins logged or reported since h_clear()
std::mutex g_mu;
void note(const std::string& s) {
  std::lock_guard<std::mutex> l(g_mu);
  g_msgs += s + "\n";
}

struct Logger : ILogger {
  void log(Severity sev, const char* msg) noexcept override {
    if (sev <= Severity::kWARNING) note(std::string(sev <= Severity::kERROR ? "[E] " : "[W] ") + msg);
  }
} g_logger;
struct Finder : ILoggerFinder {
  ILogger* findLogger() override { return &g_logger; }
} g_finder;

struct Recorder : IErrorRecorder {
  std::vector<std::string> errs;
  int32_t getNbErrors() const noexcept override { return int32_t(errs.size()); }
  ErrorCode getErrorCode(int32_t) const noexcept override { return ErrorCode::kINVALID_ARGUMENT; }
  ErrorDesc getErrorDesc(int32_t i) const noexcept override { return errs[i].c_str(); }
  bool hasOverflowed() const noexcept override { return false; }
  void clear() noexcept override { errs.clear(); }
  bool reportError(ErrorCode, ErrorDesc d) noexcept override {
    errs.emplace_back(d);
    note(std::string("[recorder] ") + d);
    return true;
  }
  RefCount incRefCount() noexcept override { return 1; }
  RefCount decRefCount() noexcept override { return 0; }
} g_recorder;

struct Allocator : IGpuAllocator {
  int64_t allocations = 0;
  void* allocate(uint64_t size, uint64_t, AllocatorFlags) noexcept override {
    void* p = nullptr;
    return cudaMalloc(&p, size) == cudaSuccess ? (++allocations, p) : nullptr;
  }
  bool deallocate(void* p) noexcept override { return cudaFree(p) == cudaSuccess; }
  void* allocateAsync(uint64_t size, uint64_t, AllocatorFlags, cudaStream_t s) noexcept override {
    void* p = nullptr;
    return cudaMallocAsync(&p, size, s) == cudaSuccess ? (++allocations, p) : nullptr;
  }
  bool deallocateAsync(void* p, cudaStream_t s) noexcept override { return cudaFreeAsync(p, s) == cudaSuccess; }
} g_alloc;

struct Context : IPluginResourceContext {
  IGpuAllocator* getGpuAllocator() const noexcept override { return &g_alloc; }
  IErrorRecorder* getErrorRecorder() const noexcept override { return &g_recorder; }
} g_context;

// ------------------------------------------------------------- constant-folding expressions
struct ConstImpl : apiv::VDimensionExpr {
  int64_t v;
  explicit ConstImpl(int64_t x) : v(x) {}
  bool isConstant() const override { return true; }
  int64_t getConstantValue() const override { return v; }
  bool isSizeTensor() const override { return false; }
};
struct ConstExpr : IDimensionExpr {
  explicit ConstExpr(ConstImpl* i) { mImpl = i; }
};
struct Builder;
struct BuilderImpl : apiv::VExprBuilder {
  Builder* b;
  IDimensionExpr const* constant(int64_t value) override;
  IDimensionExpr const* operation(DimensionOperation op, IDimensionExpr const& x, IDimensionExpr const& y) override;
  IDimensionExpr const* declareSizeTensor(int32_t, IDimensionExpr const&, IDimensionExpr const&) override {
    return nullptr;
  }
};
struct Builder : IExprBuilder {
  BuilderImpl impl;
  std::vector<std::unique_ptr<ConstImpl>> impls;
  std::vector<std::unique_ptr<ConstExpr>> exprs;
  Builder() {
    impl.b = this;
    mImpl = &impl;
  }
  const IDimensionExpr* make(int64_t v) {
    impls.push_back(std::make_unique<ConstImpl>(v));
    exprs.push_back(std::make_unique<ConstExpr>(impls.back().get()));
    return exprs.back().get();
  }
};
IDimensionExpr const* BuilderImpl::constant(int64_t value) { return b->make(value); }
IDimensionExpr const* BuilderImpl::operation(DimensionOperation op, IDimensionExpr const& x, IDimensionExpr const& y) {
  const int64_t a = x.getConstantValue(), c = y.getConstantValue();
  int64_t r = 0;
  switch (op) {
    case DimensionOperation::kSUM: r = a + c; break;
    case DimensionOperation::kPROD: r = a * c; break;
    case DimensionOperation::kMAX: r = a > c ? a : c; break;
    case DimensionOperation::kMIN: r = a < c ? a : c; break;
    case DimensionOperation::kSUB: r = a - c; break;
    case DimensionOperation::kEQUAL: r = a == c; break;
    case DimensionOperation::kLESS: r = a < c; break;
    case DimensionOperation::kFLOOR_DIV: r = c ? (a / c - ((a % c != 0) && ((a < 0) != (c < 0)))) : 0; break;
    case DimensionOperation::kCEIL_DIV: r = c ? (a + c - 1) / c : 0; break;
  }
  return b->make(r);
}

// ------------------------------------------------------------------------- plugin handles
void* g_lib = nullptr;
std::vector<IPluginCreatorV3One*> g_creators;

struct Handle {
  IPluginV3* plugin;
  IPluginCreatorV3One* creator;
  std::string name;
  IPluginV3OneBuild* build() {
    return static_cast<IPluginV3OneBuildV2*>(plugin->getCapabilityInterface(PluginCapabilityType::kBUILD));
  }
  IPluginV3OneRuntime* runtime() {
    return static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
  }
  IPluginV3OneCore* core() { return static_cast<IPluginV3OneCore*>(plugin->getCapabilityInterface(PluginCapabilityType::kCORE)); }
};

Dims dims_of(int nb, const int64_t* d) {
  Dims x{};
  x.nbDims = nb;
  for (int i = 0; i < nb && i < 8; ++i) x.d[i] = d[i];
  return x;
}

std::vector<DynamicPluginTensorDesc> dyn(int n, const int* types, const int* nb, const int64_t* dims) {
  std::vector<DynamicPluginTensorDesc> v(n);
  for (int i = 0; i < n; ++i) {
    v[i].desc.dims = dims_of(nb[i], dims + 8 * i);
    v[i].desc.type = DataType(types[i]);
    v[i].desc.format = TensorFormat::kLINEAR;
    v[i].desc.scale = -1.f;
    v[i].min = v[i].opt = v[i].max = v[i].desc.dims;
  }
  return v;
}

std::vector<PluginTensorDesc> desc(int n, const int* types, const int* nb, const int64_t* dims) {
  std::vector<PluginTensorDesc> v(n);
  for (int i = 0; i < n; ++i) {
    v[i].dims = dims_of(nb[i], dims + 8 * i);
    v[i].type = DataType(types[i]);
    v[i].format = TensorFormat::kLINEAR;
    v[i].scale = -1.f;
  }
  return v;
}

}  // namespace

// Loads the plugin library, hands it our logger finder, reads its creators. 0 on success.
H_EXPORT int h_init(const char* plugin_lib) {
  if (g_lib) return 0;
  g_lib = dlopen(plugin_lib, RTLD_NOW | RTLD_LOCAL);
  if (!g_lib) {
    note(std::string("dlopen failed: ") + dlerror());
    return -1;
  }
  using SetFinder = void (*)(ILoggerFinder*);
  using GetCreators = IPluginCreatorInterface* const* (*)(int32_t&);
  auto set_finder = reinterpret_cast<SetFinder>(dlsym(g_lib, "setLoggerFinder"));
  auto get_creators = reinterpret_cast<GetCreators>(dlsym(g_lib, "getCreators"));
  if (!set_finder || !get_creators) {
    note("plugin library lacks setLoggerFinder or getCreators");
    return -2;
  }
  set_finder(&g_finder);
  int32_t n = 0;
  IPluginCreatorInterface* const* cs = get_creators(n);
  for (int32_t i = 0; i < n; ++i) {
    if (std::strcmp(cs[i]->getInterfaceInfo().kind, "PLUGIN CREATOR_V3ONE") != 0) continue;
    g_creators.push_back(static_cast<IPluginCreatorV3One*>(cs[i]));
  }
  return 0;
}

H_EXPORT const char* h_messages() {
  static std::string copy;
  std::lock_guard<std::mutex> l(g_mu);
  copy = g_msgs;
  return copy.c_str();
}
H_EXPORT void h_clear() {
  std::lock_guard<std::mutex> l(g_mu);
  g_msgs.clear();
  g_recorder.clear();
}
H_EXPORT int64_t h_allocations() { return g_alloc.allocations; }

// Creates plugin `name` from fields: kinds 0 = int32 scalar, 1 = float32 scalar, 2 = int32 list
// (count values from vals); nullptr (with messages) when the creator refuses.
H_EXPORT void* h_create(const char* name, int nf, const char** fnames, const int* kinds, const int* counts,
                        const double* vals, int runtime_phase) {
  IPluginCreatorV3One* cr = nullptr;
  for (auto* c : g_creators)
    if (std::strcmp(c->getPluginName(), name) == 0) cr = c;
  if (!cr) {
    note(std::string("no creator named ") + name);
    return nullptr;
  }
  std::vector<std::vector<int32_t>> ints(nf);
  std::vector<float> floats(nf);
  std::vector<PluginField> fields;
  int k = 0;
  for (int i = 0; i < nf; ++i) {
    if (kinds[i] == 1) {
      floats[i] = float(vals[k++]);
      fields.emplace_back(fnames[i], &floats[i], PluginFieldType::kFLOAT32, 1);
    } else {
      for (int j = 0; j < counts[i]; ++j) ints[i].push_back(int32_t(vals[k++]));
      fields.emplace_back(fnames[i], ints[i].data(), PluginFieldType::kINT32, int32_t(ints[i].size()));
    }
  }
  PluginFieldCollection fc{int32_t(fields.size()), fields.data()};
  IPluginV3* p = cr->createPlugin((std::string(name) + "_h").c_str(), &fc,
                                  runtime_phase ? TensorRTPhase::kRUNTIME : TensorRTPhase::kBUILD);
  return p ? new Handle{p, cr, name} : nullptr;
}

H_EXPORT void h_destroy(void* h) {
  auto* x = static_cast<Handle*>(h);
  if (!x) return;
  delete x->plugin;
  delete x;
}

// "name/version/namespace" of the plugin itself (IPluginV3OneCore).
H_EXPORT const char* h_identity(void* h) {
  static std::string s;
  auto* c = static_cast<Handle*>(h)->core();
  s = std::string(c->getPluginName()) + "/" + c->getPluginVersion() + "/" + c->getPluginNamespace();
  return s.c_str();
}

// getAliasedInput of output o (IPluginV3OneBuildV2): the input it is written in place of, or -1.
H_EXPORT int h_aliased_input(void* h, int o) {
  return static_cast<IPluginV3OneBuildV2*>(static_cast<Handle*>(h)->build())->getAliasedInput(o);
}

H_EXPORT int h_nb_outputs(void* h) { return static_cast<Handle*>(h)->build()->getNbOutputs(); }

H_EXPORT int h_output_types(void* h, int nin, const int* in_types, int nout, int* out_types) {
  std::vector<DataType> in(nin), out(nout);
  for (int i = 0; i < nin; ++i) in[i] = DataType(in_types[i]);
  int rc = static_cast<Handle*>(h)->build()->getOutputDataTypes(out.data(), nout, in.data(), nin);
  for (int i = 0; i < nout; ++i) out_types[i] = int(out[i]);
  return rc;
}

// Output shapes with every extent known (nshape shape inputs, one value each).
H_EXPORT int h_output_shapes(void* h, int nin, const int* in_nb, const int64_t* in_dims, int nshape,
                             const int64_t* shape_vals, int nout, int* out_nb, int64_t* out_dims) {
  Builder eb;
  std::vector<DimsExprs> in(nin), sh(nshape), out(nout);
  for (int i = 0; i < nin; ++i) {
    in[i].nbDims = in_nb[i];
    for (int j = 0; j < in_nb[i]; ++j) in[i].d[j] = eb.make(in_dims[8 * i + j]);
  }
  for (int i = 0; i < nshape; ++i) {
    sh[i].nbDims = 1;
    sh[i].d[0] = eb.make(shape_vals[i]);
  }
  int rc = static_cast<Handle*>(h)->build()->getOutputShapes(in.data(), nin, sh.data(), nshape, out.data(), nout, eb);
  if (rc != 0) return rc;
  for (int i = 0; i < nout; ++i) {
    out_nb[i] = out[i].nbDims;
    for (int j = 0; j < out[i].nbDims; ++j) out_dims[8 * i + j] = out[i].d[j] ? out[i].d[j]->getConstantValue() : -9;
  }
  return 0;
}

// supportsFormatCombination for every position in turn (TensorRT's order); 1 when all are accepted,
// 0 and the first refused position in *bad otherwise. Then configurePlugin and getWorkspaceSize.
H_EXPORT int h_configure(void* h, int nin, const int* in_types, const int* in_nb, const int64_t* in_dims, int nout,
                         const int* out_types, const int* out_nb, const int64_t* out_dims, int* bad, uint64_t* ws) {
  auto in = dyn(nin, in_types, in_nb, in_dims), out = dyn(nout, out_types, out_nb, out_dims);
  std::vector<DynamicPluginTensorDesc> io(in);
  io.insert(io.end(), out.begin(), out.end());
  auto* b = static_cast<Handle*>(h)->build();
  for (int pos = 0; pos < nin + nout; ++pos)
    if (!b->supportsFormatCombination(pos, io.data(), nin, nout)) {
      *bad = pos;
      return 0;
    }
  *bad = -1;
  if (b->configurePlugin(in.data(), nin, out.data(), nout) != 0) return -1;
  *ws = b->getWorkspaceSize(in.data(), nin, out.data(), nout);
  return 1;
}

// Serialize (getFieldsToSerialize) and re-create through the creator in the runtime phase, then
// attachToContext (our recorder and allocator): the plugin an execution context would run.
H_EXPORT void* h_runtime_copy(void* h) {
  auto* x = static_cast<Handle*>(h);
  const PluginFieldCollection* fc = x->runtime()->getFieldsToSerialize();
  if (!fc) {
    note("getFieldsToSerialize returned null");
    return nullptr;
  }
  IPluginV3* p = x->creator->createPlugin((x->name + "_rt").c_str(), fc, TensorRTPhase::kRUNTIME);
  if (!p) return nullptr;
  auto* rt = static_cast<IPluginV3OneRuntime*>(p->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
  IPluginV3* attached = rt->attachToContext(&g_context);
  delete p;
  return attached ? new Handle{attached, x->creator, x->name} : nullptr;
}

// The serialized fields as "name:type:len=v0,v1;..." (to compare two plugins' fields).
H_EXPORT const char* h_fields(void* h) {
  static std::string s;
  s.clear();
  const PluginFieldCollection* fc = static_cast<Handle*>(h)->runtime()->getFieldsToSerialize();
  for (int i = 0; fc && i < fc->nbFields; ++i) {
    const PluginField& f = fc->fields[i];
    s += std::string(f.name) + ":" + std::to_string(int(f.type)) + ":" + std::to_string(f.length) + "=";
    for (int j = 0; j < f.length; ++j) {
      if (f.type == PluginFieldType::kFLOAT32) s += std::to_string(static_cast<const float*>(f.data)[j]);
      else s += std::to_string(static_cast<const int32_t*>(f.data)[j]);
      s += j + 1 < f.length ? "," : "";
    }
    s += ";";
  }
  return s.c_str();
}

H_EXPORT void* h_clone(void* h) {
  auto* x = static_cast<Handle*>(h);
  IPluginV3* c = x->plugin->clone();
  return c ? new Handle{c, x->creator, x->name} : nullptr;
}

// onShapeChange then enqueue on `stream` (a cudaStream_t), device pointers from the caller.
H_EXPORT int h_enqueue(void* h, int nin, const int* in_types, const int* in_nb, const int64_t* in_dims, int nout,
                       const int* out_types, const int* out_nb, const int64_t* out_dims, void** ins, void** outs,
                       void* ws, void* stream) {
  auto in = desc(nin, in_types, in_nb, in_dims), out = desc(nout, out_types, out_nb, out_dims);
  auto* r = static_cast<Handle*>(h)->runtime();
  if (r->onShapeChange(in.data(), nin, out.data(), nout) != 0) return -1;
  return r->enqueue(in.data(), out.data(), ins, outs, ws, static_cast<cudaStream_t>(stream));
}
