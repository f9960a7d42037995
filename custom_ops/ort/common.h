// Shared helpers of the ORT adapters: input views, attribute reads, error messages that name the
// tensor, its shape and what was expected.
#pragma once
#include <onnxruntime_cxx_api.h>

#include <cstdint>
#include <limits>
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

// ---- Size limits (docs/reliability.md section 2), checked before any output is created ----------
// kMaxDim: any one dimension of an output, and the attributes that become one (num_heads,
//   kv_num_heads, recent_window): the kernels take B, S, the head counts, P, the capacity
//   max(P, total_sequence_length), d and R as 32-bit ints (cpu::AttentionArgs, the CUDA kernels).
// kMaxVectors: vectors (rows) in one output, the product of all its dims but the last (per head
//   for the attention output): the CUDA kernels number vectors and warps with 32-bit ints
//   (e.g. one warp per (batch row, head)).
// kMaxBytes: bytes of one output and of all outputs of a call (int64, ORT's tensor sizes).
// A host memory limit (CPU outputs): the node's outputs together must fit in what this process
//   can ever hold, host_memory_limit(); e.g. total_sequence_length = 2^31-1 on a small cache.
constexpr int64_t kMaxDim = std::numeric_limits<int32_t>::max();
constexpr int64_t kMaxVectors = std::numeric_limits<int32_t>::max();
constexpr int64_t kMaxBytes = std::numeric_limits<int64_t>::max();

// Bytes per element of the types the ops produce (0 for others).
int64_t elem_bytes(ElemType t);

// bits in {1, 2, 3, 4, 5, 6, 8}, on the attribute's int64 value (2^32 + 4 is not 4).
bool valid_bits_attr(int64_t bits);

// Fails unless attribute `name` (a size the kernels take as an int) is <= kMaxDim.
void check_dim_attr(const char* name, int64_t v);

// The bytes this process can ever hold: min(physical RAM + swap, RLIMIT_AS, RLIMIT_DATA,
// TQ_ORT_MEMORY_LIMIT_MB if set), read once.
int64_t host_memory_limit();

// The outputs of one call, each checked (and added up) before the first GetOutput, so that a size
// that overflows or can never be allocated is an error naming the output, its shape and the limit.
class OutputSizes {
 public:
  // memory_limit: what the outputs together may take (host_memory_limit() for the CPU EP); 0 = no
  // such limit (the CUDA EP: its allocator refuses what the device cannot hold).
  explicit OutputSizes(int64_t memory_limit) : limit_(memory_limit) {}
  // Output `name` of dtype t and `shape`, made of vectors of `vec` elements (0: the last dim);
  // `origin` says where the dims come from, e.g. "[B, kv_num_heads, max(P, total_sequence_length),
  // row_bytes]". Returns its bytes.
  int64_t add(const char* name, ElemType t, const std::vector<int64_t>& shape, int64_t vec = 0,
              const std::string& origin = std::string());
  int64_t total() const { return total_; }

 private:
  int64_t limit_, total_ = 0;
};

// ctx.GetOutput(index, shape), where a failed allocation (ORT's arena, std::bad_alloc) becomes an
// error naming the output and its shape; null when the node does not produce that output.
Ort::UnownedValue get_output(Ort::KernelContext& ctx, size_t index, const char* name, const std::vector<int64_t>& shape);

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
