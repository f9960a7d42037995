#!/bin/bash
# Build build/trt-harness/libtq_trt_harness.so (tests/gpu/trt_harness.cc): needs the TensorRT headers
# (TQ_TRT_INCLUDE_DIR, else the copy in build/trt-harness/include, else the tq-ort header cache) and
# the CUDA runtime headers and library (nvcc's toolkit). No TensorRT library.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=build/trt-harness
mkdir -p "$out"
inc="${TQ_TRT_INCLUDE_DIR:-}"
for cand in "$inc" "$out/include" "${XDG_CACHE_HOME:-$HOME/.cache}/tq-ort/trt-headers/kernel-lens-2.0.1"; do
  if [ -n "$cand" ] && [ -f "$cand/NvInfer.h" ]; then inc="$cand"; break; fi
done
[ -f "$inc/NvInfer.h" ] || { echo "no TensorRT headers (set TQ_TRT_INCLUDE_DIR)"; exit 2; }
# Keep a copy beside the library so a GPU machine without PyPI can rebuild it.
if [ "$inc" != "$out/include" ]; then mkdir -p "$out/include" && cp "$inc"/NvInfer*.h "$out/include/"; fi
cuda="${CUDA_HOME:-}"
for cand in "$cuda" /usr/local/cuda "$(dirname "$(dirname "$(readlink -f "$(command -v nvcc || echo /x/bin/nvcc)")")")"; do
  if [ -n "$cand" ] && [ -f "$cand/include/cuda_runtime_api.h" ]; then cuda="$cand"; break; fi
done
g++ -std=c++17 -O1 -shared -fPIC -fvisibility=hidden -Wall -Wno-deprecated-declarations \
  -isystem "$inc" -isystem "$cuda/include" tests/gpu/trt_harness.cc -o "$out/libtq_trt_harness.so" \
  -L"$cuda/lib64" -L"$cuda/lib" -Wl,-Bstatic -lcudart_static -Wl,-Bdynamic -ldl -lpthread -lrt
echo "built $out/libtq_trt_harness.so"
# --bundle: also copy the plugin library and the ORT op library found by tq_ort.library into $out, so
# that carrying build/trt-harness/ to a GPU machine is enough (tests/gpu/trt_harness.py uses them).
if [ "${1:-}" = "--bundle" ]; then
  PY="${PYTHON:-python3}"
  "$PY" - "$out" <<'PY'
import shutil, sys
from tq_ort.library import library_path, trt_plugin_path
for p in (trt_plugin_path(), library_path()):
    shutil.copy2(p, sys.argv[1])
    print("bundled", p)
PY
fi
