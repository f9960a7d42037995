"""Prefill step of TurboQuantAttention through the C ABI: S new tokens on top of `past` cached rows.

    python3 benchmarks/gpu/bench_prefill.py [--libs build/gpu/libtq_cuda.so] [--S 1024] [--past 0,4096,16384]
                                            [--dtype float16] [--qjl M]

Llama-3-8B attention shape (Hq = 32, Hkv = 8, d = 128), fp16, 4-bit keys and values, shared buffer,
B = 1 (--qjl M: keys with an M-bit QJL sketch). Reports the median of CUDA-event timings per step and the same step with fp16 torch SDPA
(causal over past + S positions, explicit mask) for scale. TQ_CUDA_PREFILL=1 times the v14 rows kernel
(+ simple kernel), =0 the simple kernel alone (the process reads it once). Writes prefill-<mode>-<dtype>[-qjl<M>].json under $OUT when OUT is set.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tests", "gpu"))
sys.path.insert(0, os.path.dirname(__file__))
from tq_ort import codec  # noqa: E402
import tqcuda  # noqa: E402
from bench_attention import median_event_time as median_us  # noqa: E402

HQ, HKV, D = 32, 8, 128


DTYPES = {"float16": (torch.float16, 10), "bfloat16": (torch.bfloat16, 16), "float32": (torch.float32, 1)}


def tq_step(lib, S: int, past: int, bits: int = 4, dtype: str = "float16", qjl: int = 0):
    cap = past + S + 16
    R = codec.row_bytes(D, bits)
    pk = torch.randint(0, 256, (1, HKV, cap, codec.row_bytes(D, bits, bool(qjl), qjl or None)), dtype=torch.uint8,
                       device="cuda")
    pv = torch.randint(0, 256, (1, HKV, cap, R), dtype=torch.uint8, device="cuda")
    small = torch.tensor([0, 0, 0x80, 0x3c], dtype=torch.uint8, device="cuda")  # 0.015625
    for t in (pk, pv):  # scales: small positive floats, so scores stay finite
        t[..., :4] = small
    sk = None
    if qjl:  # the residual norm too; the signs stay random
        o = codec.layout(D, bits, True, qjl).rnorm_offset
        pk[..., o:o + 4] = small
        sk = torch.from_numpy(codec.qjl_matrix(qjl, D, 0)).cuda()
    tdt, code = DTYPES[dtype]
    q = torch.randn(1, S, HQ * D, device="cuda", dtype=tdt)
    k = torch.randn(1, S, HKV * D, device="cuda", dtype=tdt)
    v = torch.randn(1, S, HKV * D, device="cuda", dtype=tdt)
    out = torch.empty_like(q)
    sl = torch.full((1,), past + S - 1, dtype=torch.int32, device="cuda")
    rot, cb = torch.from_numpy(codec.rotation(D, 0)).cuda(), torch.from_numpy(codec.codebook(D, bits)).cuda()
    p = tqcuda.attention_params(
        query=tqcuda.ptr(q), key=tqcuda.ptr(k), value=tqcuda.ptr(v), past_key=tqcuda.ptr(pk), past_value=tqcuda.ptr(pv),
        present_key=tqcuda.ptr(pk), present_value=tqcuda.ptr(pv), seqlens_k=tqcuda.ptr(sl), rotation=tqcuda.ptr(rot),
        key_codebook=tqcuda.ptr(cb), value_codebook=tqcuda.ptr(cb), qjl=tqcuda.ptr(sk), output=tqcuda.ptr(out),
        dtype=code, B=1, S=S, Hq=HQ, Hkv=HKV, d=D, P=cap, Pp=cap, rot_rank=1, key_bits=bits, value_bits=bits,
        use_qjl=1 if qjl else 0, m=qjl or D, local_window=-1)
    wsb = lib.tq_cuda_attention_workspace(p)
    ws = torch.empty(max(wsb, 1), dtype=torch.uint8, device="cuda")
    keep = (pk, pv, q, k, v, out, sl, rot, cb, sk, ws)

    def fn():
        tqcuda.check(lib, lib.tq_cuda_attention(p, tqcuda.ptr(ws), wsb, torch.cuda.current_stream().cuda_stream),
                     "attention")
    fn.keep = keep
    return fn, out


def sdpa_step(S: int, past: int):
    q = torch.randn(1, HQ, S, D, device="cuda", dtype=torch.float16)
    k = torch.randn(1, HKV, past + S, D, device="cuda", dtype=torch.float16)
    v = torch.randn_like(k)
    # causal with an offset: query i sees keys <= past + i
    mask = torch.ones(S, past + S, dtype=torch.bool, device="cuda").tril(diagonal=past)
    return lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--libs", default=os.environ.get("TQ_CUDA_LIB", "build/gpu/libtq_cuda.so"))
    ap.add_argument("--S", type=int, default=1024, help="new tokens per step")
    ap.add_argument("--past", default="0,4096,16384", help="cached rows before the step (comma-separated)")
    ap.add_argument("--dtype", default="float16", choices=sorted(DTYPES), help="query/key/value type of the TQ step")
    ap.add_argument("--qjl", type=int, default=0, help="QJL sketch bits per key (0: none)")
    args = ap.parse_args()
    lib = tqcuda.load(args.libs.split(",")[0])
    props = torch.cuda.get_device_properties(0)
    mode = {"0": "simple kernel only (TQ_CUDA_PREFILL=0)", "1": "rows kernel v14 (TQ_CUDA_PREFILL=1)"}.get(
        os.environ.get("TQ_CUDA_PREFILL", ""), "tensor cores (default)")
    qj = f", QJL m = {args.qjl}" if args.qjl else ""
    print(f"GPU {props.name}, torch {torch.__version__}; TurboQuantAttention prefill, {mode}, {args.dtype}{qj}")
    rows = []
    print("| past | S | TQ4 step ms | fp16 SDPA (masked) ms |")
    print("|---|---|---|---|")
    for past in (int(x) for x in args.past.split(",")):
        fn, out = tq_step(lib, args.S, past, dtype=args.dtype, qjl=args.qjl)
        t = median_us(fn, iters=5, warm=2) / 1e3
        finite = bool(torch.isfinite(out).all())
        ts = median_us(sdpa_step(args.S, past), iters=10, warm=3) / 1e3
        rows.append({"past": past, "S": args.S, "dtype": args.dtype, "qjl": args.qjl, "tq4_ms": t, "sdpa_ms": ts, "finite": finite})
        print(f"| {past} | {args.S} | {t:.2f} | {ts:.2f} |" + ("" if finite else " (non-finite output!)"))
        del fn, out
        torch.cuda.empty_cache()
    if os.environ.get("OUT"):
        name = f"prefill-{os.environ.get('TQ_CUDA_PREFILL', 'default')}-{args.dtype}" + (f"-qjl{args.qjl}" if args.qjl else "")
        with open(os.path.join(os.environ["OUT"], name + ".json"), "w") as f:
            json.dump({"gpu": props.name, "mode": mode, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
