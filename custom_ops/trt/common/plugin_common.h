// Shared by the TurboQuant TensorRT plugins: reporting (logger from setLoggerFinder, the execution
// context's error recorder), plugin-field parsing with messages that name the field, field
// serialization, dtype codes and a few shape helpers.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

#include "trt/common/trt_compat.h"

namespace tq::trt {

// ---------------------------------------------------------------------------------- reporting
// The ILoggerFinder TensorRT passed to setLoggerFinder (nullptr: messages go to stderr).
void set_logger_finder(nvinfer1::ILoggerFinder* finder);
void log(nvinfer1::ILogger::Severity sev, const std::string& msg);
// An error: logged at kERROR, and reported to `recorder` when there is one (the execution context's,
// from attachToContext). Prefixed with "tq-ort TensorRT plugin: " so users can grep for it.
void report_error(nvinfer1::IErrorRecorder* recorder, const std::string& msg);

// enqueue calls so far in this process (every plugin; tests check that a CPU engine build runs none).
void count_enqueue();
int64_t enqueue_count();

// Thrown inside the plugins, caught at every TensorRT entry point (see guard()).
struct PluginError {
  std::string msg;
};
[[noreturn]] void fail(const std::string& msg);
inline void require(bool ok, const std::string& msg) {
  if (!ok) fail(msg);
}

// Runs f; on PluginError or any exception reports it (with `where`) and returns `on_error`.
template <typename R, typename F>
R guard(nvinfer1::IErrorRecorder* recorder, const std::string& where, R on_error, F&& f) noexcept {
  try {
    return f();
  } catch (const PluginError& e) {
    report_error(recorder, where + ": " + e.msg);
  } catch (const std::exception& e) {
    report_error(recorder, where + ": " + e.what());
  } catch (...) {
    report_error(recorder, where + ": unknown error");
  }
  return on_error;
}

// ----------------------------------------------------------------------------------- fields
// One int or float field of a plugin: its name, default, and whether it is required.
struct FieldSpec {
  const char* name;
  bool is_float;
  double def;
  bool required;
};

// The values of a plugin's fields, parsed from a PluginFieldCollection (from the ONNX parser: ONNX
// INT attributes arrive as kINT32, FLOAT as kFLOAT32; kINT64, kINT16, kINT8, kFLOAT64, kFLOAT16 are
// accepted too). Unknown fields are ignored (the parser passes only getFieldNames() ones anyway);
// a missing required field, a field of another type, or of length != 1 fails naming the field.
class FieldValues {
 public:
  FieldValues(const char* plugin, std::initializer_list<FieldSpec> specs, const nvinfer1::PluginFieldCollection* fc,
              std::initializer_list<const char*> int_lists = {});
  int64_t i(const char* name) const;
  double f(const char* name) const;
  bool given(const char* name) const;
  // An int-list field (may be absent: empty).
  const std::vector<int64_t>& ints(const char* name) const;

 private:
  struct Value {
    std::string name;
    double v = 0;
    bool given = false;
    std::vector<int64_t> list;
  };
  const Value& find(const char* name) const;
  std::vector<Value> values_;
};

// The PluginFieldCollection a plugin serializes (getFieldsToSerialize): owns its storage.
class FieldWriter {
 public:
  void add_i32(const char* name, int64_t v);
  void add_f32(const char* name, double v);
  void add_i32s(const char* name, const std::vector<int64_t>& v);
  const nvinfer1::PluginFieldCollection* collection();

 private:
  struct Item {
    const char* name;
    bool is_float;
    std::vector<int32_t> i;
    float f;
  };
  std::vector<Item> items_;
  std::vector<nvinfer1::PluginField> fields_;
  nvinfer1::PluginFieldCollection fc_{};
};

// The getFieldNames() collection of a creator: every spec (int fields as kINT32, floats as kFLOAT32)
// plus the listed int-list fields.
class FieldNames {
 public:
  FieldNames(std::initializer_list<FieldSpec> specs, std::initializer_list<const char*> int_lists = {});
  const nvinfer1::PluginFieldCollection* collection() const { return &fc_; }

 private:
  std::vector<nvinfer1::PluginField> fields_;
  nvinfer1::PluginFieldCollection fc_{};
};

// ------------------------------------------------------------------------------ types, shapes
// ONNX dtype code (1 float32, 10 float16, 16 bfloat16) of a TensorRT type; 0 for the others.
int onnx_dtype(nvinfer1::DataType t);
// TensorRT type of an ONNX dtype code (1, 10, 16); fails naming `what` for other codes.
nvinfer1::DataType trt_dtype(int64_t code, const std::string& what);
const char* type_name(nvinfer1::DataType t);
bool is_float_act(nvinfer1::DataType t);  // float32, float16, bfloat16

std::string dims_str(const nvinfer1::Dims& d);
int64_t volume(const nvinfer1::Dims& d);
// A dimension's value when TensorRT knows it at build time, else -1.
int64_t const_dim(const nvinfer1::IDimensionExpr* e);
std::string str(int64_t v);

}  // namespace tq::trt
