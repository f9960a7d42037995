// The one registration table: RegisterCustomOps is the library's only exported symbol.
#include <mutex>
#include <vector>

#include "ort/common.h"
#include "ort/ops.h"
#ifdef TQ_WITH_CUDA
#include "ort/cuda_ops.h"
#endif

#define TQ_STR2(x) #x
#define TQ_STR(x) TQ_STR2(x)

namespace {

constexpr const char* kDomain = "turboquant";

Ort::CustomOpDomain& domain() {
  // Built once and kept for the process lifetime: sessions hold pointers into it.
  static Ort::CustomOpDomain* dom = [] {
    auto* d = new Ort::CustomOpDomain(kDomain);
    std::vector<const OrtCustomOp*> ops;
    tq::ort::add_encode_ops(ops);
    tq::ort::add_decode_ops(ops);
    tq::ort::add_attention_ops(ops);
    for (const OrtCustomOp* op : ops) d->Add(op);
#ifdef TQ_WITH_CUDA
    tq::RegisterCudaOps(*d);
#endif
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
