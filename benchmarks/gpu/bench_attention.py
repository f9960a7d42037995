"""Decode-step attention latency on one GPU, side by side (docs/cuda.md, benchmarks/results/gpu.md).

    python benchmarks/gpu/bench_attention.py [--quick]   (after tests/gpu/build.sh; ORT parts need
    onnxruntime-gpu on PYTHONPATH and TQ_ORT_LIB pointing at the built libtq_ort_ops.so)
    python benchmarks/gpu/bench_attention.py --recent-window 64 [--contexts 16384,131072]
        (only the recent-window comparison: R = 0 vs R, 4-bit, kernel level and in an ORT session)

Rows: TurboQuantAttention 4-bit (K4/V4) and 3-bit (K3/V3) kernel-level through the C ABI (CUDA graph
replay of the whole op: RoPE-free prep, new-row encode, split-K kernel, combine) and in an ORT session
with IOBinding and a shared buffer; ORT com.microsoft.GroupQueryAttention with an fp16 cache (and int8
if this ORT accepts it); torch SDPA (enable_gqa). Medians of CUDA-event (kernel-level) or wall-clock
over synchronized loops (sessions). Bandwidth = bytes the op must read (its KV cache) / time.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests", "gpu"))
import tqcuda  # noqa: E402
from tq_ort import codec  # noqa: E402

HQ, HKV, D = 32, 8, 128
QUICK = "--quick" in sys.argv


def _arg(name, default):
    for i, a in enumerate(sys.argv):
        if a == name and i + 1 < len(sys.argv):
            return sys.argv[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return default


def median_event_time(fn, iters=50, warm=5):
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b) * 1e3)
    return statistics.median(ts)


def graph_time(fn, iters=200):
    """Median per-replay time (us) of a CUDA graph of fn, replays timed in batches of 20."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    for _ in range(5):
        g.replay()
    torch.cuda.synchronize()
    ts = []
    for _ in range(iters // 20):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(20):
            g.replay()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b) * 1e3 / 20)
    return statistics.median(ts)


