// TurboQuantAttention for ONNX Runtime's CUDAExecutionProvider (docs/cuda.md; helpers in cuda_common.h).
#include <string>
#include <vector>

#include "cuda/tq_cuda_api.h"
#include "ort/attention_io.h"
#include "ort/cuda_common.h"
#include "ort/op_table.h"

namespace tq::ort {
namespace cuda_ep {
namespace {

// Inputs 13/14 and outputs 3/4 are the recent-window rings (docs/ops.md 4), with the CPU adapter's
// decisions: R = 0 ignores ring inputs and gives ring outputs of shape [B, Hkv, 0, d]; R > 0 needs
// past_key_recent (and past_value_recent unless value_bits = 0) of dtype T and shape [B, Hkv, R, d];
// absent ring outputs are not written; keys-only: a value ring of the ring's shape and dtype passes
// through to present_value_recent (never read), anything else gives zeros.
using namespace ort::attn;  // the op's inputs, outputs and rings (ort/attention_io.h)

struct AttentionKernel {
  explicit AttentionKernel(const OrtKernelInfo* info)
      : name_("TurboQuantAttention (CUDA) '" + ort::node_name(info) + "'") {
    hq_ = ort::attr_int(info, "num_heads", 0);
    hkv_ = ort::attr_int(info, "kv_num_heads", 0);
    if (hq_ <= 0 || hkv_ <= 0 || hq_ % hkv_)
      ort::fail("attributes num_heads=" + str(hq_) + ", kv_num_heads=" + str(hkv_) +
                ": expected positive, num_heads a multiple of kv_num_heads");
    ort::check_dim_attr("num_heads", hq_);
    ort::check_dim_attr("kv_num_heads", hkv_);
    scale_ = ort::attr_float(info, "scale", 0.0f);
    softcap_ = ort::attr_float(info, "softcap", 0.0f);
    key_bits_ = ort::attr_int(info, "key_bits", -1);
    value_bits_ = ort::attr_int(info, "value_bits", -1);
    use_qjl_ = ort::attr_int(info, "use_qjl", 0);
    reject_split_widths(info, {"key_hi_channels", "value_hi_channels"});
    do_rotary_ = ort::attr_int(info, "do_rotary", 0);
    window_ = ort::attr_int(info, "local_window_size", -1);
    recent_ = ort::attr_int(info, "recent_window", 0);
    if (!(softcap_ >= 0.0f)) ort::fail("attribute softcap: expected >= 0");
    if (recent_ < 0) ort::fail("attribute recent_window=" + str(recent_) + ": expected >= 0 (0 = off)");
    ort::check_dim_attr("recent_window", recent_);
  }
  OrtStatusPtr ComputeV2(OrtKernelContext* context) { return ort::guard(name_, [&] { Compute(context); }); }

