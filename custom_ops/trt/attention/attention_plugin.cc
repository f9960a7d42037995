#include "trt/attention/attention_plugin.h"

#include <algorithm>

#include "cuda/tq_cuda_api.h"

namespace tq::trt {
namespace {
using nvinfer1::DataType;

enum In { kQuery, kKey, kValue, kPastKey, kPastValue, kSeqlens, kTotal, kRotation, kKeyCb, kValueCb, kQjl, kCos, kSin,
          kPastKeyRecent, kPastValueRecent, kNumIn };
const char* const kInNames[kNumIn] = {
    "query", "key", "value", "past_key", "past_value", "seqlens_k", "total_sequence_length", "rotation",
    "key_codebook", "value_codebook", "qjl_matrix", "cos_cache", "sin_cache", "past_key_recent", "past_value_recent"};
enum Out { kOutput, kPresentKey, kPresentValue, kPresentKeyRecent, kPresentValueRecent };
const char* const kOutNames[] = {"output", "present_key", "present_value", "present_key_recent", "present_value_recent"};

constexpr const char* kShapeIdx = "tensorrt_plugin_shape_input_indices";
constexpr FieldSpec kSpecs[] = {
    {"num_heads", false, 0, true},      {"kv_num_heads", false, 0, true}, {"scale", true, 0, false},
    {"softcap", true, 0, false},        {"key_bits", false, -1, false},   {"value_bits", false, -1, false},
    {"use_qjl", false, 0, false},       {"do_rotary", false, 0, false},   {"local_window_size", false, -1, false},
    {"recent_window", false, 0, false}, kRowsDtypeSpec, {"shared_buffer", false, 0, false}};
#define TQ_ATTN_SPECS                                                                                                  \
  {kSpecs[0], kSpecs[1], kSpecs[2], kSpecs[3], kSpecs[4], kSpecs[5], kSpecs[6], kSpecs[7], kSpecs[8], kSpecs[9], \
   kSpecs[10], kSpecs[11]}
// Written by the build-time plugin, read back by the runtime one: the workspace TensorRT reserved.
constexpr FieldSpec kWorkspace{"tq_workspace_kib", false, 0, false};

bool same(int64_t a, int64_t b) { return a < 0 || b < 0 || a == b; }
std::string bracket(std::initializer_list<std::string> parts) {
  std::string s = "[";
  bool first = true;
  for (const std::string& p : parts) s += (first ? "" : ", ") + p, first = false;
  return s + "]";
}
std::string dim_s(int64_t v, const char* sym) { return v < 0 ? std::string(sym) : str(v); }
}  // namespace

const FieldNames& AttentionPlugin::field_names() {
  static const FieldNames names(TQ_ATTN_SPECS, {kShapeIdx});
  return names;
}

AttentionPlugin* AttentionPlugin::create(const char* layer, const nvinfer1::PluginFieldCollection* fc) {
  FieldValues f(kName, TQ_ATTN_SPECS, fc, {kShapeIdx});
  FieldValues ws(kName, {kWorkspace}, fc);
  Attrs a;
  a.hq = f.i("num_heads");
  a.hkv = f.i("kv_num_heads");
  require(a.hq > 0 && a.hkv > 0 && a.hq % a.hkv == 0,
          "fields num_heads=" + str(a.hq) + ", kv_num_heads=" + str(a.hkv) +
              ": expected positive, num_heads a multiple of kv_num_heads");
  a.scale = f.f("scale");
  a.softcap = f.f("softcap");
  require(a.softcap >= 0, "field 'softcap': expected >= 0");
  a.key_bits = f.i("key_bits");
  a.value_bits = f.i("value_bits");
  auto bits_ok = [](int64_t b) { return b == 1 || b == 2 || b == 3 || b == 4 || b == 8; };
  require(a.key_bits == -1 || bits_ok(a.key_bits),
          "field 'key_bits'=" + str(a.key_bits) + ": expected one of 1, 2, 3, 4, 5, 6, 8 (or -1: from key_codebook)");
  require(a.value_bits == -1 || a.value_bits == 0 || bits_ok(a.value_bits),
          "field 'value_bits'=" + str(a.value_bits) +
              ": expected 0 (values uncompressed), one of 1, 2, 3, 4, 5, 6, 8, or -1 (from value_codebook)");
  a.use_qjl = f.i("use_qjl");
  require(a.use_qjl == 0 || a.use_qjl == 1, "field 'use_qjl'=" + str(a.use_qjl) + ": expected 0 or 1");
  a.do_rotary = f.i("do_rotary");
  require(a.do_rotary == 0 || a.do_rotary == 1, "field 'do_rotary'=" + str(a.do_rotary) + ": expected 0 or 1");
  a.window = f.i("local_window_size");
  require(a.window == -1 || a.window > 0, "field 'local_window_size'=" + str(a.window) + ": expected -1 (none) or > 0");
  a.recent = f.i("recent_window");
  require(a.recent >= 0, "field 'recent_window'=" + str(a.recent) + ": expected >= 0 (0 = off)");
  const auto& idx = f.ints(kShapeIdx);
  require(idx.empty() || (idx.size() == 1 && (idx[0] == kTotal || idx[0] == kTotal - kNumIn)),
          std::string("field '") + kShapeIdx + "': expected [] or [6] (total_sequence_length as a shape input)");
  a.shape_total = !idx.empty();
  a.rows = rows_view(f.i("rows_dtype"));
  const int64_t sh = f.i("shared_buffer");
  require(sh == 0 || sh == 1, "field 'shared_buffer'=" + str(sh) + ": expected 0 or 1");
  a.shared = sh == 1;
  auto* plugin = new AttentionPlugin(layer, a);
  plugin->reserved_ = size_t(std::max<int64_t>(0, ws.i("tq_workspace_kib"))) * 1024;
  return plugin;
}

void AttentionPlugin::write_fields(FieldWriter& w) const {
  w.add_i32("num_heads", a_.hq);
  w.add_i32("kv_num_heads", a_.hkv);
  w.add_f32("scale", a_.scale);
  w.add_f32("softcap", a_.softcap);
  w.add_i32("key_bits", a_.key_bits);
  w.add_i32("value_bits", a_.value_bits);
  w.add_i32("use_qjl", a_.use_qjl);
  w.add_i32("do_rotary", a_.do_rotary);
  w.add_i32("local_window_size", a_.window);
  w.add_i32("recent_window", a_.recent);
  w.add_i32("rows_dtype", a_.rows.code);
  w.add_i32("shared_buffer", a_.shared ? 1 : 0);
  if (a_.shape_total) w.add_i32s(kShapeIdx, {kTotal});
  w.add_i32("tq_workspace_kib", int64_t(reserved_ / 1024));
}

int32_t AttentionPlugin::getNbOutputs() const noexcept { return a_.recent == 0 ? 3 : keys_only() ? 4 : 5; }

int32_t AttentionPlugin::getAliasedInput(int32_t o) noexcept {
  if (!a_.shared) return -1;
  switch (o) {
    case kPresentKey: return position(kPastKey);
    case kPresentValue: return position(kPastValue);
    case kPresentKeyRecent: return position(kPastKeyRecent);
    case kPresentValueRecent: return keys_only() ? -1 : position(kPastValueRecent);
    default: return -1;
  }
}

int AttentionPlugin::position(int i) const {
  if (!a_.shape_total) return i;
  if (i == kTotal) return -1;
  return i > kTotal ? i - 1 : i;
}

template <typename D>
std::vector<Shape> AttentionPlugin::op_shapes(const D* in, int nbInputs) const {
  std::vector<Shape> s;
  for (int i = 0; i < kNumIn; ++i) {
    const int p = position(i);
    if (i == kTotal && p < 0) {
      s.push_back(Shape{kInNames[i], true, {}});  // the shape input: a scalar known to TensorRT
      continue;
    }
    s.push_back(p >= 0 && p < nbInputs ? shape_of(kInNames[i], in[p]) : absent(kInNames[i]));
    if (i >= kValueCb) empty_is_absent(s.back());
  }
  return s;
}

AttentionPlugin::Geometry AttentionPlugin::check(const std::vector<Shape>& in, int nbInputs) const {
  const int most = a_.shape_total ? kNumIn - 1 : kNumIn, least = a_.shape_total ? kValueCb - 1 : kValueCb;
  require(nbInputs >= least && nbInputs <= most,
          "expected " + str(least) + ".." + str(most) + " inputs (docs/ops.md 4" +
              (a_.shape_total ? ", total_sequence_length as a shape input" : "") + "), got " + str(nbInputs));
  Geometry g;
  const Shape &q = in[kQuery], &k = in[kKey], &v = in[kValue], &pk = in[kPastKey], &pv = in[kPastValue];
  g.d = rotation_dim(in[kRotation]);
  g.rot_rank = in[kRotation].rank();
  g.kb = codebook_bits(in[kKeyCb]);
  if (a_.key_bits >= 0)
    in[kKeyCb].require(g.kb == a_.key_bits, "[" + str(int64_t(1) << a_.key_bits) + "] (2^key_bits, key_bits=" +
                                                str(a_.key_bits) + ")");
  if (!keys_only()) {
    g.vb = codebook_bits(in[kValueCb]);
    if (a_.value_bits > 0)
      in[kValueCb].require(g.vb == a_.value_bits, "[" + str(int64_t(1) << a_.value_bits) +
                                                      "] (2^value_bits, value_bits=" + str(a_.value_bits) + ")");
  }
  g.m = qjl_rows(in[kQjl], int(g.d), a_.use_qjl != 0);
  const int64_t d = g.d, hq = a_.hq, hkv = a_.hkv;
  q.require(q.rank() == 3 && q.is(2, hq * d), "[B, S, " + str(hq) + "*" + str(d) + "] (num_heads*d)");
  g.B = q.dim(0);
  g.S = q.dim(1);
  const std::string B = dim_s(g.B, "B"), S = dim_s(g.S, "S");
  for (const Shape* x : {&k, &v})
    x->require(x->rank() == 3 && same(x->dim(0), g.B) && same(x->dim(1), g.S) && x->is(2, hkv * d),
               bracket({B, S, str(hkv * d)}) + " (kv_num_heads*d)");
  g.Rk = tq_cuda_row_bytes(int(d), int(g.kb), int(a_.use_qjl), int(g.m));
  const int u = a_.rows.unit();
  pk.require(pk.rank() == 4 && same(pk.dim(0), g.B) && pk.is(1, hkv) && pk.is(3, g.Rk / u),
             a_.rows.name() + " " + bracket({B, str(hkv), "P", str(g.Rk / u)}) + " (row_bytes " + str(g.Rk) +
                 " for key_bits=" + str(g.kb) +
                 ", use_qjl=" + str(a_.use_qjl) + ")");
  g.P = pk.dim(2);
  g.Rv = keys_only() ? d : tq_cuda_row_bytes(int(d), int(g.vb), 0, 0);
  const int64_t pv_last = keys_only() ? g.Rv : g.Rv / u;
  pv.require(pv.rank() == 4 && same(pv.dim(0), g.B) && pv.is(1, hkv) && same(pv.dim(2), g.P) && pv.is(3, pv_last),
             bracket({B, str(hkv), dim_s(g.P, "P"), str(pv_last)}) +
                 (keys_only() ? " (value_bits=0: values in T)" : " (" + a_.rows.name() + " value rows)"));
  const Shape& sl = in[kSeqlens];
  sl.require(sl.rank() == 1 && same(sl.dim(0), g.B), "int32 " + bracket({B}));
  if (!a_.shape_total) {
    const Shape& tot = in[kTotal];
    tot.require(tot.rank() <= 1 && (tot.rank() == 0 || tot.is(0, 1)), "int32 scalar or [1]");
  }
  if (a_.do_rotary) {
    for (int c : {kCos, kSin}) {
      const Shape& cs = in[c];
      cs.require(cs.present && cs.rank() == 2 && cs.is(1, d / 2), "T [max_pos, " + str(d / 2) + "] (do_rotary=1)");
    }
    g.max_pos = in[kCos].dim(0);
  }
  if (a_.recent > 0) {
    const std::string ring = bracket({B, str(hkv), str(a_.recent), str(d)}) + " (recent_window=" + str(a_.recent) + ")";
    for (int r : {kPastKeyRecent, kPastValueRecent}) {
      if (r == kPastValueRecent && keys_only()) continue;
      const Shape& x = in[r];
      x.require(x.present && x.rank() == 4 && same(x.dim(0), g.B) && x.is(1, hkv) && x.is(2, a_.recent) && x.is(3, d),
                "T " + ring);
    }
  }
  return g;
}

int32_t AttentionPlugin::getOutputDataTypes(DataType* out, int32_t nbOutputs, const DataType* in,
                                            int32_t nbInputs) const noexcept {
  return guard(recorder_, where("getOutputDataTypes"), -1, [&] {
    require(nbOutputs == getNbOutputs(), "expected " + str(getNbOutputs()) + " outputs, got " + str(nbOutputs));
    require(nbInputs > kQuery && is_float_act(in[kQuery]),
            std::string("query: got dtype ") + (nbInputs ? type_name(in[kQuery]) : "none") +
                ", expected float32, float16 or bfloat16");
    const DataType T = in[kQuery];
    for (int i = 0; i < kNumIn; ++i) {
      const int p = position(i);
      if (p < 0 || p >= nbInputs) continue;
      DataType want = T;
      switch (i) {
        case kPastKey: want = a_.rows.type(); break;
        case kPastValue: want = keys_only() ? T : a_.rows.type(); break;
        case kSeqlens: case kTotal: want = DataType::kINT32; break;
        case kRotation: case kKeyCb: case kValueCb: case kQjl: want = DataType::kFLOAT; break;
        default: break;
      }
      require(in[p] == want, std::string(kInNames[i]) + ": got dtype " + type_name(in[p]) + ", expected " +
                                 type_name(want) + (want == T ? " (the query's)" : ""));
    }
    out[kOutput] = T;
    out[kPresentKey] = a_.rows.type();
    out[kPresentValue] = keys_only() ? T : a_.rows.type();
    for (int o = kPresentKeyRecent; o < nbOutputs; ++o) out[o] = T;
    return 0;
  });
}

int32_t AttentionPlugin::getOutputShapes(const nvinfer1::DimsExprs* in, int32_t nbInputs,
                                         const nvinfer1::DimsExprs* shapeInputs, int32_t nbShapeInputs,
                                         nvinfer1::DimsExprs* out, int32_t nbOutputs,
                                         nvinfer1::IExprBuilder& eb) noexcept {
  return guard(recorder_, where("getOutputShapes"), -1, [&] {
    require(nbShapeInputs == (a_.shape_total ? 1 : 0),
            "expected " + str(a_.shape_total ? 1 : 0) + " shape inputs (field " + kShapeIdx + "), got " +
                str(nbShapeInputs));
    require(nbOutputs == getNbOutputs(), "expected " + str(getNbOutputs()) + " outputs, got " + str(nbOutputs));
    const Geometry g = check(op_shapes(in, nbInputs), nbInputs);
    const nvinfer1::DimsExprs& q = in[position(kQuery)];
    const nvinfer1::DimsExprs& pk = in[position(kPastKey)];
    const nvinfer1::IDimensionExpr* P = pk.d[2];
    const nvinfer1::IDimensionExpr* Pp = nullptr;
    if (a_.shared) {
      // Shared buffer: present is past, written in place (getAliasedInput), capacity Pp = P.
      Pp = P;
    } else if (a_.shape_total) {
      // The value of total_sequence_length (a 0-d or [1] int32 shape tensor): Pp = max(P, total).
      const nvinfer1::DimsExprs& t = shapeInputs[0];
      require(t.nbDims == 1 && t.d[0], "total_sequence_length: expected a shape tensor with one value, got " +
                                           str(t.nbDims) + " values");
      Pp = eb.operation(nvinfer1::DimensionOperation::kMAX, *P, *t.d[0]);
    } else {
      // Without its value TensorRT cannot size the present cache by total_sequence_length: it holds
      // past + new tokens (Pp = P + S, what a growing-cache export has: total = P + S).
      Pp = eb.operation(nvinfer1::DimensionOperation::kSUM, *P, *q.d[1]);
    }
    out[kOutput] = q;
    for (int o : {kPresentKey, kPresentValue}) {
      out[o].nbDims = 4;
      out[o].d[0] = q.d[0];
      out[o].d[1] = eb.constant(a_.hkv);
      out[o].d[2] = Pp;
      out[o].d[3] = eb.constant(o == kPresentKey ? g.Rk / a_.rows.unit() : keys_only() ? g.Rv : g.Rv / a_.rows.unit());
    }
    for (int o = kPresentKeyRecent; o < nbOutputs; ++o) {
      out[o].nbDims = 4;
      out[o].d[0] = q.d[0];
      out[o].d[1] = eb.constant(a_.hkv);
      out[o].d[2] = eb.constant(a_.recent);
      out[o].d[3] = eb.constant(g.d);
    }
    return 0;
  });
}

bool AttentionPlugin::supportsFormatCombination(int32_t pos, const nvinfer1::DynamicPluginTensorDesc* io,
                                                int32_t nbInputs, int32_t) noexcept {
  const auto& t = io[pos].desc;
  if (t.format != nvinfer1::TensorFormat::kLINEAR) return false;
  if (pos == 0) return is_float_act(t.type);
  const DataType T = io[0].desc.type;
  if (pos >= nbInputs) {  // outputs
    const int o = pos - nbInputs;
    if (o == kPresentKey) return t.type == a_.rows.type();
    if (o == kPresentValue) return t.type == (keys_only() ? T : a_.rows.type());
    return t.type == T;
  }
  int i = pos;
  if (a_.shape_total && i >= kTotal) ++i;
  switch (i) {
    case kPastKey: return t.type == a_.rows.type();
    case kPastValue: return t.type == (keys_only() ? T : a_.rows.type());
    case kSeqlens: case kTotal: return t.type == DataType::kINT32;
    case kRotation: case kKeyCb: case kValueCb: case kQjl: return t.type == DataType::kFLOAT;
    default: return t.type == T;
  }
}

void AttentionPlugin::fill(TqAttnParams& p, const Geometry& g, int64_t Pp, int dtype) const {
  p.dtype = dtype;
  p.B = g.B;
  p.S = g.S;
  p.Hq = a_.hq;
  p.Hkv = a_.hkv;
  p.d = g.d;
  p.P = g.P;
  p.Pp = Pp;
  p.rot_rank = g.rot_rank;
  p.key_bits = g.kb;
  p.value_bits = g.vb;
  p.use_qjl = a_.use_qjl;
  p.m = g.m;
  p.do_rotary = a_.do_rotary;
  p.max_pos = g.max_pos;
  p.local_window = a_.window;
  p.scale = a_.scale;
  p.softcap = a_.softcap;
  p.recent_window = a_.recent;
}

size_t AttentionPlugin::getWorkspaceSize(const nvinfer1::DynamicPluginTensorDesc* in, int32_t nbInputs,
                                         const nvinfer1::DynamicPluginTensorDesc* out, int32_t nbOutputs) const noexcept {
  return guard(recorder_, where("getWorkspaceSize"), size_t(0), [&] {
    std::vector<nvinfer1::Dims> hi;
    for (int i = 0; i < nbInputs; ++i) hi.push_back(in[i].max);
    const Geometry g = check(op_shapes(hi.data(), nbInputs), nbInputs);
    const int64_t Pp = nbOutputs > kPresentKey ? out[kPresentKey].max.d[2] : g.P;
    // The kernels pick their path by S (decode S = 1, prefill S > 1): the most either needs at the
    // profile's largest B, P and Pp. On a build machine without a GPU the device-dependent parts use
    // defaults; enqueue grows its own scratch if the run-time GPU needs more.
    size_t most = 0;
    for (int64_t S : {int64_t(1), g.S}) {
      TqAttnParams p{};
      Geometry gs = g;
      gs.S = S;
      fill(p, gs, std::max(Pp, g.P), onnx_dtype(in[0].desc.type));
      most = std::max(most, tq_cuda_attention_workspace(&p));
    }
    most = (most + 1023) / 1024 * 1024;
    reserved_ = std::max(reserved_, most);
    return most;
  });
}

void AttentionPlugin::check_dims(const nvinfer1::Dims* in, int nbInputs) const {
  check(op_shapes(in, nbInputs), nbInputs);
}

int32_t AttentionPlugin::enqueue(const nvinfer1::PluginTensorDesc* inDesc, const nvinfer1::PluginTensorDesc* outDesc,
                                 const void* const* inputs, void* const* outputs, void* workspace,
                                 cudaStream_t stream) noexcept {
  count_enqueue();
  return guard(recorder_, where("enqueue"), -1, [&] {
    const int nb = nb_in_;
    const std::vector<Shape> s = op_shapes(dims_of(inDesc, nb).data(), nb);
    const Geometry g = check(s, nb);
    auto ptr = [&](int i) -> const void* {
      const int p = position(i);
      return p >= 0 && p < nb && s[i].present ? inputs[p] : nullptr;
    };
    TqAttnParams p{};
    fill(p, g, outDesc[kPresentKey].dims.d[2], onnx_dtype(inDesc[0].type));
    p.query = ptr(kQuery);
    p.key = ptr(kKey);
    p.value = ptr(kValue);
    p.past_key = ptr(kPastKey);
    p.past_value = ptr(kPastValue);
    p.present_key = outputs[kPresentKey];
    p.present_value = outputs[kPresentValue];
    p.seqlens_k = static_cast<const int32_t*>(ptr(kSeqlens));
    p.rotation = static_cast<const float*>(ptr(kRotation));
    p.key_codebook = static_cast<const float*>(ptr(kKeyCb));
    p.value_codebook = keys_only() ? nullptr : static_cast<const float*>(ptr(kValueCb));
    p.qjl = a_.use_qjl ? static_cast<const float*>(ptr(kQjl)) : nullptr;
    p.cos_cache = a_.do_rotary ? ptr(kCos) : nullptr;
    p.sin_cache = a_.do_rotary ? ptr(kSin) : nullptr;
    p.output = outputs[kOutput];
    if (a_.recent > 0) {
      p.past_key_recent = ptr(kPastKeyRecent);
      p.past_value_recent = keys_only() ? nullptr : ptr(kPastValueRecent);
      p.present_key_recent = outputs[kPresentKeyRecent];
      p.present_value_recent = keys_only() ? nullptr : outputs[kPresentValueRecent];
    }
    if (p.B == 0 || p.S == 0) return 0;
    const size_t need = tq_cuda_attention_workspace(&p);
    // TensorRT reserved what getWorkspaceSize() said on the build machine (serialized as
    // tq_workspace_kib); a GPU with more SMs may want more splits: then the plugin's own scratch
    // (the execution context's allocator).
    void* ws = workspace;
    if (need > reserved_) {
      ws = scratch(need, stream);
      require(ws != nullptr, "the kernels need " + str(int64_t(need)) + " bytes of workspace, TensorRT reserved " +
                                 str(int64_t(reserved_)) + " and no GPU allocator could give more");
    }
    const int rc = tq_cuda_attention(&p, ws, need, stream);
    require(rc == 0, std::string("CUDA kernel failed: ") + tq_cuda_last_error());
    return 0;
  });
}

}  // namespace tq::trt
