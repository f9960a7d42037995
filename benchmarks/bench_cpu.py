"""CPU benchmark of the TurboQuant ops (not a test).

Encode throughput (vectors/s) for d in {64, 128, 256} x bits {1, 2, 3, 4, 8}, and decode-step
latency of TurboQuantAttention (4-bit and 3-bit caches, shared buffer through IOBinding) against ONNX
Runtime's own com.microsoft.GroupQueryAttention with float32 and float16 caches (shared buffer), at
B=1, Hq=32, Hkv=8, d=128. Prints tables and writes benchmarks/results/cpu.md.

    python benchmarks/bench_cpu.py [--quick] [--contexts 1024,4096,16384,32768] [--out PATH]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnx.helper as oh
import onnxruntime as ort

from tq_ort import codec
from tq_ort.library import library_path

F32, F16, U8, I32 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.UINT8, onnx.TensorProto.INT32


def make_model(nodes, inputs, outputs, inits=(), domains=("turboquant",)):
    g = oh.make_graph(nodes, "bench", inputs, outputs, initializer=list(inits))
    ops = [oh.make_opsetid("", 21)] + [oh.make_opsetid(dm, 1) for dm in domains]
    return oh.make_model(g, opset_imports=ops, ir_version=10).SerializeToString()


def session(model: bytes, custom: bool) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if custom:
        so.register_custom_ops_library(library_path())
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def timed(fn, warmup: int, reps: int, min_time: float = 0.0) -> float:
    """Median seconds of fn() over reps runs (more runs until min_time has passed)."""
    for _ in range(warmup):
        fn()
    ts = []
    t_end = time.perf_counter() + min_time
    while len(ts) < reps or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


# ---- encode ---------------------------------------------------------------------------------------

def bench_encode(d: int, bits: int, n: int, reps: int) -> float:
    rot, cb = codec.rotation(d, 0), codec.codebook(d, bits)
    node = oh.make_node("TurboQuantEncode", ["x", "rotation", "codebook"], ["rows"], domain="turboquant", bits=bits)
    model = make_model([node], [oh.make_tensor_value_info("x", F32, [n, d])],
                       [oh.make_tensor_value_info("rows", U8, None)],
                       [onnx.numpy_helper.from_array(rot, "rotation"), onnx.numpy_helper.from_array(cb, "codebook")])
    sess = session(model, True)
    x = np.random.default_rng(0).standard_normal((n, d)).astype(np.float32)
    io = sess.io_binding()
    io.bind_cpu_input("x", x)
    io.bind_output("rows")
    t = timed(lambda: sess.run_with_iobinding(io), 2, reps)
    return n / t


# ---- attention ------------------------------------------------------------------------------------

B, HQ, HKV, D = 1, 32, 8, 128


class Step:
    """One decode step (S=1) at context ctx with past/present bound to one buffer."""

    def __init__(self, sess, feeds, cache_names, caches):
        self.sess, self.io = sess, sess.io_binding()
        self.keep = list(caches)  # OrtValues wrap numpy memory: keep both alive
        for n, a in feeds.items():
            self.io.bind_cpu_input(n, a)
        self.io.bind_output("output")
        for (past, present), arr in zip(cache_names, caches):
            v = ort.OrtValue.ortvalue_from_numpy(arr)
            self.keep.append(v)
            self.io.bind_ortvalue_input(past, v)
            self.io.bind_ortvalue_output(present, v)

    def __call__(self):
        self.sess.run_with_iobinding(self.io)


def tq_step(ctx: int, bits: int, rng) -> Step:
    cap = ctx
    rot, cb = codec.rotation(D, 0), codec.codebook(D, bits)
    rb = codec.row_bytes(D, bits)
    names = ["query", "key", "value", "past_key", "past_value", "seqlens_k", "total_sequence_length", "rotation",
             "key_codebook", "value_codebook"]
    node = oh.make_node("TurboQuantAttention", names, ["output", "present_key", "present_value"], domain="turboquant",
                        num_heads=HQ, kv_num_heads=HKV, key_bits=bits, value_bits=bits)
    ins = [oh.make_tensor_value_info("query", F32, [B, 1, HQ * D]),
           oh.make_tensor_value_info("key", F32, [B, 1, HKV * D]),
           oh.make_tensor_value_info("value", F32, [B, 1, HKV * D]),
           oh.make_tensor_value_info("past_key", U8, [B, HKV, cap, rb]),
           oh.make_tensor_value_info("past_value", U8, [B, HKV, cap, rb]),
           oh.make_tensor_value_info("seqlens_k", I32, [B]),
           oh.make_tensor_value_info("total_sequence_length", I32, [])]
    outs = [oh.make_tensor_value_info("output", F32, None), oh.make_tensor_value_info("present_key", U8, None),
            oh.make_tensor_value_info("present_value", U8, None)]
    inits = [onnx.numpy_helper.from_array(rot, "rotation"), onnx.numpy_helper.from_array(cb, "key_codebook"),
             onnx.numpy_helper.from_array(cb, "value_codebook")]
    sess = session(make_model([node], ins, outs, inits), True)
    hist = rng.standard_normal((B, HKV, cap, D)).astype(np.float32)
    pk = codec.encode(hist, rot, cb)
    pv = codec.encode(hist[..., ::-1].copy(), rot, cb)
    feeds = step_feeds(ctx, np.float32, rng)
    return Step(sess, feeds, [("past_key", "present_key"), ("past_value", "present_value")], [pk, pv])


def gqa_step(ctx: int, dtype, rng) -> Step:
    cap = ctx
    et = F16 if dtype == np.float16 else F32
    names = ["query", "key", "value", "past_key", "past_value", "seqlens_k", "total_sequence_length"]
    node = oh.make_node("GroupQueryAttention", names, ["output", "present_key", "present_value"],
                        domain="com.microsoft", num_heads=HQ, kv_num_heads=HKV)
    ins = [oh.make_tensor_value_info("query", et, [B, 1, HQ * D]),
           oh.make_tensor_value_info("key", et, [B, 1, HKV * D]),
           oh.make_tensor_value_info("value", et, [B, 1, HKV * D]),
           oh.make_tensor_value_info("past_key", et, [B, HKV, cap, D]),
           oh.make_tensor_value_info("past_value", et, [B, HKV, cap, D]),
           oh.make_tensor_value_info("seqlens_k", I32, [B]),
           oh.make_tensor_value_info("total_sequence_length", I32, [])]
    outs = [oh.make_tensor_value_info(n, et, None) for n in ("output", "present_key", "present_value")]
    sess = session(make_model([node], ins, outs, domains=("com.microsoft",)), False)
    pk = rng.standard_normal((B, HKV, cap, D)).astype(dtype)
    pv = rng.standard_normal((B, HKV, cap, D)).astype(dtype)
    return Step(sess, step_feeds(ctx, dtype, rng), [("past_key", "present_key"), ("past_value", "present_value")],
                [pk, pv])


def step_feeds(ctx: int, dtype, rng) -> dict:
    return {"query": rng.standard_normal((B, 1, HQ * D)).astype(dtype),
            "key": rng.standard_normal((B, 1, HKV * D)).astype(dtype),
            "value": rng.standard_normal((B, 1, HKV * D)).astype(dtype),
            "seqlens_k": np.full((B,), ctx - 1, np.int32),
            "total_sequence_length": np.asarray(ctx, np.int32)}


def interleaved(steps: dict, reps: int) -> tuple[dict, dict]:
    """(median, min) ms per step, the contenders timed in turn (round robin) so that load changes on
    a shared machine hit them alike."""
    for st in steps.values():
        for _ in range(3):
            st()
    ts = {k: [] for k in steps}
    for _ in range(reps):
        for k, st in steps.items():
            t0 = time.perf_counter()
            st()
            ts[k].append(time.perf_counter() - t0)
    return ({k: statistics.median(v) * 1e3 for k, v in ts.items()}, {k: min(v) * 1e3 for k, v in ts.items()})


# ---- report ---------------------------------------------------------------------------------------

def machine() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} logical cores"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer sizes and repetitions")
    ap.add_argument("--contexts", default="1024,4096,16384,32768")
    ap.add_argument("--encode-n", type=int, default=65536, help="vectors per encode call")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "cpu.md"))
    args = ap.parse_args(argv)
    contexts = [int(c) for c in args.contexts.split(",")]
    reps = 5 if args.quick else 25
    rng = np.random.default_rng(0)
    lines = []

    def emit(s=""):
        print(s, flush=True)
        lines.append(s)

    emit("# tq-ort CPU benchmark")
    emit()
    emit(f"- machine: {machine()}")
    emit(f"- python {platform.python_version()}, onnxruntime {ort.__version__}, numpy {np.__version__}")
    emit(f"- command: `python benchmarks/{Path(__file__).name} {' '.join(argv if argv is not None else sys.argv[1:])}`"
         .replace("  ", " ").replace(" `", "`"))
    emit(f"- load average at start: {os.getloadavg()[0]:.2f} (other work on the machine skews absolute times; "
         "the attention contenders run interleaved)")
    emit(f"- threads: TQ_ORT_NUM_THREADS={os.environ.get('TQ_ORT_NUM_THREADS', 'unset (all cores)')}, "
         "ORT intra-op default")
    emit()
    emit(f"## Encode throughput (TurboQuantEncode, float32 x [{args.encode_n}, d], median of {reps})")
    emit()
    bits_list = [1, 2, 3, 4, 8]
    emit("| d | " + " | ".join(f"{b}-bit" for b in bits_list) + " |")
    emit("|---|" + "---|" * len(bits_list))
    enc = {}
    for d in [64, 128, 256]:
        for b in bits_list:
            enc[d, b] = bench_encode(d, b, args.encode_n, reps)
        emit(f"| {d} | " + " | ".join(f"{enc[d, b] / 1e6:.2f} M/s" for b in bits_list) + " |")
    emit()
    emit(f"## Decode-step attention latency (B={B}, Hq={HQ}, Hkv={HKV}, d={D}, S=1, shared buffer via IOBinding)")
    emit()
    emit("Median ms per step (best in parentheses); ratio = GroupQueryAttention time / TurboQuantAttention time, "
         "from the medians.")
    emit()
    emit("| context | TQ 4-bit | TQ 3-bit | GQA fp32 cache | GQA fp16 cache | 4-bit vs fp32 | 3-bit vs fp32 "
         "| 4-bit vs fp16 |")
    emit("|---|---|---|---|---|---|---|---|")
    ratios = {}
    for ctx in contexts:
        steps = {"tq4": tq_step(ctx, 4, rng), "tq3": tq_step(ctx, 3, rng),
                 "gqa32": gqa_step(ctx, np.float32, rng), "gqa16": gqa_step(ctx, np.float16, rng)}
        t, best = interleaved(steps, reps)
        del steps
        cell = {k: f"{t[k]:.3f} ({best[k]:.3f})" for k in t}
        ratios[ctx] = t["gqa32"] / t["tq4"]
        emit(f"| {ctx} | {cell['tq4']} | {cell['tq3']} | {cell['gqa32']} | {cell['gqa16']} "
             f"| {t['gqa32'] / t['tq4']:.2f}x | {t['gqa32'] / t['tq3']:.2f}x | {t['gqa16'] / t['tq4']:.2f}x |")
    emit()
    rb4, rb3 = codec.row_bytes(D, 4), codec.row_bytes(D, 3)
    emit(f"Cache bytes per token per layer: TQ 4-bit {2 * HKV * rb4}, TQ 3-bit {2 * HKV * rb3}, "
         f"fp16 {2 * HKV * D * 2}, fp32 {2 * HKV * D * 4}.")
    emit()
    emit("## Targets")
    emit()
    e = enc[128, 4]
    emit(f"- encode >= 1M vectors/s at d=128, 4-bit: {e / 1e6:.2f} M/s -> {'met' if e >= 1e6 else 'MISSED'}")
    long = {c: r for c, r in ratios.items() if c >= 16384}
    if long:
        ok = all(r >= 2.0 for r in long.values())
        emit("- 4-bit attention >= 2x faster than GQA with a float32 cache at 16K+: "
             + ", ".join(f"{c // 1024}K {r:.2f}x" for c, r in long.items()) + f" -> {'met' if ok else 'MISSED'}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
