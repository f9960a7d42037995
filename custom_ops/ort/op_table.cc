// The one ORT registration table: every op of the domain, per execution provider, in the order
// ORT sees them. RegisterCustomOps is the library's only exported symbol.
#include <mutex>
#include <vector>

#include "ort/common.h"
#include "ort/op_table.h"

#define TQ_STR2(x) #x
#define TQ_STR(x) TQ_STR2(x)

namespace {

constexpr const char* kDomain = "turboquant";

Ort::CustomOpDomain& domain() {
  // Built once and kept for the process lifetime: sessions hold pointers into it.
  static Ort::CustomOpDomain* dom = [] {
    auto* d = new Ort::CustomOpDomain(kDomain);
    std::vector<const OrtCustomOp*> ops;
    // op                                      execution provider   adapter
    tq::ort::add_cpu_encode_ops(ops);       // TurboQuantEncode     CPU    ort/cpu_encode_op.cc
    tq::ort::add_cpu_decode_ops(ops);       // TurboQuantDecode     CPU    ort/cpu_decode_op.cc
    tq::ort::add_cpu_attention_ops(ops);    // TurboQuantAttention  CPU    ort/cpu_attention_op.cc
#ifdef TQ_WITH_CUDA
    tq::ort::add_cuda_encode_ops(ops);      // TurboQuantEncode     CUDA   ort/cuda_encode_op.cc
    tq::ort::add_cuda_decode_ops(ops);      // TurboQuantDecode     CUDA   ort/cuda_decode_op.cc
    tq::ort::add_cuda_attention_ops(ops);   // TurboQuantAttention  CUDA   ort/cuda_attention_op.cc
#endif
    for (const OrtCustomOp* op : ops) d->Add(op);
    return d;
  }();
  return *dom;
}

}  // namespace

extern "C" __attribute__((visibility("default"))) OrtStatus* ORT_API_CALL
RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
  // Ask for the API version of our headers; ORT >= that version serves it.
  const OrtApi* api = api_base->GetApi(ORT_API_VERSION);
  if (!api) {
    // No OrtApi to build a status with; returning an error needs one, so report via the base.
    return nullptr == api_base ? nullptr : api_base->GetApi(1)->CreateStatus(
        ORT_FAIL, "tq-ort: this onnxruntime is older than the headers the library was built with "
                  "(needs ORT API version " TQ_STR(ORT_API_VERSION) ", onnxruntime >= 1.29)");
  }
  Ort::InitApi(api);
  return tq::ort::guard("tq-ort RegisterCustomOps", [&] {
    static std::mutex mu;
    std::lock_guard<std::mutex> lk(mu);
    Ort::UnownedSessionOptions(options).Add(domain());
  });
}
