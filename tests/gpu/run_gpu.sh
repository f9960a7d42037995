#!/bin/bash
# One device call: build the kernel library, run the kernel tests (full sweep), the quick sweep
# under compute-sanitizer memcheck, and optionally the benchmark. Logs under $OUT (or build/gpu/out).
#   tests/gpu/run_gpu.sh [build] [test] [sanitize] [bench] [ort]
# Steps: build (nvcc, build/gpu/libtq_cuda.so) | prebuilt (use a carried build/gpu/libtq_cuda.so if it
# loads, else build) | test (full kernel sweep, recent window included) | ringtest (recent-window
# cases only) | sanitize (memcheck, quick sweep) | ringsanitize / ringracecheck (memcheck / racecheck, recent-window
# quick cases) | racecheck / initcheck (quick sweep) | ortsanitize (memcheck over tests/test_cuda_ops.py)
# | ortunpack | ortbuild | ortprebuilt (carried build/ort/libtq_ort_ops.so if present, else ortbuild)
# | orttest | benchort | benchring (R = 0 vs 64, ORT session and kernel) | ncu | sass | bench
# | benchab (bench_attention --quick, this build and a carried older one in build/old/ {libtq_cuda.so,
#   libtq_ort_ops.so} alternately, AB_ROUNDS rounds (default 2): side-by-side timings for a refactor)
# Prepare what the calls carry on the CPU machine first: tests/gpu/prepare_carry.sh [OLD=<commit>].
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-build/gpu/out}"; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
steps="${*:-build test sanitize}"
rc=0
for s in $steps; do
  case $s in
    build) { nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv; nvcc --version | tail -1;
             time tests/gpu/build.sh; } > "$OUT/build.log" 2>&1 || { rc=1; tail -40 "$OUT/build.log"; }
           grep -A1 "decode_split_kernel" build/gpu/attention_dispatch.ptxas.log | grep -E "registers|spill" | head -8 ;;
    prebuilt) if python3 -c "import ctypes; ctypes.CDLL('build/gpu/libtq_cuda.so').tq_cuda_row_bytes" 2>/dev/null; then
                echo "using the carried build/gpu/libtq_cuda.so"
              else
                echo "carried library unusable: building"; tests/gpu/build.sh > "$OUT/build.log" 2>&1 || { rc=1; tail -40 "$OUT/build.log"; }
              fi ;;
    test) python3 tests/gpu/test_kernels.py > "$OUT/test.log" 2>&1 || rc=1; grep -E "FAIL|passed" "$OUT/test.log" | tail -25 ;;
    ringtest) python3 tests/gpu/test_kernels.py --only=ring,ring_steps > "$OUT/ringtest.log" 2>&1 || rc=1
              grep -E "FAIL|passed" "$OUT/ringtest.log" | tail -25 ;;
    ringsanitize) timeout 400 compute-sanitizer --tool memcheck --error-exitcode 9 python3 tests/gpu/test_kernels.py --quick \
                    --only=ring,ring_steps > "$OUT/ringsanitize.log" 2>&1; src=$?; echo "sanitizer (ring) rc=$src"; [ $src -ne 0 ] && rc=1
                  grep -E "ERROR SUMMARY|passed|Invalid|FAIL" "$OUT/ringsanitize.log" | head -12 ;;
    sanitize) timeout 400 compute-sanitizer --tool memcheck --error-exitcode 9 python3 tests/gpu/test_kernels.py --quick \
                > "$OUT/sanitize.log" 2>&1; src=$?; echo "sanitizer rc=$src"; [ $src -ne 0 ] && rc=1
              grep -E "ERROR SUMMARY|passed|Invalid|FAIL" "$OUT/sanitize.log" | head -12 ;;
    racecheck|initcheck) timeout 400 compute-sanitizer --tool $s --error-exitcode 9 python3 tests/gpu/test_kernels.py --quick \
                > "$OUT/$s.log" 2>&1; src=$?; echo "$s rc=$src"; [ $src -ne 0 ] && rc=1
              grep -E "RACECHECK SUMMARY|ERROR SUMMARY|passed|FAIL" "$OUT/$s.log" | head -12 ;;
    ortsanitize) PYTHONPATH=/tmp/ortgpu:$PYTHONPATH TQ_ORT_LIBRARY=$PWD/build/ort/libtq_ort_ops.so timeout 500 \
                   compute-sanitizer --tool memcheck --error-exitcode 9 python3 -m pytest -q -p no:cacheprovider \
                   tests/test_cuda_ops.py > "$OUT/ortsanitize.log" 2>&1; src=$?; echo "memcheck (ORT CUDA op tests) rc=$src"
                 [ $src -ne 0 ] && rc=1; grep -E "ERROR SUMMARY|passed|failed" "$OUT/ortsanitize.log" | tail -4 ;;
    ortbuild) { cmake -S . -B build/ort -DCMAKE_BUILD_TYPE=Release -DTQ_ORT_INCLUDE_DIR="$PWD/.device/ort-include" \
                  -DCMAKE_CUDA_ARCHITECTURES=90 && cmake --build build/ort -j16; } > "$OUT/ortbuild.log" 2>&1 \
                || { rc=1; tail -30 "$OUT/ortbuild.log"; }; ls -la build/ort/libtq_ort_ops.so ;;
    ringracecheck) timeout 400 compute-sanitizer --tool racecheck --error-exitcode 9 python3 tests/gpu/test_kernels.py --quick \
                     --only=ring,ring_steps > "$OUT/ringracecheck.log" 2>&1; src=$?; echo "racecheck (ring) rc=$src"; [ $src -ne 0 ] && rc=1
                   grep -E "RACECHECK SUMMARY|ERROR SUMMARY|passed|FAIL" "$OUT/ringracecheck.log" | head -12 ;;
    ortprebuilt) if [ -f build/ort/libtq_ort_ops.so ]; then echo "using the carried build/ort/libtq_ort_ops.so"; else
                   { cmake -S . -B build/ort -DCMAKE_BUILD_TYPE=Release -DTQ_ORT_INCLUDE_DIR="$PWD/.device/ort-include" \
                       -DCMAKE_CUDA_ARCHITECTURES=90 && cmake --build build/ort -j16; } > "$OUT/ortbuild.log" 2>&1 \
                   || { rc=1; tail -30 "$OUT/ortbuild.log"; }; fi ;;
    ortunpack) mkdir -p /tmp/ortgpu && cat /tmp/parts/part0* | .device/zstd -d -q | tar xf - -C /tmp/ortgpu \
                && PYTHONPATH=/tmp/ortgpu python3 -c "import onnxruntime as o; print(o.__version__, o.get_available_providers())" ;;
    orttest) PYTHONPATH=/tmp/ortgpu:$PYTHONPATH TQ_ORT_LIBRARY=$PWD/build/ort/libtq_ort_ops.so python3 -m pytest -q -p no:cacheprovider \
               tests/test_cuda_ops.py > "$OUT/orttest.log" 2>&1 || rc=1; tail -15 "$OUT/orttest.log" ;;
    ncu) timeout 300 ncu --clock-control none -k regex:decode_split -c 2 --section SpeedOfLight --section MemoryWorkloadAnalysis \
           --section WarpStateStats --section LaunchStats --section Occupancy python3 benchmarks/gpu/profile_decode.py \
           > "$OUT/ncu.log" 2>&1 || rc=1; grep -E "Duration|Throughput|Memory \[|Registers|Achieved Occ|Stall|Warp Cycles|Block Limit|Theoretical Occ" "$OUT/ncu.log" | head -40 ;;
    benchort) PYTHONPATH=/tmp/ortgpu:$PYTHONPATH TQ_ORT_LIB=$PWD/build/ort/libtq_ort_ops.so python3 benchmarks/gpu/bench_attention.py \
           > "$OUT/bench_ort.log" 2>&1 || rc=1; tail -30 "$OUT/bench_ort.log" ;;
    sass) cuobjdump -sass -arch sm_90 build/gpu/attention_dispatch.o > "$OUT/sass_all.txt" 2>&1;
          python3 - "$OUT/sass_all.txt" > "$OUT/sass_decode128_b4.txt" <<'PY'
