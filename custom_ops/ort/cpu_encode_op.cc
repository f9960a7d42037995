// TurboQuantEncode(x, rotation, codebook [, qjl_matrix]) -> rows (docs/ops.md section 2).
#include "ort/codec_args.h"
#include "ort/op_table.h"

namespace tq::ort {
namespace {

struct EncodeKernel {
  explicit EncodeKernel(const OrtKernelInfo* info) : name_("TurboQuantEncode '" + node_name(info) + "'") {
    if (!has_attr(info, "bits")) fail("attribute 'bits' is required (one of 1, 2, 3, 4, 5, 6, 8)");
    bits_ = attr_int(info, "bits", -1);
    if (!valid_bits_attr(bits_)) fail("attribute bits=" + std::to_string(bits_) + ": expected one of 1, 2, 3, 4, 5, 6, 8");
    use_qjl_ = attr_int(info, "use_qjl", 0);
    if (use_qjl_ != 0 && use_qjl_ != 1) fail("attribute use_qjl=" + std::to_string(use_qjl_) + ": expected 0 or 1");
    hi_ = hi_attr(info, "hi_channels");
  }

  OrtStatusPtr ComputeV2(OrtKernelContext* context) {
    return guard(name_, [&] {
      OrtThreads threads(context);
      Compute(context);
    });
  }

  void Compute(OrtKernelContext* context) {
    Ort::KernelContext ctx(context);
    Input x = get_input(ctx, 0, "x"), rot = get_input(ctx, 1, "rotation");
    Input cb = get_input(ctx, 2, "codebook"), qjl = get_input(ctx, 3, "qjl_matrix");
    cpu::Codec c = make_codec(rot, cb, qjl, bits_, "bits", use_qjl_ != 0, hi_);
    const int d = c.lay.d;
    x.require(x.type == kF32 || x.type == kF16, "dtype float32 or float16");
    x.require(x.rank() >= 1 && x.dim(-1) == d, "shape [..., " + std::to_string(d) + "] (d from rotation)");
    std::vector<int64_t> oshape(x.shape);
    oshape.back() = c.lay.row_bytes();
    OutputSizes(host_memory_limit()).add("rows", kU8, oshape, 0, "[..., row_bytes] (x's leading dims)");
    auto out = get_output(ctx, 0, "rows", oshape);
    const int64_t n = x.numel() / d;
    const int64_t bad = cpu::encode_rows(c, x.data, x.type == kF16, n, out.GetTensorMutableData<uint8_t>());
    if (bad >= 0) x.fail_expected("finite values (non-finite value at flat index " + std::to_string(bad) + ")");
  }

  std::string name_;
  int64_t bits_ = 0, use_qjl_ = 0, hi_ = 0;
};

struct EncodeOp : OpBase<EncodeOp, EncodeKernel> {
  const char* GetName() const { return "TurboQuantEncode"; }
  size_t GetInputTypeCount() const { return 4; }
  // Any dtype here: the kernel checks and names the offending tensor.
  ElemType GetInputType(size_t) const { return kAny; }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t i) const {
    return i == 3 ? INPUT_OUTPUT_OPTIONAL : INPUT_OUTPUT_REQUIRED;
  }
  size_t GetOutputTypeCount() const { return 1; }
  ElemType GetOutputType(size_t) const { return kU8; }
};

}  // namespace

void add_cpu_encode_ops(std::vector<const OrtCustomOp*>& ops) {
  static EncodeOp op;
  ops.push_back(&op);
}

}  // namespace tq::ort
