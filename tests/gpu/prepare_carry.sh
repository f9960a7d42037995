#!/bin/bash
# Build, on this (GPU-less) machine, everything the GPU calls carry, so device time goes to running:
#   build/gpu/libtq_cuda.so        the kernel library (tests/gpu/build.sh, sm_90 only: ~9 min on 2 cores)
#   build/ort/libtq_ort_ops.so     the ORT op library with CUDA (copied from the pip build, or built with CMake)
#   build/trt-harness/             the TensorRT plugin harness + plugin library (no ORT library copy: it is
#                                  build/ort's, pass TQ_ORT_LIBRARY there), so the carry stays under 64 MiB
#   build/conc/llama-tq/           a tiny rewritten model for tests/gpu/{concurrency,long_cache}_cuda.py
#   build/old/                     with OLD=<commit>: both libraries of that commit, for run_gpu.sh benchab
#   .device/ortgpu/, .device/zstd  onnxruntime-gpu in four parts (../shared/tools/ort-gpu-parts), if present
# Usage: tests/gpu/prepare_carry.sh [OLD=<commit>]   (steps already done are skipped; rm a path to redo it)
set -euo pipefail
cd "$(dirname "$0")/../.."
ARCH="-gencode=arch=compute_90,code=sm_90"
OLD=""
for a in "$@"; do case $a in OLD=*) OLD="${a#OLD=}";; *) echo "unknown argument $a"; exit 2;; esac; done
PY="${PYTHON:-python3}"

if [ ! -f build/gpu/libtq_cuda.so ]; then TQ_CUDA_ARCH="$ARCH" tests/gpu/build.sh; fi

ort_lib() {  # $1 = source tree, $2 = destination file: a CUDA-enabled libtq_ort_ops.so
  local tree=$1 dst=$2
  mkdir -p "$(dirname "$dst")"
  cmake -S "$tree" -B "$tree/build/ort-carry" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 \
    -DTQ_WITH_TRT=OFF > "$tree/build/ort-carry.log" 2>&1
  cmake --build "$tree/build/ort-carry" -j2 >> "$tree/build/ort-carry.log" 2>&1
  cp "$tree/build/ort-carry/libtq_ort_ops.so" "$dst"
}
if [ ! -f build/ort/libtq_ort_ops.so ]; then
  pipbuilt=$(ls build/py3-none-*/libtq_ort_ops.so 2>/dev/null | head -1 || true)
  if [ -n "$pipbuilt" ] && strings "$pipbuilt" | grep -q decode_split && \
     [ -z "$(find custom_ops -newer "$pipbuilt" -type f | head -1)" ]; then
    mkdir -p build/ort && cp "$pipbuilt" build/ort/libtq_ort_ops.so
  else
    ort_lib . build/ort/libtq_ort_ops.so
  fi
fi

if [ ! -f build/trt-harness/libtq_trt_plugins.so ]; then
  # the plugin library over the standalone kernel objects (the same kernels as build/gpu)
  inc="${TQ_TRT_INCLUDE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tq-ort/trt-headers/kernel-lens-2.0.1}"
  [ -f "$inc/NvInfer.h" ] || { echo "no TensorRT headers at $inc (pip install . fetches them; or set TQ_TRT_INCLUDE_DIR)"; exit 2; }
  mkdir -p build/trtp
  g++ -std=c++17 -O2 -fPIC -shared -fvisibility=hidden -Wno-deprecated-declarations -Icustom_ops -isystem "$inc" \
    -isystem /usr/local/cuda/include $(find custom_ops/trt -name "*.cc") build/gpu/*.o -L/usr/local/cuda/lib64 \
    -Wl,-Bstatic -lcudart_static -Wl,-Bdynamic -ldl -lpthread -lrt -o build/trtp/libtq_trt_plugins.so
  TQ_TRT_INCLUDE_DIR="$inc" TQ_TRT_PLUGINS="$PWD/build/trtp/libtq_trt_plugins.so" \
    TQ_ORT_LIBRARY="$PWD/build/ort/libtq_ort_ops.so" PYTHON="$PY" tests/gpu/trt_harness_build.sh --bundle
  rm -f build/trt-harness/libtq_ort_ops.so
fi

if [ ! -f build/conc/llama-tq/model.onnx ]; then
  "$PY" -c "import sys; sys.path.insert(0, 'tests'); from tiny_exports import rewritten_folder; \
print(rewritten_folder(sys.argv[1], 'llama'))" build/conc
fi

if [ -n "$OLD" ] && [ ! -f build/old/libtq_ort_ops.so ]; then
  wt=$(mktemp -d)/old
  git worktree add -f "$wt" "$OLD" > /dev/null
  (cd "$wt" && TQ_CUDA_ARCH="$ARCH" tests/gpu/build.sh)
  mkdir -p build/old && cp "$wt/build/gpu/libtq_cuda.so" build/old/
  ort_lib "$wt" build/old/libtq_ort_ops.so
  git worktree remove --force "$wt"
fi

if [ ! -f .device/ortgpu/part03 ] && [ -x ../shared/tools/ort-gpu-parts ]; then ../shared/tools/ort-gpu-parts; fi
du -ch build/gpu/libtq_cuda.so build/ort/libtq_ort_ops.so build/trt-harness build/conc \
  $( [ -d build/old ] && echo build/old ) 2>/dev/null | tail -1
echo "ready: carry build/gpu/libtq_cuda.so build/ort/libtq_ort_ops.so build/trt-harness build/conc (+ build/old)"
