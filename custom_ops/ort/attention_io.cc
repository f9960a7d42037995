#include "ort/attention_io.h"

#include <string>

namespace tq::ort::attn {

void read_inputs(Ort::KernelContext& ctx, Input (&in)[kNumIn]) {
  for (size_t i = 0; i < kNumIn; ++i) {
    in[i] = get_input(ctx, i, kInNames[i]);
    // a present-but-empty optional tensor counts as absent (exporters write "" or an empty initializer)
    if (i >= kValueCb && in[i].present && in[i].numel() == 0) in[i].present = false;
  }
}

std::vector<int64_t> check_rings(const Input (&in)[kNumIn], int64_t B, int64_t hkv, int64_t R, int64_t d, ElemType T,
                                 bool keys_only) {
  std::vector<int64_t> shape{B, hkv, R, d};
  if (R <= 0) return shape;
  const std::string expected =
      shape_str(shape) + " = [B, kv_num_heads, recent_window, d] (recent_window=" + std::to_string(R) + ")";
  for (size_t i : {size_t(kPastKeyRecent), size_t(kPastValueRecent)}) {
    if (i == kPastValueRecent && keys_only) continue;  // ignored: values are exact in the rows
    const Input& r = in[i];
    r.require(r.present, std::string("a ") + type_name(T) + " " + expected + " ring buffer");
    r.require(r.type == T, std::string("dtype ") + type_name(T) + " (the query's)");
    r.require(r.shape == shape, expected);
  }
  return shape;
}

Rings ring_io(Ort::KernelContext& ctx, const Input (&in)[kNumIn], std::vector<int64_t> shape, int64_t R, ElemType T,
              bool keys_only) {
  Rings r;
  void* out[2] = {nullptr, nullptr};
  for (size_t i : {size_t(kPresentKeyRecent), size_t(kPresentValueRecent)})
    if (ctx.GetOutputCount() > i)
      if (auto o = ctx.GetOutput(i, shape)) out[i - kPresentKeyRecent] = o.GetTensorMutableRawData();
  r.shape = std::move(shape);
  if (R <= 0) return r;
  r.past_k = in[kPastKeyRecent].data;
  const Input& pvr = in[kPastValueRecent];
  r.past_v = !keys_only || (pvr.present && pvr.type == T && pvr.shape == r.shape) ? pvr.data : nullptr;
  r.present_k = out[0];
  r.present_v = out[1];
  return r;
}

}  // namespace tq::ort::attn