import sys
t = open(sys.argv[1]).read().split("Function : ")
for f in t:
    if f.startswith("_ZN2tq4cuda19decode_split_kernelILi128ELb0ELb0ELb1E"):
        print(f)
PY
          rm -f "$OUT/sass_all.txt"; grep -cE "HMMA|LDS" "$OUT/sass_decode128_b4.txt" ;;
    benchring) PYTHONPATH=/tmp/ortgpu:$PYTHONPATH TQ_ORT_LIB=$PWD/build/ort/libtq_ort_ops.so python3 benchmarks/gpu/bench_attention.py \
           --recent-window 64 --contexts 16384,131072 > "$OUT/bench_ring.log" 2>&1 || rc=1; tail -12 "$OUT/bench_ring.log" ;;
    benchab) for i in $(seq "${AB_ROUNDS:-2}"); do
               for b in old new; do
                 if [ $b = old ]; then cl=build/old/libtq_cuda.so; ol=build/old/libtq_ort_ops.so
                 else cl=build/gpu/libtq_cuda.so; ol=build/ort/libtq_ort_ops.so; fi
                 mkdir -p "$OUT/ab"
                 PYTHONPATH=/tmp/ortgpu:$PYTHONPATH TQ_CUDA_LIB=$PWD/$cl TQ_ORT_LIB=$PWD/$ol OUT= python3 \
                   benchmarks/gpu/bench_attention.py --quick > "$OUT/ab/bench_${b}_$i.log" 2>&1 || rc=1
                 echo "== $b round $i"; grep -E "^\| (1|32) \|" "$OUT/ab/bench_${b}_$i.log"
               done
             done ;;
    bench) python3 benchmarks/gpu/bench_attention.py > "$OUT/bench.log" 2>&1 || rc=1; tail -60 "$OUT/bench.log" ;;
  esac
done
exit $rc