def wall_time(fn, iters=100, warm=10):
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(iters // 5):
            fn()
        torch.cuda.synchronize()
        ts.append((time.perf_counter() - t0) * 1e6 / (iters // 5))
    return statistics.median(ts)


def report(lines, rows, md_name, json_name=None):
    """Print the table; with $OUT set, also write it as <md_name>.md and the rows as <json_name>.json."""
    text = "\n".join(lines)
    print("\n" + text)
    out = os.environ.get("OUT")
    if out:
        with open(os.path.join(out, md_name + ".md"), "w") as fh:
            fh.write(text + "\n")
        with open(os.path.join(out, (json_name or md_name) + ".json"), "w") as fh:
            json.dump(rows, fh)


def random_rows(B, Hkv, P, R):
    rows = torch.randint(0, 256, (B, Hkv, P, R), dtype=torch.uint8, device="cuda")
    sc = (torch.rand(B, Hkv, P, 1, device="cuda") + 0.5).float()
    rows[..., 0:4] = sc.view(torch.uint8).view(B, Hkv, P, 4)
    return rows


class TQKernel:
    """The whole TurboQuantAttention decode step through the C ABI, shared buffer (rows and, with a
    recent window R > 0, rings)."""

    def __init__(self, lib, B, ctx, kb, vb, R=0):
        self.lib = lib
        rot, kcb, vcb = codec.rotation(D, 0), codec.codebook(D, kb), codec.codebook(D, vb)
        self.Rk, self.Rv = codec.row_bytes(D, kb), codec.row_bytes(D, vb)
        cap = ctx + 16
        self.pk, self.pv = random_rows(B, HKV, cap, self.Rk), random_rows(B, HKV, cap, self.Rv)
        self.q = torch.randn(B, 1, HQ * D, device="cuda", dtype=torch.float16)
        self.k = torch.randn(B, 1, HKV * D, device="cuda", dtype=torch.float16)
        self.v = torch.randn(B, 1, HKV * D, device="cuda", dtype=torch.float16)
        self.out = torch.empty_like(self.q)
        self.sl = torch.full((B,), ctx - 1, dtype=torch.int32, device="cuda")  # ctx - 1 cached + the new token
        self.rot, self.kcb, self.vcb = (torch.from_numpy(a).cuda() for a in (rot, kcb, vcb))
        self.p = tqcuda.attention_params(
            query=tqcuda.ptr(self.q), key=tqcuda.ptr(self.k), value=tqcuda.ptr(self.v), past_key=tqcuda.ptr(self.pk),
            past_value=tqcuda.ptr(self.pv), present_key=tqcuda.ptr(self.pk), present_value=tqcuda.ptr(self.pv),
            seqlens_k=tqcuda.ptr(self.sl), rotation=tqcuda.ptr(self.rot), key_codebook=tqcuda.ptr(self.kcb),
            value_codebook=tqcuda.ptr(self.vcb), output=tqcuda.ptr(self.out), dtype=10, B=B, S=1, Hq=HQ, Hkv=HKV,
            d=D, P=cap, Pp=cap, rot_rank=1, key_bits=kb, value_bits=vb, m=D, local_window=-1)
        if R:
            self.kr = torch.randn(B, HKV, R, D, device="cuda", dtype=torch.float16)
            self.vr = torch.randn(B, HKV, R, D, device="cuda", dtype=torch.float16)
            for n, v in dict(recent_window=R, past_key_recent=tqcuda.ptr(self.kr), present_key_recent=tqcuda.ptr(self.kr),
                             past_value_recent=tqcuda.ptr(self.vr), present_value_recent=tqcuda.ptr(self.vr)).items():
                setattr(self.p, n, v)
        self.wsb = lib.tq_cuda_attention_workspace(self.p)
        self.ws = torch.empty(self.wsb, dtype=torch.uint8, device="cuda")
        self.bytes = B * HKV * (ctx - 1) * (self.Rk + self.Rv)

    def __call__(self):
        tqcuda.check(self.lib, self.lib.tq_cuda_attention(self.p, tqcuda.ptr(self.ws), self.wsb,
                                                          torch.cuda.current_stream().cuda_stream), "attention")


def sdpa_case(B, ctx):
    q = torch.randn(B, HQ, 1, D, device="cuda", dtype=torch.float16)
    k = torch.randn(B, HKV, ctx, D, device="cuda", dtype=torch.float16)
    v = torch.randn(B, HKV, ctx, D, device="cuda", dtype=torch.float16)

    def fn():
        return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    return fn, B * HKV * ctx * D * 2 * 2


# ------------------------------------------------------------------------------- ORT sessions
def ort_available():
    try:
        import onnxruntime as ort
        return "CUDAExecutionProvider" in ort.get_available_providers(), ort.__version__
    except Exception as e:  # noqa: BLE001
        return False, repr(e)


def _gqa_model(B, cap, quant):
    import onnx
    from onnx import TensorProto as TP, helper as h
    kvt = TP.INT8 if quant else TP.FLOAT16
    ins = [h.make_tensor_value_info("query", TP.FLOAT16, [B, 1, HQ * D]),
           h.make_tensor_value_info("key", TP.FLOAT16, [B, 1, HKV * D]),
           h.make_tensor_value_info("value", TP.FLOAT16, [B, 1, HKV * D]),
           h.make_tensor_value_info("past_key", kvt, [B, HKV, cap, D]),
           h.make_tensor_value_info("past_value", kvt, [B, HKV, cap, D]),
           h.make_tensor_value_info("seqlens_k", TP.INT32, [B]),
           h.make_tensor_value_info("total_sequence_length", TP.INT32, [])]
    names = [i.name for i in ins]
    attrs = dict(num_heads=HQ, kv_num_heads=HKV)
    inits = []
    if quant:
        names += ["", "", "", "", "", "k_scale", "v_scale"]
        inits = [h.make_tensor("k_scale", TP.FLOAT, [1], [0.02]), h.make_tensor("v_scale", TP.FLOAT, [1], [0.02])]
        attrs.update(k_quant_type="PER_TENSOR", v_quant_type="PER_TENSOR", kv_cache_bit_width=8)
    node = h.make_node("GroupQueryAttention", names, ["output", "present_key", "present_value"],
                       domain="com.microsoft", **attrs)
    outs = [h.make_tensor_value_info("output", TP.FLOAT16, [B, 1, HQ * D]),
            h.make_tensor_value_info("present_key", kvt, [B, HKV, cap, D]),
            h.make_tensor_value_info("present_value", kvt, [B, HKV, cap, D])]
    g = h.make_graph([node], "gqa", ins, outs, initializer=inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 21), h.make_opsetid("com.microsoft", 1)])
    m.ir_version = 10
    return m.SerializeToString()


def _tq_model(B, cap, kb, vb, R=0):
    from onnx import TensorProto as TP, helper as h, numpy_helper as nh
    Rk, Rv = codec.row_bytes(D, kb), codec.row_bytes(D, vb)
    ins = [h.make_tensor_value_info("query", TP.FLOAT16, [B, 1, HQ * D]),
           h.make_tensor_value_info("key", TP.FLOAT16, [B, 1, HKV * D]),
           h.make_tensor_value_info("value", TP.FLOAT16, [B, 1, HKV * D]),
           h.make_tensor_value_info("past_key", TP.UINT8, [B, HKV, cap, Rk]),
           h.make_tensor_value_info("past_value", TP.UINT8, [B, HKV, cap, Rv]),
           h.make_tensor_value_info("seqlens_k", TP.INT32, [B]),
           h.make_tensor_value_info("total_sequence_length", TP.INT32, [])]
    inits = [nh.from_array(codec.rotation(D, 0), "rotation"), nh.from_array(codec.codebook(D, kb), "key_codebook"),
             nh.from_array(codec.codebook(D, vb), "value_codebook")]
    names = [i.name for i in ins] + ["rotation", "key_codebook", "value_codebook"]
    onames = ["output", "present_key", "present_value"]
    outs = [h.make_tensor_value_info("output", TP.FLOAT16, [B, 1, HQ * D]),
            h.make_tensor_value_info("present_key", TP.UINT8, [B, HKV, cap, Rk]),
            h.make_tensor_value_info("present_value", TP.UINT8, [B, HKV, cap, Rv])]
    if R:
        rings = [h.make_tensor_value_info(n, TP.FLOAT16, [B, HKV, R, D]) for n in ("past_key_recent", "past_value_recent")]
        ins += rings
        names += ["", "", ""] + [r.name for r in rings]
        onames += ["present_key_recent", "present_value_recent"]
        outs += [h.make_tensor_value_info(n, TP.FLOAT16, [B, HKV, R, D])
                 for n in ("present_key_recent", "present_value_recent")]
    node = h.make_node("TurboQuantAttention", names, onames, domain="turboquant", num_heads=HQ,
                       kv_num_heads=HKV, key_bits=kb, value_bits=vb, recent_window=R)
    g = h.make_graph([node], "tq", ins, outs, initializer=inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 21), h.make_opsetid("turboquant", 1)])
    m.ir_version = 10
    return m.SerializeToString()


