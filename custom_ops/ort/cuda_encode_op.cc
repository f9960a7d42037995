// TurboQuantEncode for ONNX Runtime's CUDAExecutionProvider (docs/cuda.md; helpers in cuda_common.h).
#include <string>
#include <vector>

#include "cuda/tq_cuda_api.h"
#include "ort/cuda_common.h"
#include "ort/op_table.h"

namespace tq::ort {
namespace cuda_ep {
namespace {

struct EncodeKernel {
  explicit EncodeKernel(const OrtKernelInfo* info)
      : name_("TurboQuantEncode (CUDA) '" + ort::node_name(info) + "'") {
    if (!ort::has_attr(info, "bits")) ort::fail("attribute 'bits' is required (one of 1, 2, 3, 4, 5, 6, 8)");
    bits_ = ort::attr_int(info, "bits", -1);
    use_qjl_ = ort::attr_int(info, "use_qjl", 0);
    reject_split_widths(info, {"hi_channels"});
    if (use_qjl_ != 0 && use_qjl_ != 1) ort::fail("attribute use_qjl: expected 0 or 1");
  }
  OrtStatusPtr ComputeV2(OrtKernelContext* context) { return ort::guard(name_, [&] { Compute(context); }); }
  void Compute(OrtKernelContext* context) {
    Ort::KernelContext ctx(context);
    Input x = ort::get_input(ctx, 0, "x"), rot = ort::get_input(ctx, 1, "rotation");
    Input cb = ort::get_input(ctx, 2, "codebook"), qjl = opt_input(ctx, 3, "qjl_matrix");
    const int d = rotation_dim(rot);
    const int bits = codebook_bits(cb);
    if (bits != bits_) cb.fail_expected("2^bits entries with bits=" + str(bits_) + " (the attribute)");
    const int m = qjl_rows(qjl, d, use_qjl_ != 0);
    x.require(x.type == kF32 || x.type == kF16 || x.type == kBF16, "dtype float32, float16 or bfloat16");
    x.require(x.rank() >= 1 && x.dim(-1) == d, "shape [..., " + str(d) + "] (d from rotation)");
    std::vector<int64_t> oshape(x.shape);
    oshape.back() = tq_cuda_row_bytes(d, bits, int(use_qjl_), m);
    OutputSizes(0).add("rows", kU8, oshape, 0, "[..., row_bytes] (x's leading dims)");
    auto out = ort::get_output(ctx, 0, "rows", oshape);
    const int64_t n = x.numel() / d;
    if (n == 0) return;
    check(tq_cuda_encode(x.data, dtype_code(x.type), n, d, rot.ptr<float>(), int(rot.rank()), cb.ptr<float>(), bits,
                         int(use_qjl_), use_qjl_ ? qjl.ptr<float>() : nullptr, m,
                         out.GetTensorMutableData<uint8_t>(), ctx.GetGPUComputeStream()),
          name_);
  }
  std::string name_;
  int64_t bits_ = 0, use_qjl_ = 0;
};

struct EncodeOp : CudaOpBase<EncodeOp, EncodeKernel> {
  const char* GetName() const { return "TurboQuantEncode"; }
  size_t GetInputTypeCount() const { return 4; }
  ElemType GetInputType(size_t) const { return kAny; }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t i) const {
    return i == 3 ? INPUT_OUTPUT_OPTIONAL : INPUT_OUTPUT_REQUIRED;
  }
  size_t GetOutputTypeCount() const { return 1; }
  ElemType GetOutputType(size_t) const { return kU8; }
};

}  // namespace
}  // namespace cuda_ep

void add_cuda_encode_ops(std::vector<const OrtCustomOp*>& ops) {
  static cuda_ep::EncodeOp enc;
  ops.push_back(&enc);
}

}  // namespace tq::ort