  void Compute(OrtKernelContext* context) {
    Ort::KernelContext ctx(context);
    Input in[kNumIn];
    read_inputs(ctx, in);
    const Input &q = in[kQuery], &k = in[kKey], &v = in[kValue], &pk = in[kPastKey], &pv = in[kPastValue];
    const Input &sl = in[kSeqlens], &tot = in[kTotal];
    const int d = rotation_dim(in[kRotation]);
    const int kb = codebook_bits(in[kKeyCb]);
    if (key_bits_ >= 0 && kb != key_bits_) in[kKeyCb].fail_expected("2^key_bits entries (key_bits=" + str(key_bits_) + ")");
    const bool keys_only = value_bits_ == 0 || !in[kValueCb].present;
    const int vb = keys_only ? 0 : codebook_bits(in[kValueCb]);
    if (!keys_only && value_bits_ >= 0 && vb != value_bits_)
      in[kValueCb].fail_expected("2^value_bits entries (value_bits=" + str(value_bits_) + ")");
    const int m = qjl_rows(in[kQjl], d, use_qjl_ != 0);
    q.require(q.type == kF32 || q.type == kF16 || q.type == kBF16, "dtype float32, float16 or bfloat16");
    q.require(q.rank() == 3 && q.dim(2) == hq_ * d, [&] { return "shape [B, S, " + str(hq_) + "*" + str(d) + "]"; });
    const int64_t B = q.dim(0), S = q.dim(1);
    for (const Input* x : {&k, &v}) {
      x->require(x->type == q.type, [&] { return std::string("dtype ") + ort::type_name(q.type) + " (the query's)"; });
      x->require(x->rank() == 3 && x->dim(0) == B && x->dim(1) == S && x->dim(2) == hkv_ * d,
                 [&] { return "shape [" + str(B) + ", " + str(S) + ", " + str(hkv_ * d) + "]"; });
    }
    const int Rk = tq_cuda_row_bytes(d, kb, int(use_qjl_), m);
    pk.require_type(kU8);
    pk.require(pk.rank() == 4 && pk.dim(0) == B && pk.dim(1) == hkv_ && pk.dim(3) == Rk,
               [&] { return "uint8 [" + str(B) + ", " + str(hkv_) + ", P, " + str(Rk) + "]"; });
    const int64_t P = pk.dim(2);
    const int64_t Rv = keys_only ? d : tq_cuda_row_bytes(d, vb, 0, 0);
    if (keys_only)
      pv.require(pv.type == q.type, [&] { return std::string("dtype ") + ort::type_name(q.type) + " (value_bits=0)"; });
    else pv.require_type(kU8);
    pv.require(pv.rank() == 4 && pv.dim(0) == B && pv.dim(1) == hkv_ && pv.dim(2) == P && pv.dim(3) == Rv,
               [&] { return "[" + str(B) + ", " + str(hkv_) + ", " + str(P) + ", " + str(Rv) + "]"; });
    sl.require_type(kI32);
    sl.require(sl.rank() == 1 && sl.dim(0) == B, [&] { return "int32 [" + str(B) + "]"; });
    tot.require_type(kI32);
    tot.require(tot.numel() == 1 && tot.rank() <= 1, "a scalar or [1] (on the CPU)");
    const int64_t total = *tot.ptr<int32_t>();
    tot.require(total >= 1, "a value >= 1");
    const int64_t Pp = std::max<int64_t>(P, total);
    // Every output's size, before any is created (ort/common.h; device memory is the allocator's to refuse).
    check_output_sizes(ctx, {B, S, hq_, hkv_, d, P, total, Pp, int64_t(Rk), Rv, recent_, q.type, keys_only}, 0);
    int64_t max_pos = 0;
    if (do_rotary_) {
      for (int c : {kCos, kSin}) {
        const Input& cs = in[c];
        cs.require(cs.present && cs.type == q.type && cs.rank() == 2 && cs.dim(1) == d / 2,
                   [&] { return std::string(ort::type_name(q.type)) + " [max_pos, " + str(d / 2) + "] (do_rotary=1)"; });
      }
      max_pos = in[kCos].dim(0);
    }
    // Recent-window rings: T [B, Hkv, R, d]; the value ring only when values are compressed.
    const int64_t R = recent_;
    std::vector<int64_t> ring_shape = check_rings(in, B, hkv_, R, d, q.type, keys_only);
    auto out = ort::get_output(ctx, kOutput, "output", {B, S, hq_ * d});
    auto prk = ort::get_output(ctx, kPresentKey, "present_key", {B, hkv_, Pp, int64_t(Rk)});
    auto prv = ort::get_output(ctx, kPresentValue, "present_value", {B, hkv_, Pp, Rv});
    const Rings rings = ring_io(ctx, in, std::move(ring_shape), R, q.type, keys_only);
    TqAttnParams p{};
    p.query = q.data;
    p.key = k.data;
    p.value = v.data;
    p.past_key = pk.data;
    p.past_value = pv.data;
    p.present_key = prk.GetTensorMutableRawData();
    p.present_value = prv.GetTensorMutableRawData();
    p.seqlens_k = sl.ptr<int32_t>();
    p.rotation = in[kRotation].ptr<float>();
    p.key_codebook = in[kKeyCb].ptr<float>();
    p.value_codebook = keys_only ? nullptr : in[kValueCb].ptr<float>();
    p.qjl = use_qjl_ ? in[kQjl].ptr<float>() : nullptr;
    p.cos_cache = do_rotary_ ? in[kCos].data : nullptr;
    p.sin_cache = do_rotary_ ? in[kSin].data : nullptr;
    p.output = out.GetTensorMutableRawData();
    p.dtype = dtype_code(q.type);
    p.B = B;
    p.S = S;
    p.Hq = hq_;
    p.Hkv = hkv_;
    p.d = d;
    p.P = P;
    p.Pp = Pp;
    p.rot_rank = in[kRotation].rank();
    p.key_bits = kb;
    p.value_bits = vb;
    p.use_qjl = use_qjl_;
    p.m = m;
    p.do_rotary = do_rotary_;
    p.max_pos = max_pos;
    // <= 0: none; a window beyond 2^31-1 (the kernels' int) covers every position (Pp <= 2^31-1): none either
    p.local_window = window_ <= 0 || window_ > ort::kMaxDim ? -1 : window_;
    p.scale = scale_;
    p.softcap = softcap_;
    p.recent_window = R;
    p.past_key_recent = rings.past_k;
    p.past_value_recent = rings.past_v;
    p.present_key_recent = rings.present_k;
    p.present_value_recent = rings.present_v;
    if (B == 0 || S == 0) return;
    Scratch ws(ctx, tq_cuda_attention_workspace(&p));
    check(tq_cuda_attention(&p, ws.ptr, tq_cuda_attention_workspace(&p), ctx.GetGPUComputeStream()), name_);
  }

