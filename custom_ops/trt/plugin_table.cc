// The plugin library's registration table: every creator, and the two entry points
// IPluginRegistry::loadLibrary (C++) / get_plugin_registry().load_library (Python) look for.
// Nothing else is exported (the build hides all other symbols).
#include "trt/attention/attention_plugin.h"
#include "trt/decode/decode_plugin.h"
#include "trt/encode/encode_plugin.h"

#define TQ_TRT_EXPORT extern "C" __attribute__((visibility("default")))

namespace {
tq::trt::Creator<tq::trt::EncodePlugin> g_encode;
tq::trt::Creator<tq::trt::DecodePlugin> g_decode;
tq::trt::Creator<tq::trt::AttentionPlugin> g_attention;
nvinfer1::IPluginCreatorInterface* const g_creators[] = {&g_encode, &g_decode, &g_attention};
}  // namespace

TQ_TRT_EXPORT void setLoggerFinder(nvinfer1::ILoggerFinder* finder) { tq::trt::set_logger_finder(finder); }

TQ_TRT_EXPORT nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators) {
  nbCreators = int32_t(sizeof(g_creators) / sizeof(g_creators[0]));
  return g_creators;
}

// "TurboQuantEncode/1/,TurboQuantDecode/1/,..." (name/version/namespace of every creator in the
// table, read through the creators themselves): lets ctypes check the table without TensorRT.
TQ_TRT_EXPORT const char* tqTrtPluginCreators() {
  static const std::string s = [] {
    std::string out;
    for (nvinfer1::IPluginCreatorInterface* c : g_creators) {
      auto* v3 = static_cast<nvinfer1::IPluginCreatorV3One*>(c);
      out += std::string(out.empty() ? "" : ",") + v3->getPluginName() + "/" + v3->getPluginVersion() + "/" +
             v3->getPluginNamespace();
    }
    return out;
  }();
  return s.c_str();
}

// enqueue calls made in this process by any of the plugins.
TQ_TRT_EXPORT int64_t tqTrtPluginEnqueueCount() { return tq::trt::enqueue_count(); }

// The version of the headers the library was built with, as "TensorRT 10.14.1" (for sidecars / tests).
TQ_TRT_EXPORT const char* tqTrtPluginHeaders() {
  static const std::string s = std::string(tq::trt::kHeaderFlavor) + " " + std::to_string(tq::trt::kHeaderMajor) +
                               "." + std::to_string(tq::trt::kHeaderMinor) + "." + std::to_string(tq::trt::kHeaderPatch);
  return s.c_str();
}
