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

void check_output_sizes(Ort::KernelContext& ctx, const OutputDims& s, int64_t memory_limit) {
  auto str = [](int64_t v) { return std::to_string(v); };
  const std::string cap = "max(P=" + str(s.P) + ", total_sequence_length=" + str(s.total) + ")";
  OutputSizes sz(memory_limit);
  // the output as rows of d: the CUDA kernels run one warp per (token, head)
  sz.add("output", s.T, {s.B, s.S, s.hq * s.d}, s.d,
         "[B, S, num_heads*d] (num_heads=" + str(s.hq) + ", d=" + str(s.d) + ")");
  sz.add("present_key", kU8, {s.B, s.hkv, s.Pp, s.Rk}, 0, "[B, kv_num_heads, " + cap + ", row_bytes]");
  sz.add("present_value", s.keys_only ? s.T : kU8, {s.B, s.hkv, s.Pp, s.Rv}, 0,
         "[B, kv_num_heads, " + cap + (s.keys_only ? ", d] (value_bits=0)" : ", row_bytes]"));
  const std::vector<int64_t> ring{s.B, s.hkv, s.R > 0 ? s.R : 0, s.d};
  for (size_t o : {size_t(kPresentKeyRecent), size_t(kPresentValueRecent)})
    if (ctx.GetOutputCount() > o)
      sz.add(o == kPresentKeyRecent ? "present_key_recent" : "present_value_recent", s.T, ring, 0,
             "[B, kv_num_heads, recent_window, d]");
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
      if (auto o = get_output(ctx, i, i == kPresentKeyRecent ? "present_key_recent" : "present_value_recent", shape))
        out[i - kPresentKeyRecent] = o.GetTensorMutableRawData();
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
