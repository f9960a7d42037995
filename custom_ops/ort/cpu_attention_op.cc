// TurboQuantAttention adapter (docs/ops.md section 4): validates every input, then runs the CPU
// kernel. Registered once per (T, past_value kind) so that ORT infers the output types.
#include <cmath>

#include "cpu/attention.h"
#include "ort/attention_io.h"
#include "ort/codec_args.h"
#include "ort/op_table.h"

namespace tq::ort {
namespace {

using namespace attn;  // the op's inputs, outputs and rings (ort/attention_io.h)

std::string str(int64_t v) { return std::to_string(v); }

struct AttentionKernel {
  explicit AttentionKernel(const OrtKernelInfo* info) : name_("TurboQuantAttention '" + node_name(info) + "'") {
    if (!has_attr(info, "num_heads") || !has_attr(info, "kv_num_heads"))
      fail("attributes num_heads and kv_num_heads are required");
    hq_ = attr_int(info, "num_heads", 0);
    hkv_ = attr_int(info, "kv_num_heads", 0);
    if (hq_ <= 0 || hkv_ <= 0 || hq_ % hkv_ != 0)
      fail("attributes num_heads=" + str(hq_) + ", kv_num_heads=" + str(hkv_) +
           ": expected positive with num_heads a multiple of kv_num_heads");
    check_dim_attr("num_heads", hq_);
    check_dim_attr("kv_num_heads", hkv_);
    scale_ = attr_float(info, "scale", 0.0f);
    softcap_ = attr_float(info, "softcap", 0.0f);
    if (!(softcap_ >= 0.0f) || !std::isfinite(softcap_)) fail("attribute softcap: expected >= 0");
    key_bits_ = attr_int(info, "key_bits", -1);
    value_bits_ = attr_int(info, "value_bits", -1);
    use_qjl_ = attr_int(info, "use_qjl", 0);
    key_hi_ = hi_attr(info, "key_hi_channels");
    value_hi_ = hi_attr(info, "value_hi_channels");
    do_rotary_ = attr_int(info, "do_rotary", 0);
    window_ = attr_int(info, "local_window_size", -1);
    recent_ = attr_int(info, "recent_window", 0);
    if (recent_ < 0) fail("attribute recent_window=" + str(recent_) + ": expected >= 0 (0 = off)");
    check_dim_attr("recent_window", recent_);
    if (use_qjl_ != 0 && use_qjl_ != 1) fail("attribute use_qjl=" + str(use_qjl_) + ": expected 0 or 1");
    if (do_rotary_ != 0 && do_rotary_ != 1) fail("attribute do_rotary=" + str(do_rotary_) + ": expected 0 or 1");
    if (key_bits_ != -1 && !valid_bits_attr(key_bits_))
      fail("attribute key_bits=" + str(key_bits_) + ": expected one of 1, 2, 3, 4, 5, 6, 8");
    if (value_bits_ != -1 && value_bits_ != 0 && !valid_bits_attr(value_bits_))
      fail("attribute value_bits=" + str(value_bits_) + ": expected 0 (values stay float) or one of 1, 2, 3, 4, 5, 6, 8");
  }

  OrtStatusPtr ComputeV2(OrtKernelContext* context) {
    return guard(name_, [&] {
      OrtThreads threads(context);
      Compute(context);
    });
  }

  void Compute(OrtKernelContext* context);

