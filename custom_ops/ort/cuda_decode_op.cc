// TurboQuantDecode for ONNX Runtime's CUDAExecutionProvider (docs/cuda.md; helpers in cuda_common.h).
#include <string>
#include <vector>

#include "cuda/tq_cuda_api.h"
#include "ort/cuda_common.h"
#include "ort/op_table.h"

namespace tq::ort {
namespace cuda_ep {
namespace {

struct DecodeKernel {
  explicit DecodeKernel(const OrtKernelInfo* info)
      : name_("TurboQuantDecode (CUDA) '" + ort::node_name(info) + "'") {
    use_qjl_ = ort::attr_int(info, "use_qjl", 0);
    reject_split_widths(info, {"hi_channels"});
    if (use_qjl_ != 0 && use_qjl_ != 1) ort::fail("attribute use_qjl: expected 0 or 1");
    od_ = ort::attr_int(info, "output_dtype", 1);
    if (od_ != 1 && od_ != 10 && od_ != 16)
      ort::fail("attribute output_dtype=" + str(od_) + ": expected 1 (float32), 10 (float16) or 16 (bfloat16)");
    ElemType declared = Ort::ConstKernelInfo(info).GetOutputTypeInfo(0).GetTensorTypeAndShapeInfo().GetElementType();
    if (dtype_code(declared) != od_)
      ort::fail(std::string("output 'x_hat' is declared ") + ort::type_name(declared) + " in the model but output_dtype=" +
                str(od_));
  }
  OrtStatusPtr ComputeV2(OrtKernelContext* context) { return ort::guard(name_, [&] { Compute(context); }); }
  void Compute(OrtKernelContext* context) {
    Ort::KernelContext ctx(context);
    Input rows = ort::get_input(ctx, 0, "rows"), rot = ort::get_input(ctx, 1, "rotation");
    Input cb = ort::get_input(ctx, 2, "codebook"), qjl = opt_input(ctx, 3, "qjl_matrix");
    const int d = rotation_dim(rot);
    const int bits = codebook_bits(cb);
    const int m = qjl_rows(qjl, d, use_qjl_ != 0);
    const int rb = tq_cuda_row_bytes(d, bits, int(use_qjl_), m);
    rows.require_type(kU8);
    rows.require(rows.rank() >= 1 && rows.dim(-1) == rb,
                 "shape [..., " + str(rb) + "] (row_bytes for d=" + str(d) + ", bits=" + str(bits) +
                     ", use_qjl=" + str(use_qjl_) + ")");
    std::vector<int64_t> oshape(rows.shape);
    oshape.back() = d;
    OutputSizes(0).add("x_hat", od_ == 1 ? kF32 : od_ == 10 ? kF16 : kBF16, oshape, 0, "[..., d] (rows' leading dims)");
    auto out = ort::get_output(ctx, 0, "x_hat", oshape);
    const int64_t n = rows.numel() / rb;
    if (n == 0) return;
    check(tq_cuda_decode(rows.ptr<uint8_t>(), n, d, rot.ptr<float>(), int(rot.rank()), cb.ptr<float>(), bits,
                         int(use_qjl_), m, out.GetTensorMutableRawData(), int(od_), ctx.GetGPUComputeStream()),
          name_);
  }
  std::string name_;
  int64_t use_qjl_ = 0, od_ = 1;
};

struct DecodeOp : CudaOpBase<DecodeOp, DecodeKernel> {
  const char* GetName() const { return "TurboQuantDecode"; }
  size_t GetInputTypeCount() const { return 4; }
  ElemType GetInputType(size_t i) const { return i == 0 ? kU8 : kF32; }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t i) const {
    return i == 3 ? INPUT_OUTPUT_OPTIONAL : INPUT_OUTPUT_REQUIRED;
  }
  size_t GetOutputTypeCount() const { return 1; }
  ElemType GetOutputType(size_t) const { return kAny; }
  OrtCustomOpInputOutputCharacteristic GetOutputCharacteristic(size_t) const { return INPUT_OUTPUT_OPTIONAL; }
};

}  // namespace
}  // namespace cuda_ep

void add_cuda_decode_ops(std::vector<const OrtCustomOp*>& ops) {
  static cuda_ep::DecodeOp dec;
  ops.push_back(&dec);
}

}  // namespace tq::ort
