#include "trt/common/plugin_common.h"

#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstring>

namespace tq::trt {

namespace {
std::atomic<nvinfer1::ILoggerFinder*> g_finder{nullptr};
constexpr const char* kPrefix = "tq-ort TensorRT plugin: ";
}  // namespace

namespace {
std::atomic<int64_t> g_enqueues{0};
}
void count_enqueue() { g_enqueues.fetch_add(1, std::memory_order_relaxed); }
int64_t enqueue_count() { return g_enqueues.load(std::memory_order_relaxed); }

void set_logger_finder(nvinfer1::ILoggerFinder* finder) { g_finder.store(finder); }

void log(nvinfer1::ILogger::Severity sev, const std::string& msg) {
  const std::string line = kPrefix + msg;
  nvinfer1::ILoggerFinder* f = g_finder.load();
  nvinfer1::ILogger* logger = f ? f->findLogger() : nullptr;
  if (logger) {
    logger->log(sev, line.c_str());
  } else if (sev <= nvinfer1::ILogger::Severity::kWARNING) {
    std::fprintf(stderr, "%s\n", line.c_str());
  }
}

void report_error(nvinfer1::IErrorRecorder* recorder, const std::string& msg) {
  log(nvinfer1::ILogger::Severity::kERROR, msg);
  if (recorder) recorder->reportError(nvinfer1::ErrorCode::kINVALID_ARGUMENT, (kPrefix + msg).c_str());
}

void fail(const std::string& msg) { throw PluginError{msg}; }

std::string str(int64_t v) { return std::to_string(v); }

// ----------------------------------------------------------------------------------- fields
namespace {
using nvinfer1::PluginFieldType;

const char* field_type_name(PluginFieldType t) {
  switch (t) {
    case PluginFieldType::kFLOAT16: return "float16";
    case PluginFieldType::kFLOAT32: return "float32";
    case PluginFieldType::kFLOAT64: return "float64";
    case PluginFieldType::kINT8: return "int8";
    case PluginFieldType::kINT16: return "int16";
    case PluginFieldType::kINT32: return "int32";
    case PluginFieldType::kINT64: return "int64";
    case PluginFieldType::kCHAR: return "char (string)";
    case PluginFieldType::kDIMS: return "dims";
    default: return "unknown";
  }
}

bool is_int_type(PluginFieldType t) {
  return t == PluginFieldType::kINT8 || t == PluginFieldType::kINT16 || t == PluginFieldType::kINT32 ||
         t == PluginFieldType::kINT64;
}

int64_t int_at(const nvinfer1::PluginField& f, int32_t k) {
  switch (f.type) {
    case PluginFieldType::kINT8: return static_cast<const int8_t*>(f.data)[k];
    case PluginFieldType::kINT16: return static_cast<const int16_t*>(f.data)[k];
    case PluginFieldType::kINT32: return static_cast<const int32_t*>(f.data)[k];
    default: return static_cast<const int64_t*>(f.data)[k];
  }
}

double float_at(const nvinfer1::PluginField& f) {
  if (f.type == PluginFieldType::kFLOAT32) return static_cast<const float*>(f.data)[0];
  if (f.type == PluginFieldType::kFLOAT64) return static_cast<const double*>(f.data)[0];
  // kFLOAT16: IEEE half -> double
  uint16_t h = static_cast<const uint16_t*>(f.data)[0];
  int e = (h >> 10) & 31, m = h & 1023;
  double v = e == 0 ? std::ldexp(m, -24) : e == 31 ? (m ? NAN : INFINITY) : std::ldexp(m + 1024, e - 25);
  return (h & 0x8000) ? -v : v;
}
}  // namespace

FieldValues::FieldValues(const char* plugin, std::initializer_list<FieldSpec> specs,
                         const nvinfer1::PluginFieldCollection* fc, std::initializer_list<const char*> int_lists) {
  const std::string who = std::string(plugin) + " field '";
  const int32_t n = fc ? fc->nbFields : 0;
  require(n == 0 || (fc && fc->fields), std::string(plugin) + ": PluginFieldCollection has nbFields=" + str(n) +
                                            " but no fields array");
  require(n >= 0, std::string(plugin) + ": PluginFieldCollection has nbFields=" + str(n) + " (expected >= 0)");
  for (const FieldSpec& s : specs) {
    Value v;
    v.name = s.name;
    v.v = s.def;
    for (int32_t k = 0; k < n; ++k) {
      const nvinfer1::PluginField& f = fc->fields[k];
      if (!f.name || std::strcmp(f.name, s.name) != 0) continue;
      require(f.length == 1 && f.data, who + s.name + "': expected one value, got length " + str(f.length));
      if (s.is_float) {
        require(f.type == PluginFieldType::kFLOAT32 || f.type == PluginFieldType::kFLOAT64 ||
                    f.type == PluginFieldType::kFLOAT16 || is_int_type(f.type),
                who + s.name + "': expected a float (kFLOAT32), got type " + field_type_name(f.type));
        v.v = is_int_type(f.type) ? double(int_at(f, 0)) : float_at(f);
        require(std::isfinite(v.v), who + s.name + "': expected a finite value");
      } else {
        require(is_int_type(f.type), who + s.name + "': expected an integer (kINT32 or kINT64), got type " +
                                         field_type_name(f.type));
        v.v = double(int_at(f, 0));
      }
      v.given = true;
    }
    require(v.given || !s.required, who + s.name + "' is required but missing");
    values_.push_back(v);
  }
  for (const char* name : int_lists) {
    Value v;
    v.name = name;
    for (int32_t k = 0; k < n; ++k) {
      const nvinfer1::PluginField& f = fc->fields[k];
      if (!f.name || std::strcmp(f.name, name) != 0) continue;
      require(is_int_type(f.type) && f.length >= 0 && (f.length == 0 || f.data),
              who + name + "': expected a list of integers (kINT32), got type " + field_type_name(f.type) +
                  ", length " + str(f.length));
      v.list.clear();
      for (int32_t j = 0; j < f.length; ++j) v.list.push_back(int_at(f, j));
      v.given = true;
    }
    values_.push_back(v);
  }
}

const FieldValues::Value& FieldValues::find(const char* name) const {
  for (const Value& v : values_)
    if (v.name == name) return v;
  fail(std::string("internal: no field spec '") + name + "'");
}

int64_t FieldValues::i(const char* name) const { return int64_t(find(name).v); }
double FieldValues::f(const char* name) const { return find(name).v; }
bool FieldValues::given(const char* name) const { return find(name).given; }
const std::vector<int64_t>& FieldValues::ints(const char* name) const { return find(name).list; }

void FieldWriter::add_i32(const char* name, int64_t v) { items_.push_back({name, false, {int32_t(v)}, 0.f}); }
void FieldWriter::add_f32(const char* name, double v) { items_.push_back({name, true, {}, float(v)}); }
void FieldWriter::add_i32s(const char* name, const std::vector<int64_t>& v) {
  Item it{name, false, {}, 0.f};
  for (int64_t x : v) it.i.push_back(int32_t(x));
  items_.push_back(std::move(it));
}
const nvinfer1::PluginFieldCollection* FieldWriter::collection() {
  fields_.clear();
  for (const Item& it : items_) {
    if (it.is_float) fields_.emplace_back(it.name, &it.f, PluginFieldType::kFLOAT32, 1);
    else fields_.emplace_back(it.name, it.i.data(), PluginFieldType::kINT32, int32_t(it.i.size()));
  }
  fc_.nbFields = int32_t(fields_.size());
  fc_.fields = fields_.data();
  return &fc_;
}

FieldNames::FieldNames(std::initializer_list<FieldSpec> specs, std::initializer_list<const char*> int_lists) {
  for (const FieldSpec& s : specs)
    fields_.emplace_back(s.name, nullptr, s.is_float ? PluginFieldType::kFLOAT32 : PluginFieldType::kINT32, 1);
  for (const char* n : int_lists) fields_.emplace_back(n, nullptr, PluginFieldType::kINT32, 0);
  fc_.nbFields = int32_t(fields_.size());
  fc_.fields = fields_.data();
}

// ------------------------------------------------------------------------------ types, shapes
using nvinfer1::DataType;

int onnx_dtype(DataType t) { return t == DataType::kFLOAT ? 1 : t == DataType::kHALF ? 10 : t == DataType::kBF16 ? 16 : 0; }

DataType trt_dtype(int64_t code, const std::string& what) {
  if (code == 1) return DataType::kFLOAT;
  if (code == 10) return DataType::kHALF;
  if (code == 16) return DataType::kBF16;
  fail(what + "=" + str(code) + ": expected 1 (float32), 10 (float16) or 16 (bfloat16)");
}

const char* type_name(DataType t) {
  switch (t) {
    case DataType::kFLOAT: return "float32";
    case DataType::kHALF: return "float16";
    case DataType::kBF16: return "bfloat16";
    case DataType::kINT8: return "int8";
    case DataType::kINT32: return "int32";
    case DataType::kINT64: return "int64";
    case DataType::kUINT8: return "uint8";
    case DataType::kBOOL: return "bool";
    default: return "other";
  }
}

bool is_float_act(DataType t) { return t == DataType::kFLOAT || t == DataType::kHALF || t == DataType::kBF16; }

std::string dims_str(const nvinfer1::Dims& d) {
  std::string s = "[";
  for (int i = 0; i < d.nbDims; ++i) s += (i ? ", " : "") + (d.d[i] < 0 ? std::string("?") : str(d.d[i]));
  return s + "]";
}

int64_t volume(const nvinfer1::Dims& d) {
  int64_t v = 1;
  for (int i = 0; i < d.nbDims; ++i) v *= d.d[i];
  return v;
}

int64_t const_dim(const nvinfer1::IDimensionExpr* e) { return e && e->isConstant() ? e->getConstantValue() : -1; }

}  // namespace tq::trt