class OrtCase:
    """One op in an InferenceSession on the CUDA EP with IOBinding and a shared buffer; graph=True turns on
    the EP's CUDA graph (`enable_cuda_graph`: the first runs capture, later runs replay; the bound
    addresses and the CPU input total_sequence_length are then fixed, as in a decode loop that updates
    its buffers in place)."""

    def __init__(self, model_bytes, B, ctx, cap, kv_shape, kv_torch_dtype, lib=None, R=0, graph=False):
        import onnxruntime as ort
        so = ort.SessionOptions()
        so.log_severity_level = 3
        if lib:
            so.register_custom_ops_library(lib)
        prov = ("CUDAExecutionProvider", {"enable_cuda_graph": "1"}) if graph else "CUDAExecutionProvider"
        self.sess = ort.InferenceSession(model_bytes, so, providers=[prov])
        self.t = dict(
            query=torch.randn(B, 1, HQ * D, device="cuda", dtype=torch.float16),
            key=torch.randn(B, 1, HKV * D, device="cuda", dtype=torch.float16),
            value=torch.randn(B, 1, HKV * D, device="cuda", dtype=torch.float16),
            seqlens_k=torch.full((B,), ctx - 1, dtype=torch.int32, device="cuda"),
            output=torch.empty(B, 1, HQ * D, device="cuda", dtype=torch.float16))
        if kv_torch_dtype == torch.uint8 and kv_shape[-1] != D:
            self.t["past_key"] = random_rows(*kv_shape[:3], kv_shape[3])
            self.t["past_value"] = random_rows(*kv_shape[:3], kv_shape[3])
        elif kv_torch_dtype == torch.int8:
            self.t["past_key"] = torch.randint(-100, 100, kv_shape, dtype=torch.int8, device="cuda")
            self.t["past_value"] = torch.randint(-100, 100, kv_shape, dtype=torch.int8, device="cuda")
        else:
            self.t["past_key"] = torch.randn(kv_shape, device="cuda", dtype=kv_torch_dtype)
            self.t["past_value"] = torch.randn(kv_shape, device="cuda", dtype=kv_torch_dtype)
        self.total = np.array(ctx, dtype=np.int32)
        io = self.sess.io_binding()
        npd = {torch.float16: np.float16, torch.int32: np.int32, torch.uint8: np.uint8, torch.int8: np.int8}
        for n in ("query", "key", "value", "past_key", "past_value", "seqlens_k"):
            x = self.t[n]
            io.bind_input(n, "cuda", 0, npd[x.dtype], list(x.shape), x.data_ptr())
        io.bind_cpu_input("total_sequence_length", self.total)
        o = self.t["output"]
        io.bind_output("output", "cuda", 0, np.float16, list(o.shape), o.data_ptr())
        for n, src in (("present_key", "past_key"), ("present_value", "past_value")):
            x = self.t[src]
            io.bind_output(n, "cuda", 0, npd[x.dtype], list(x.shape), x.data_ptr())  # shared buffer
        if R:  # recent-window rings, shared like the rows
            for n in ("key", "value"):
                x = self.t[f"{n}_ring"] = torch.randn(B, HKV, R, D, device="cuda", dtype=torch.float16)
                io.bind_input(f"past_{n}_recent", "cuda", 0, np.float16, list(x.shape), x.data_ptr())
                io.bind_output(f"present_{n}_recent", "cuda", 0, np.float16, list(x.shape), x.data_ptr())
        self.io = io

    def __call__(self):
        self.sess.run_with_iobinding(self.io)


