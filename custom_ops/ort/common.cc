#include "ort/common.h"

#include "cpu/parallel.h"

namespace tq::ort {

void fail(const std::string& msg) { throw Ort::Exception(std::string(msg), ORT_INVALID_ARGUMENT); }

const char* type_name(ElemType t) {
  switch (t) {
    case kF32: return "float32";
    case kF16: return "float16";
    case kU8: return "uint8";
    case kI32: return "int32";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64: return "int64";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE: return "float64";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16: return "bfloat16";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8: return "int8";
    default: return "unsupported type";
  }
}

std::string shape_str(const std::vector<int64_t>& s) {
  std::ostringstream o;
  o << "[";
  for (size_t i = 0; i < s.size(); ++i) o << (i ? ", " : "") << s[i];
  o << "]";
  return o.str();
}

int64_t Input::numel() const {
  int64_t n = 1;
  for (auto v : shape) n *= v;
  return n;
}

std::string Input::desc() const {
  if (!present) return std::string("'") + name + "' (absent)";
  return std::string("'") + name + "' (" + type_name(type) + " " + shape_str(shape) + ")";
}

void Input::fail_expected(const std::string& expected) const { fail("input " + desc() + ": expected " + expected); }

void Input::require_type(ElemType t) const {
  if (type != t) fail_expected(std::string("dtype ") + type_name(t));
}

Input get_input(Ort::KernelContext& ctx, size_t index, const char* name) {
  Input in;
  in.name = name;
  if (index >= ctx.GetInputCount()) return in;
  Ort::ConstValue v = ctx.GetInput(index);
  if (!v) return in;  // an omitted optional input
  auto info = v.GetTensorTypeAndShapeInfo();
  in.present = true;
  in.type = info.GetElementType();
  in.shape = info.GetShape();
  in.data = v.GetTensorRawData();
  return in;
}

int64_t attr_int(const OrtKernelInfo* info, const char* name, int64_t dflt) {
  int64_t v = 0;
  OrtStatus* st = Ort::GetApi().KernelInfoGetAttribute_int64(info, name, &v);
  if (st) {
    Ort::GetApi().ReleaseStatus(st);
    return dflt;
  }
  return v;
}

float attr_float(const OrtKernelInfo* info, const char* name, float dflt) {
  float v = 0;
  OrtStatus* st = Ort::GetApi().KernelInfoGetAttribute_float(info, name, &v);
  if (st) {
    Ort::GetApi().ReleaseStatus(st);
    return dflt;
  }
  return v;
}

bool has_attr(const OrtKernelInfo* info, const char* name) {
  int64_t v = 0;
  OrtStatus* st = Ort::GetApi().KernelInfoGetAttribute_int64(info, name, &v);
  if (!st) return true;
  Ort::GetApi().ReleaseStatus(st);
  return false;
}

std::string node_name(const OrtKernelInfo* info) {
  try {
    return Ort::ConstKernelInfo(info).GetNodeName();
  } catch (...) {
    return "";
  }
}

namespace {
void ort_runner(void* ctx, int64_t n, void (*fn)(void*, size_t), void* arg) {
  // num_batch = n: one batch per task, handed out dynamically, so a preempted thread holds up at
  // most one task (num_batch = 0 would split the tasks statically, one block per thread).
  Ort::ThrowOnError(
      Ort::GetApi().KernelContext_ParallelFor(static_cast<OrtKernelContext*>(ctx), fn, size_t(n), size_t(n), arg));
}
}  // namespace

OrtThreads::OrtThreads(OrtKernelContext* ctx) : impl_(new cpu::ScopedRunner(&ort_runner, ctx)) {}
OrtThreads::~OrtThreads() { delete static_cast<cpu::ScopedRunner*>(impl_); }

}  // namespace tq::ort
