"""Where a decode step's time goes in a plain ORT session (CUDA EP, IOBinding, shared buffer): ORT's own
profiler, for TurboQuantAttention (4-bit) and ORT's fp16 GroupQueryAttention side by side.

    PYTHONPATH=/tmp/ortgpu:. TQ_ORT_LIB=build/ort/libtq_ort_ops.so python3 benchmarks/gpu/profile_session.py

Per op and context it prints the medians over the profiled runs of: `model_run` (the whole Run, host
side), the node's `kernel_time` (the host time of the op's Compute: checks, allocations, launches; CUDA
launches are asynchronous) and the wall time of `run_with_iobinding` (host + GPU, synchronized). Profiling
adds its own overhead, so compare the ops with each other, not with benchmarks/results/gpu.md.
"""
import glob
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
import bench_attention as ba  # noqa: E402
import torch  # noqa: E402

from tq_ort import codec  # noqa: E402


def profiled(case_factory, iters: int = 300) -> dict:
    import onnxruntime as ort
    real = ort.SessionOptions
    prefix = os.path.join(tempfile.mkdtemp(), "prof")

    def opts():  # every session the case makes profiles into a fresh file
        so = real()
        so.enable_profiling = True
        so.profile_file_prefix = prefix
        return so
    ort.SessionOptions = opts
    try:
        c = case_factory()
    finally:
        ort.SessionOptions = real
    for _ in range(20):
        c()
    torch.cuda.synchronize()
    walls = []
    for _ in range(iters):
        t0 = time.perf_counter()
        c()
        torch.cuda.synchronize()
        walls.append((time.perf_counter() - t0) * 1e6)
    c.sess.end_profiling()
    events = json.load(open(sorted(glob.glob(prefix + "*.json"))[-1]))
    runs = [e["dur"] for e in events if e.get("name") == "model_run"][-iters:]
    nodes = [e["dur"] for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")][-iters:]
    return {"model_run_us": statistics.median(runs), "node_us": statistics.median(nodes),
            "wall_us": statistics.median(walls)}


def main() -> None:
    lib = os.environ.get("TQ_ORT_LIB")
    for ctx in (1024, 131072):
        cap = ctx + 16
        cases = {"gqa_fp16": lambda: ba.OrtCase(ba._gqa_model(1, cap, False), 1, ctx, cap, (1, ba.HKV, cap, ba.D),
                                                torch.float16)}
        if lib:
            cases["tq4"] = lambda: ba.OrtCase(ba._tq_model(1, cap, 4, 4), 1, ctx, cap,
                                              (1, ba.HKV, cap, codec.row_bytes(ba.D, 4)), torch.uint8, lib=lib)
        for name, make in cases.items():
            r = profiled(make)
            print(f"ctx={ctx:6d} {name:9s} model_run {r['model_run_us']:6.1f} us  node Compute {r['node_us']:6.1f} us  "
                  f"wall {r['wall_us']:6.1f} us", flush=True)


if __name__ == "__main__":
    main()
