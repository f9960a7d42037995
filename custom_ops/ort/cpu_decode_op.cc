// TurboQuantDecode(rows, rotation, codebook [, qjl_matrix]) -> x_hat (docs/ops.md section 3).
#include "ort/codec_args.h"
#include "ort/op_table.h"

namespace tq::ort {
namespace {

struct DecodeKernel {
  explicit DecodeKernel(const OrtKernelInfo* info) : name_("TurboQuantDecode '" + node_name(info) + "'") {
    use_qjl_ = attr_int(info, "use_qjl", 0);
    if (use_qjl_ != 0 && use_qjl_ != 1) fail("attribute use_qjl=" + std::to_string(use_qjl_) + ": expected 0 or 1");
    const int64_t od = attr_int(info, "output_dtype", 1);
    if (od != 1 && od != 10) fail("attribute output_dtype=" + std::to_string(od) + ": expected 1 (float32) or 10 (float16)");
    half_ = od == 10;
    hi_ = hi_attr(info, "hi_channels");
    // ORT cannot infer a custom op's output type from an attribute, so the model declares it
    // (value_info or graph output); it must agree with output_dtype.
    ElemType declared = Ort::ConstKernelInfo(info).GetOutputTypeInfo(0).GetTensorTypeAndShapeInfo().GetElementType();
    if (declared != (half_ ? kF16 : kF32))
      fail(std::string("output 'x_hat' is declared ") + type_name(declared) + " in the model but output_dtype=" +
           std::to_string(od) + " asks for " + (half_ ? "float16" : "float32"));
  }

  OrtStatusPtr ComputeV2(OrtKernelContext* context) {
    return guard(name_, [&] {
      OrtThreads threads(context);
      Compute(context);
    });
  }

  void Compute(OrtKernelContext* context) {
    Ort::KernelContext ctx(context);
    Input rows = get_input(ctx, 0, "rows"), rot = get_input(ctx, 1, "rotation");
    Input cb = get_input(ctx, 2, "codebook"), qjl = get_input(ctx, 3, "qjl_matrix");
    cpu::Codec c = make_codec(rot, cb, qjl, -1, "bits", use_qjl_ != 0, hi_);
    const int rb = c.lay.row_bytes();
    rows.require_type(kU8);
    rows.require(rows.rank() >= 1 && rows.dim(-1) == rb,
                 "shape [..., " + std::to_string(rb) + "] (row_bytes for d=" + std::to_string(c.lay.d) +
                     ", bits=" + std::to_string(c.lay.bits) +
                     (hi_ ? ", hi_channels=" + std::to_string(hi_) : std::string()) + ", use_qjl=" + std::to_string(use_qjl_) +
                     (use_qjl_ ? ", m=" + std::to_string(c.lay.m) : std::string()) + ")");
    std::vector<int64_t> oshape(rows.shape);
    oshape.back() = c.lay.d;
    OutputSizes(host_memory_limit()).add("x_hat", half_ ? kF16 : kF32, oshape, 0, "[..., d] (rows' leading dims)");
    auto out = get_output(ctx, 0, "x_hat", oshape);
    cpu::decode_rows(c, rows.ptr<uint8_t>(), rows.numel() / rb, out.GetTensorMutableRawData(), half_);
  }

  std::string name_;
  int64_t use_qjl_ = 0, hi_ = 0;
  bool half_ = false;
};

struct DecodeOp : OpBase<DecodeOp, DecodeKernel> {
  const char* GetName() const { return "TurboQuantDecode"; }
  size_t GetInputTypeCount() const { return 4; }
  ElemType GetInputType(size_t i) const { return i == 0 ? kU8 : kF32; }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t i) const {
    return i == 3 ? INPUT_OUTPUT_OPTIONAL : INPUT_OUTPUT_REQUIRED;
  }
  size_t GetOutputTypeCount() const { return 1; }
  // Undefined (float32 or float16, from the model's declaration); "optional" only because ORT
  // insists that a required output of undefined type follows exactly one undefined input.
  ElemType GetOutputType(size_t) const { return kAny; }
  OrtCustomOpInputOutputCharacteristic GetOutputCharacteristic(size_t) const { return INPUT_OUTPUT_OPTIONAL; }
};

}  // namespace

void add_cpu_decode_ops(std::vector<const OrtCustomOp*>& ops) {
  static DecodeOp op;
  ops.push_back(&op);
}

}  // namespace tq::ort