  std::string name_;
  int64_t hq_, hkv_, key_bits_, value_bits_, use_qjl_, do_rotary_, window_, recent_, key_hi_ = 0, value_hi_ = 0;
  float scale_, softcap_;
};

void AttentionKernel::Compute(OrtKernelContext* context) {
  Ort::KernelContext ctx(context);
  Input in[kNumIn];
  read_inputs(ctx, in);
  const Input &q = in[kQuery], &k = in[kKey], &v = in[kValue], &pk = in[kPastKey], &pv = in[kPastValue];
  const Input &sl = in[kSeqlens], &tot = in[kTotal];

  const int d = head_dim_of(in[kRotation]);
  q.require(q.type == kF32 || q.type == kF16, "dtype float32 or float16");
  const ElemType T = q.type;
  q.require(q.rank() == 3 && q.dim(2) == hq_ * d,
            "[B, S, num_heads*d] = [B, S, " + str(hq_ * d) + "] (num_heads=" + str(hq_) + ", d=" + str(d) + ")");
  const int64_t B = q.dim(0), S = q.dim(1);
  const std::string kv_shape = "[" + str(B) + ", " + str(S) + ", " + str(hkv_ * d) + "] (kv_num_heads=" + str(hkv_) + ")";
  for (const Input* x : {&k, &v}) {
    x->require(x->type == T, std::string("dtype ") + type_name(T) + " (the query's)");
    x->require(x->rank() == 3 && x->dim(0) == B && x->dim(1) == S && x->dim(2) == hkv_ * d, kv_shape);
  }

  // Codecs: keys always; values unless value_bits = 0 (or no value codebook and no value_bits).
  cpu::AttentionArgs a;
  a.kc = make_codec(in[kRotation], in[kKeyCb], in[kQjl], key_bits_, "key_bits", use_qjl_ != 0, key_hi_,
                    "key_hi_channels");
  const bool keys_only = value_bits_ == 0 || (value_bits_ == -1 && !in[kValueCb].present);
  if (!keys_only) a.vc = make_codec(in[kRotation], in[kValueCb], Input{}, value_bits_, "value_bits", false, value_hi_,
                                  "value_hi_channels");
  const int64_t Rk = a.kc.lay.row_bytes();

  pk.require_type(kU8);
  pk.require(pk.rank() == 4 && pk.dim(0) == B && pk.dim(1) == hkv_ && pk.dim(3) == Rk,
             "[B, kv_num_heads, P, row_bytes] = [" + str(B) + ", " + str(hkv_) + ", P, " + str(Rk) +
                 "] (row_bytes for d=" + str(d) + ", key_bits=" + str(a.kc.lay.bits) +
                 (key_hi_ ? ", key_hi_channels=" + str(key_hi_) : std::string()) + ", use_qjl=" + str(use_qjl_) + ")");
  const int64_t P = pk.dim(2);
  int64_t Rv;
  if (keys_only) {
    pv.require(pv.type == T, std::string("dtype ") + type_name(T) + " (value_bits=0: values stay in the query's dtype)");
    Rv = d * (T == kF16 ? 2 : 4);
    pv.require(pv.rank() == 4 && pv.dim(0) == B && pv.dim(1) == hkv_ && pv.dim(2) == P && pv.dim(3) == d,
               "[" + str(B) + ", " + str(hkv_) + ", " + str(P) + ", " + str(d) + "] (value_bits=0)");
  } else {
    pv.require_type(kU8);
    Rv = a.vc.lay.row_bytes();
    pv.require(pv.rank() == 4 && pv.dim(0) == B && pv.dim(1) == hkv_ && pv.dim(2) == P && pv.dim(3) == Rv,
               "[" + str(B) + ", " + str(hkv_) + ", " + str(P) + ", " + str(Rv) + "] (row_bytes for d=" + str(d) +
                   ", value_bits=" + str(a.vc.lay.bits) + ")");
  }
  sl.require_type(kI32);
  sl.require(sl.rank() == 1 && sl.dim(0) == B, "[" + str(B) + "] (batch size)");
  tot.require_type(kI32);
  tot.require(tot.numel() == 1 && tot.rank() <= 1, "a scalar or [1]");
  const int64_t total = *tot.ptr<int32_t>();
  tot.require(total >= 1, "a value >= 1 (got " + str(total) + ")");
  const int64_t Pp = std::max(P, total);
  // Every output's size, before anything is read beyond the shapes or allocated (ort/common.h).
  check_output_sizes(ctx, {B, S, hq_, hkv_, d, P, total, Pp, Rk, keys_only ? int64_t(d) : Rv, recent_, T, keys_only},
                     host_memory_limit());

  // Positions: every batch row must fit its cache.
  int64_t max_pos = 0;
  for (int64_t b = 0; b < B; ++b) {
    const int32_t s = sl.ptr<int32_t>()[b];
    sl.require(s >= 0 && s < Pp, "0 <= seqlens_k[b] < " + str(Pp) + " (cache capacity); seqlens_k[" + str(b) +
                                     "] = " + str(s));
    int64_t past_len, n_valid;
    cpu::positions(s, int(S), &past_len, &n_valid);
    if (past_len + S > Pp)
      fail("present_key capacity " + str(Pp) + " is too small (cache too small) for " + str(past_len) + " past + " +
           str(S) + " new tokens (batch " + str(b) + ", seqlens_k=" + str(s) + ")");
    if (past_len > P)
      sl.fail_expected("seqlens_k[" + str(b) + "] = " + str(s) + " to leave at most P = " + str(P) +
                       " cached tokens (past_key holds " + str(P) + " rows, the step needs " + str(past_len) + ")");
    max_pos = std::max(max_pos, past_len + S - 1);
  }
  if (do_rotary_) {
    for (size_t i : {size_t(kCos), size_t(kSin)}) {
      const Input& c = in[i];
      c.require(c.present, std::string("a ") + type_name(T) + " [max_pos, d/2] tensor (do_rotary=1)");
      c.require(c.type == T, std::string("dtype ") + type_name(T) + " (the query's)");
      c.require(d % 2 == 0 && c.rank() == 2 && c.dim(1) == d / 2 && c.dim(0) > max_pos,
                "[max_pos, " + str(d / 2) + "] with max_pos > " + str(max_pos) + " (the largest position)");
    }
  }
  // Recent-window rings: T [B, Hkv, R, d]; the value ring only when values are compressed.
  const int64_t R = recent_;
  std::vector<int64_t> ring_shape = check_rings(in, B, hkv_, R, d, T, keys_only);
  for (const Input* x : {&q, &k, &v}) {
    const int64_t bad = cpu::find_nonfinite(x->data, T == kF16, x->numel());
    if (bad >= 0) x->fail_expected("finite values (non-finite value at flat index " + str(bad) + ")");
  }

  auto out = get_output(ctx, kOutput, "output", q.shape);
  auto present_k = get_output(ctx, kPresentKey, "present_key", {B, hkv_, Pp, Rk});
  auto present_v = get_output(ctx, kPresentValue, "present_value", {B, hkv_, Pp, keys_only ? int64_t(d) : Rv});
  const Rings rings = ring_io(ctx, in, std::move(ring_shape), R, T, keys_only);
  a.B = int(B); a.S = int(S); a.Hq = int(hq_); a.Hkv = int(hkv_); a.d = d;
  a.P = P; a.Pp = Pp;
  a.scale = scale_ != 0.0f ? scale_ : float(1.0 / std::sqrt(double(d)));
  a.softcap = softcap_;
  a.window = window_;
  a.half = T == kF16;
  a.q = q.data; a.k = k.data; a.v = v.data;
  a.past_k = pk.ptr<uint8_t>();
  a.present_k = present_k.GetTensorMutableData<uint8_t>();
  a.past_v = pv.data;
  a.present_v = present_v.GetTensorMutableRawData();
  a.seqlens = sl.ptr<int32_t>();
  a.keys_only = keys_only;
  a.do_rotary = do_rotary_ != 0;
  a.cos = in[kCos].data; a.sin = in[kSin].data;
  a.out = out.GetTensorMutableRawData();
  a.R = R;
  a.past_kr = rings.past_k;
  a.present_kr = rings.present_k;
  a.past_vr = rings.past_v;
  a.present_vr = rings.present_v;
  cpu::attention(a);
}

// One registration per (T, past_value kind): the fixed types let ORT infer the output types.
template <ElemType T, bool kKeysOnly>
struct AttentionOp : OpBase<AttentionOp<T, kKeysOnly>, AttentionKernel> {
  const char* GetName() const { return "TurboQuantAttention"; }
  size_t GetInputTypeCount() const { return kNumIn; }
  ElemType GetInputType(size_t i) const { return input_type(i, T, kKeysOnly); }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t i) const { return input_characteristic(i); }
  size_t GetOutputTypeCount() const { return kNumOut; }
  ElemType GetOutputType(size_t i) const { return output_type(i, T, kKeysOnly); }
  OrtCustomOpInputOutputCharacteristic GetOutputCharacteristic(size_t i) const { return output_characteristic(i); }
};

}  // namespace

void add_cpu_attention_ops(std::vector<const OrtCustomOp*>& ops) {
  // Order matters: ORT infers output types from the first registration whose input types match,
  // so the uint8-values variant must precede the keys-only one (whose past_value takes any type).
  static AttentionOp<kF32, false> f32;
  static AttentionOp<kF16, false> f16;
  static AttentionOp<kF32, true> f32_keys_only;
  static AttentionOp<kF16, true> f16_keys_only;
  ops.insert(ops.end(), {&f32, &f16, &f32_keys_only, &f16_keys_only});
}

}  // namespace tq::ort