def recent_window_main(R):
    """Decode-step latency with recent_window = 0 and R (B=1, 4-bit K/V, fp16), shared buffers:
    kernel level (graph replay through the C ABI) and in an ORT session (IOBinding). The two
    variants are timed alternately, three rounds each; the table gives the median of the rounds."""
    import onnxruntime as ort
    lib = tqcuda.load()
    props = torch.cuda.get_device_properties(0)
    tq_lib = os.environ.get("TQ_ORT_LIB")
    ctxs = [int(x) for x in _arg("--contexts", "16384,131072").split(",")]
    print(f"GPU {props.name}, {props.multi_processor_count} SMs; torch {torch.__version__}; CUDA {torch.version.cuda}; "
          f"onnxruntime {ort.__version__}; TQ_ORT_LIB={tq_lib}", flush=True)
    rows = []
    for ctx in ctxs:
        cap = ctx + 16
        ks = {r: TQKernel(lib, 1, ctx, 4, 4, R=r) for r in (0, R)}
        os_ = {}
        if tq_lib:
            for r in (0, R):
                os_[r] = OrtCase(_tq_model(1, cap, 4, 4, R=r), 1, ctx, cap, (1, HKV, cap, codec.row_bytes(D, 4)),
                                 torch.uint8, lib=tq_lib, R=r)
        kt = {r: [] for r in ks}
        ot = {r: [] for r in os_}
        for _ in range(3):
            for r in (0, R):
                kt[r].append(graph_time(ks[r]))
                if r in os_:
                    ot[r].append(wall_time(os_[r], iters=200, warm=20))
        row = {"ctx": ctx, "R": R}
        for r in (0, R):
            row[f"kernel_R{r}_us"] = statistics.median(kt[r])
            row[f"kernel_R{r}_rounds"] = kt[r]
            if r in os_:
                row[f"ort_R{r}_us"] = statistics.median(ot[r])
                row[f"ort_R{r}_rounds"] = ot[r]
        print(json.dumps(row), flush=True)
        rows.append(row)
        del ks, os_
        torch.cuda.empty_cache()
    lines = [f"GPU: {props.name} ({props.multi_processor_count} SMs), torch {torch.__version__}, CUDA {torch.version.cuda}, "
             f"onnxruntime {ort.__version__}", "",
             f"| ctx | ORT session R=0 us | ORT session R={R} us | delta | kernel (graph) R=0 us | kernel R={R} us | delta |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        o0, o1 = r.get("ort_R0_us"), r.get(f"ort_R{R}_us")
        k0, k1 = r["kernel_R0_us"], r[f"kernel_R{R}_us"]
        od = f"{o1 - o0:+.1f}" if o0 and o1 else "n/a"
        lines.append(f"| {r['ctx']} | {o0 or float('nan'):.1f} | {o1 or float('nan'):.1f} | {od} | {k0:.1f} | {k1:.1f} | "
                     f"{k1 - k0:+.1f} |")
    report(lines, rows, "recent_window")


def main():
    if _arg("--recent-window", None):
        return recent_window_main(int(_arg("--recent-window", "64")))
    lib = tqcuda.load()
    props = torch.cuda.get_device_properties(0)
    have_ort, ort_ver = ort_available()
    tq_lib = os.environ.get("TQ_ORT_LIB")
    print(f"GPU {props.name}, {props.multi_processor_count} SMs; torch {torch.__version__}; CUDA {torch.version.cuda}; "
          f"onnxruntime {ort_ver} (CUDA EP: {have_ort}); TQ_ORT_LIB={tq_lib}", flush=True)
    # HBM ceiling: device-to-device copy
    a = torch.empty(2 * 1024**3, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    t = median_event_time(lambda: b.copy_(a), iters=10)
    copy_bw = 2 * a.numel() / (t * 1e-6) / 1e12
    del a, b
    print(f"copy bandwidth (read+write): {copy_bw:.2f} TB/s", flush=True)
    cases = [(1, c) for c in (1024, 4096, 16384, 65536, 131072)] + [(8, 16384), (32, 16384)]
    if QUICK:
        cases = [(1, 16384), (1, 131072), (32, 16384)]
    rows = []
    for B, ctx in cases:
        r = {"B": B, "ctx": ctx}
        for kb in (4, 3):
            k = TQKernel(lib, B, ctx, kb, kb)
            tk = graph_time(k)
            r[f"tq{kb}_kernel_us"] = tk
            r[f"tq{kb}_TBps"] = k.bytes / (tk * 1e-6) / 1e12
            r[f"tq{kb}_bytes"] = k.bytes
            del k
        fn, by = sdpa_case(B, ctx)
        r["sdpa_us"] = graph_time(fn)
        r["sdpa_TBps"] = by / (r["sdpa_us"] * 1e-6) / 1e12
        del fn
        if have_ort:
            cap = ctx + 16
            for graph, sfx in ((False, "us"), (True, "graph_us")):  # plain session, then with the EP's CUDA graph
                cases = [(f"{name}_{sfx}", lambda q=quant: OrtCase(_gqa_model(B, cap, q), B, ctx, cap, (B, HKV, cap, D),
                                                                   torch.int8 if q else torch.float16, graph=graph))
                         for name, quant in (("gqa_fp16", False), ("gqa_int8", True))]
                if tq_lib:
                    cases += [(f"tq{kb}_ort_{sfx}", lambda kb=kb: OrtCase(
                        _tq_model(B, cap, kb, kb), B, ctx, cap, (B, HKV, cap, codec.row_bytes(D, kb)), torch.uint8,
                        lib=tq_lib, graph=graph)) for kb in ((4, 3) if not graph else (4,))]
                for key, make in cases:
                    try:
                        c = make()
                        r[key] = wall_time(c)
                        del c
                    except Exception as e:  # noqa: BLE001
                        r[key] = None
                        r[key[:-len("_us")] + "_err"] = repr(e)[:300]
        torch.cuda.empty_cache()
        rows.append(r)
        print(json.dumps(r), flush=True)
    # encode throughput: 1M vectors d=128 fp16 -> 4-bit rows
    n = 1 << 20
    x = torch.randn(n, D, device="cuda", dtype=torch.float16)
    enc = {}
    for bits in (4, 3):
        R = codec.row_bytes(D, bits)
        out = torch.empty(n, R, dtype=torch.uint8, device="cuda")
        rot, cb = torch.from_numpy(codec.rotation(D, 0)).cuda(), torch.from_numpy(codec.codebook(D, bits)).cuda()

        def fn():
            tqcuda.check(lib, lib.tq_cuda_encode(x.data_ptr(), 10, n, D, rot.data_ptr(), 1, cb.data_ptr(), bits, 0,
                                                 None, 0, out.data_ptr(), torch.cuda.current_stream().cuda_stream),
                         "encode")
        te = median_event_time(fn, iters=20)
        enc[bits] = (te, (n * D * 2 + n * R) / (te * 1e-6) / 1e12)
        print(f"encode 1M x d=128 fp16 -> {bits}-bit rows: {te:.1f} us, {enc[bits][1]:.2f} TB/s", flush=True)
    # table
    def f(v):
        return "n/a" if v is None else f"{v:.1f}"
    lines = [f"GPU: {props.name} ({props.multi_processor_count} SMs), torch {torch.__version__}, CUDA {torch.version.cuda}, "
             f"onnxruntime {ort_ver}; copy bandwidth {copy_bw:.2f} TB/s (read+write)", "",
             "| B | ctx | TQ4 kernel us | TQ4 TB/s | TQ4 ORT us | TQ3 kernel us | TQ3 TB/s | TQ3 ORT us | "
             "ORT GQA fp16 us | ORT GQA int8 us | SDPA us | SDPA TB/s | TQ4 ORT+graph us | GQA fp16 ORT+graph us | "
             "GQA int8 ORT+graph us |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['B']} | {r['ctx']} | {f(r['tq4_kernel_us'])} | {r['tq4_TBps']:.2f} | {f(r.get('tq4_ort_us'))} | "
                     f"{f(r['tq3_kernel_us'])} | {r['tq3_TBps']:.2f} | {f(r.get('tq3_ort_us'))} | "
                     f"{f(r.get('gqa_fp16_us'))} | {f(r.get('gqa_int8_us'))} | {f(r['sdpa_us'])} | {r['sdpa_TBps']:.2f} | "
                     f"{f(r.get('tq4_ort_graph_us'))} | {f(r.get('gqa_fp16_graph_us'))} | {f(r.get('gqa_int8_graph_us'))} |")
    lines.append("")
    for bits, (te, bw) in enc.items():
        lines.append(f"Encode 1M vectors d=128 fp16 -> {bits}-bit rows: {te:.1f} us ({bw:.2f} TB/s on bytes read+written)")
    errs = {k: v for r in rows for k, v in r.items() if k.endswith("_err")}
    if errs:
        lines.append("")
        lines.append("Errors: " + json.dumps(errs)[:1500])
    report(lines, rows, "gpu_table", "bench")


if __name__ == "__main__":
    main()
