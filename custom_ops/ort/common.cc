#include "ort/common.h"

#include <sys/resource.h>
#include <sys/sysinfo.h>

#include <cstdlib>
#include <new>

#include "core/layout.h"
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

// The product of the dims in *n; false for a negative dim or a product beyond int64. A zero dim makes
// the product 0 even when the others would overflow (an empty tensor may declare any dims).
static bool checked_numel(const std::vector<int64_t>& shape, int64_t* n) {
  *n = 1;
  for (auto v : shape)
    if (v == 0) return *n = 0, true;
  for (auto v : shape)
    if (v < 0 || __builtin_mul_overflow(*n, v, n)) return false;
  return true;
}

int64_t Input::numel() const {
  int64_t n;
  if (!checked_numel(shape, &n)) fail_expected("dims whose product fits in int64");
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

int64_t elem_bytes(ElemType t) {
  switch (t) {
    case kF32: case kI32: return 4;
    case kF16: case ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16: return 2;
    case kU8: case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8: return 1;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64: case ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE: return 8;
    default: return 0;
  }
}

bool valid_bits_attr(int64_t bits) { return bits >= 1 && bits <= 8 && valid_bits(int(bits)); }

void check_dim_attr(const char* name, int64_t v) {
  if (v > kMaxDim)
    fail(std::string("attribute ") + name + "=" + std::to_string(v) + ": expected at most " +
         std::to_string(kMaxDim) + " (2^31-1, the limit of a size the kernels take as a 32-bit int)");
}

int64_t host_memory_limit() {
  static const int64_t lim = [] {
    int64_t m = kMaxBytes;
    struct sysinfo si;
    if (sysinfo(&si) == 0) {
      const unsigned __int128 ram = (unsigned __int128)(si.totalram + si.totalswap) * si.mem_unit;
      if (ram > 0 && ram < (unsigned __int128)m) m = int64_t(ram);
    }
    for (int which : {RLIMIT_AS, RLIMIT_DATA}) {
      struct rlimit rl;
      if (getrlimit(which, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < (rlim_t)m) m = int64_t(rl.rlim_cur);
    }
    // A lower limit by hand (a container's memory limit, a sanitizer run where no RLIMIT_AS fits).
    if (const char* e = std::getenv("TQ_ORT_MEMORY_LIMIT_MB")) {
      const long long mb = std::atoll(e);
      if (mb > 0 && mb < (m >> 20)) m = int64_t(mb) << 20;
    }
    return m;
  }();
  return lim;
}

int64_t OutputSizes::add(const char* name, ElemType t, const std::vector<int64_t>& shape, int64_t vec,
                         const std::string& origin) {
  auto bad = [&](const std::string& what) {
    fail(std::string("output '") + name + "' (" + type_name(t) + " " + shape_str(shape) + ")" +
         (origin.empty() ? std::string() : " = " + origin) + ": " + what);
  };
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] < 0) bad("dim " + std::to_string(i) + " is negative");
    if (shape[i] > kMaxDim)
      bad("dim " + std::to_string(i) + " = " + std::to_string(shape[i]) + " exceeds the limit of " +
          std::to_string(kMaxDim) + " (2^31-1: the kernels take every dim as a 32-bit int)");
  }
  const int64_t eb = elem_bytes(t);
  int64_t n;
  if (!checked_numel(shape, &n)) bad("more than 2^63-1 elements (the size overflows int64)");
  if (n == 0) return 0;  // an empty output: nothing is allocated, whatever the other dims
  int64_t bytes;
  if (__builtin_mul_overflow(n, eb, &bytes))
    bad(std::to_string(n) + " elements of " + std::to_string(eb) + " bytes: more than " + std::to_string(kMaxBytes) +
        " bytes (2^63-1: the size overflows int64)");
  const int64_t last = shape.empty() ? 1 : shape.back();
  if (vec <= 0) vec = last;
  const int64_t vectors = n / vec;
  if (vectors > kMaxVectors)
    bad(std::to_string(vectors) + " rows of " + std::to_string(vec) + " elements exceed the limit of " +
        std::to_string(kMaxVectors) + " rows (2^31-1: the kernels number rows and vectors with 32-bit ints)");
  int64_t sum;
  if (__builtin_add_overflow(total_, bytes, &sum)) bad("the outputs together take more than 2^63-1 bytes");
  if (limit_ > 0 && sum > limit_)
    bad(std::to_string(bytes) + " bytes (" + std::to_string(sum) + " for the node's outputs so far) exceed the limit of " +
        std::to_string(limit_) + " bytes (" + std::to_string(limit_ >> 20) +
        " MiB: the memory this process can hold, min(RAM + swap, RLIMIT_AS, RLIMIT_DATA, TQ_ORT_MEMORY_LIMIT_MB))");
  total_ = sum;
  return bytes;
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

Ort::UnownedValue get_output(Ort::KernelContext& ctx, size_t index, const char* name, const std::vector<int64_t>& shape) {
  try {
    return ctx.GetOutput(index, shape);
  } catch (const Ort::Exception& e) {
    throw Ort::Exception("output '" + std::string(name) + "' " + shape_str(shape) + ": could not be created (" +
                             e.what() + ")",
                         e.GetOrtErrorCode());
  } catch (const std::bad_alloc&) {
    throw Ort::Exception("output '" + std::string(name) + "' " + shape_str(shape) + ": out of memory", ORT_FAIL);
  }
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
