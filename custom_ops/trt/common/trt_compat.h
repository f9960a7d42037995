// The one place where TensorRT and TensorRT-RTX differ for these plugins (docs/tensorrt.md).
//
// Both ship the same plugin C++ API (IPluginV3, IPluginV3OneCore/Build/Runtime, IPluginCreatorV3One,
// IExprBuilder, PluginField, ILoggerFinder) in headers named NvInfer*.h, with the same virtual
// layouts: the library is built once against the TensorRT 10.14 headers (PyPI kernel-lens) and is
// loaded by TensorRT 10/11 (libnvinfer) and by TensorRT-RTX 1.x (libtensorrt_rtx) alike. It calls
// only virtual functions on objects TensorRT hands it, so it links neither library.
//
// What differs, and is handled here:
// - the header set: TensorRT-RTX SDKs install NvInfer.h too, so one include serves both (define
//   TQ_TRT_RTX_HEADERS when building against an RTX SDK's headers; nothing else changes);
// - build phase: TensorRT-RTX builds engines ahead of time on the CPU (no GPU needed) and never
//   times tactics, so the plugins must not touch CUDA outside enqueue; TensorRT 10 may time them
//   (enqueue during the build, on the GPU). Both are fine with these plugins, which have one tactic.
// - TensorRT-RTX engines target compute capabilities SM75/80/86/89/120/121 (no SM90): on Hopper
//   they do not deserialize; the plugins themselves (kernels built for sm_90 here) do not care.
#pragma once

#include <NvInfer.h>

namespace tq::trt {

#if defined(TQ_TRT_RTX_HEADERS)
inline constexpr const char* kHeaderFlavor = "TensorRT-RTX";
#else
inline constexpr const char* kHeaderFlavor = "TensorRT";
#endif
inline constexpr int kHeaderMajor = NV_TENSORRT_MAJOR;
inline constexpr int kHeaderMinor = NV_TENSORRT_MINOR;
inline constexpr int kHeaderPatch = NV_TENSORRT_PATCH;

// The plugins' identity: the ONNX parser's fallback importer looks a node up by
// (op_type, attribute plugin_version or "1", attribute plugin_namespace or "").
inline constexpr const char* kPluginVersion = "1";
inline constexpr const char* kPluginNamespace = "";

}  // namespace tq::trt
