#!/bin/bash
# Build the standalone CUDA kernel library build/gpu/libtq_cuda.so (C ABI of custom_ops/cuda/
# tq_cuda_api.h) with nvcc alone: no ONNX Runtime, no CMake. Used by tests/gpu and benchmarks/gpu.
set -euo pipefail
cd "$(dirname "$0")/../.."
ARCH="${TQ_CUDA_ARCH:--gencode=arch=compute_90,code=sm_90 -gencode=arch=compute_80,code=sm_80}"
mkdir -p build/gpu
pids=()
for f in custom_ops/cuda/*.cu; do
  o=build/gpu/$(basename "$f" .cu).o
  nvcc $ARCH -O3 -std=c++17 -DTQ_CUDA_STANDALONE -Xcompiler -fPIC,-fvisibility=hidden -Xptxas -v -c "$f" -o "$o" \
    > "build/gpu/$(basename "$f" .cu).ptxas.log" 2>&1 &
  pids+=($!)
done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=1; done
if [ $rc -ne 0 ]; then cat build/gpu/*.ptxas.log | grep -v "^ptxas info" | head -50; exit 1; fi
nvcc $ARCH -shared -o build/gpu/libtq_cuda.so build/gpu/*.o -lcudart
echo "built build/gpu/libtq_cuda.so"