  std::string name_;
  int64_t hq_ = 0, hkv_ = 0, key_bits_ = -1, value_bits_ = -1, use_qjl_ = 0, do_rotary_ = 0, window_ = -1,
          recent_ = 0;
  float scale_ = 0.f, softcap_ = 0.f;
};

template <ElemType T, bool kKeysOnly>
struct AttentionOp : CudaOpBase<AttentionOp<T, kKeysOnly>, AttentionKernel> {
  const char* GetName() const { return "TurboQuantAttention"; }
  size_t GetInputTypeCount() const { return kNumIn; }
  ElemType GetInputType(size_t i) const { return input_type(i, T, kKeysOnly); }
  OrtMemType GetInputMemoryType(size_t i) const {
    return i == kTotal ? OrtMemTypeCPUInput : OrtMemTypeDefault;
  }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t i) const { return input_characteristic(i); }
  size_t GetOutputTypeCount() const { return kNumOut; }
  ElemType GetOutputType(size_t i) const { return output_type(i, T, kKeysOnly); }
  OrtCustomOpInputOutputCharacteristic GetOutputCharacteristic(size_t i) const { return output_characteristic(i); }
};

}  // namespace
}  // namespace cuda_ep

void add_cuda_attention_ops(std::vector<const OrtCustomOp*>& ops) {
  static cuda_ep::AttentionOp<kF32, false> f32;
  static cuda_ep::AttentionOp<kF16, false> f16;
  static cuda_ep::AttentionOp<cuda_ep::kBF16, false> bf16;
  static cuda_ep::AttentionOp<kF32, true> f32_ko;
  static cuda_ep::AttentionOp<kF16, true> f16_ko;
  static cuda_ep::AttentionOp<cuda_ep::kBF16, true> bf16_ko;
  ops.insert(ops.end(), {&f32, &f16, &bf16, &f32_ko, &f16_ko, &bf16_ko});
}

}  // namespace tq::ort
