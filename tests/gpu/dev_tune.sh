#!/bin/bash
# One device call for decode-kernel tuning (docs/cuda.md): kernel tests of the attention paths, the
# tune_decode.py table under a few knobs / alternative libraries, and an ncu stall breakdown.
#   tests/gpu/dev_tune.sh [ALT_LIB ...]      (libraries carried beside build/gpu/libtq_cuda.so)
export OUT=${OUT:-build/gpu/out}; mkdir -p "$OUT"
tests/gpu/run_gpu.sh prebuilt
(timeout 150 python3 tests/gpu/test_kernels.py --only=attention,ring,ring_steps > $OUT/t.log 2>&1; echo "kernel tests rc=$?")
grep -E "FAIL|passed" $OUT/t.log | head -10
python3 benchmarks/gpu/tune_decode.py
TQ_CUDA_NOPDL=1 python3 benchmarks/gpu/tune_decode.py
TQ_CUDA_STAGES=2 python3 benchmarks/gpu/tune_decode.py
for alt in "$@"; do echo "== $alt"; TQ_CUDA_LIB=$alt python3 benchmarks/gpu/tune_decode.py; done
M=""; for s in long_scoreboard short_scoreboard mio_throttle lg_throttle barrier wait math_pipe_throttle not_selected selected dispatch_stall no_instruction branch_resolving; do
  M="$M,smsp__average_warps_issue_stalled_${s}_per_issue_active.ratio"; done
CTX=131072 timeout 120 ncu --clock-control none --cache-control none -k regex:"decode_" -c 3 \
  --metrics gpu__time_duration.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed,smsp__inst_executed.sum${M} \
  python3 benchmarks/gpu/profile_decode.py > $OUT/ncu2.log 2>&1
grep -E "decode_|duration|dram__|stalled|inst_exec" $OUT/ncu2.log | sed 's/smsp__average_warps_issue_stalled_//;s/_per_issue_active.ratio//;s/  */ /g' | head -40
