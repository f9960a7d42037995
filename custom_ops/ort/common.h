// Shared helpers of the ORT adapters: input views, attribute reads, error messages that name the
// tensor, its shape and what was expected.
#pragma once
#include <onnxruntime_cxx_api.h>

#include <cstdint>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

namespace tq::ort {

using ElemType = ONNXTensorElementDataType;
constexpr ElemType kF32 = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
constexpr ElemType kF16 = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16;
constexpr ElemType kU8 = ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8;
constexpr ElemType kI32 = ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32;
constexpr ElemType kAny = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;

[[noreturn]] void fail(const std::string& msg);
const char* type_name(ElemType t);
std::string shape_str(const std::vector<int64_t>& s);

// One input of a node: the formal name (e.g. "past_key") is what error messages lead with.
struct Input {
  const char* name = "";
  bool present = false;
  ElemType type = kAny;
  std::vector<int64_t> shape;
  const void* data = nullptr;

  int64_t rank() const { return int64_t(shape.size()); }
  int64_t dim(int64_t i) const { return shape[size_t(i < 0 ? rank() + i : i)]; }
  int64_t numel() const;
  template <typename T> const T* ptr() const { return static_cast<const T*>(data); }
  std::string desc() const;  // "'name' (float32 [2, 3])"
  [[noreturn]] void fail_expected(const std::string& expected) const;
  void require(bool ok, const std::string& expected) const { if (!ok) fail_expected(expected); }
  void require(bool ok, const char* expected) const { if (!ok) fail_expected(expected); }
  // The message built only on failure (the per-step ops check every input on every call).
  template <typename F, typename = decltype(std::declval<F&>()())>
  void require(bool ok, F&& expected) const {
    if (!ok) fail_expected(expected());
  }
  void require_type(ElemType t) const;
};

Input get_input(Ort::KernelContext& ctx, size_t index, const char* name);

int64_t attr_int(const OrtKernelInfo* info, const char* name, int64_t dflt);
float attr_float(const OrtKernelInfo* info, const char* name, float dflt);
bool has_attr(const OrtKernelInfo* info, const char* name);
std::string node_name(const OrtKernelInfo* info);

// Routes the kernels' parallel loops to the session's intra-op thread pool while alive.
class OrtThreads {
 public:
  explicit OrtThreads(OrtKernelContext* ctx);
  ~OrtThreads();

 private:
  void* impl_;
};

// Turns any exception into an OrtStatus (never lets one cross the C ABI).
template <typename F>
OrtStatusPtr guard(const std::string& where, F&& f) {
  try {
    f();
    return nullptr;
  } catch (const Ort::Exception& e) {
    return Ort::GetApi().CreateStatus(e.GetOrtErrorCode(), (where + ": " + e.what()).c_str());
  } catch (const std::exception& e) {
    return Ort::GetApi().CreateStatus(ORT_FAIL, (where + ": " + e.what()).c_str());
  } catch (...) {
    return Ort::GetApi().CreateStatus(ORT_FAIL, (where + ": unknown error").c_str());
  }
}

// Base of the three ops: C++ custom-op boilerplate with status-returning kernels.
template <typename Op, typename Kernel>
struct OpBase : Ort::CustomOpBase<Op, Kernel, true> {
  OrtStatusPtr CreateKernelV2(const OrtApi&, const OrtKernelInfo* info, void** kernel) const {
    *kernel = nullptr;
    return guard(std::string(static_cast<const Op*>(this)->GetName()) + " '" + node_name(info) + "'",
                 [&] { *kernel = new Kernel(info); });
  }
};

}  // namespace tq::ort
