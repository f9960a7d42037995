"""Encode throughput of the CUDA kernel library: 1M vectors -> rows, side by side for one or more builds.

    python3 benchmarks/gpu/bench_encode.py [--libs build/gpu/libtq_cuda.so,build/gpu/libv13.so] [--n 1048576]

Bandwidth counts the bytes the kernel must move: n*d input elements read plus n rows written. The
copy bandwidth (a torch device-to-device copy, read + write) measured in the same run is the yardstick
for the issue's "encode at >= 50% of HBM bandwidth" target. Medians of CUDA-event timings; the
libraries run interleaved, case by case. Writes encode.json under $OUT when OUT is set.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tests", "gpu"))
sys.path.insert(0, os.path.dirname(__file__))
from tq_ort import codec  # noqa: E402
import tqcuda  # noqa: E402
from bench_attention import median_event_time as median_us  # noqa: E402

TDT = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
CASES = [(128, 4, "float16"), (128, 3, "float16"), (128, 2, "float16"), (64, 4, "float16"),
         (256, 4, "float16"), (128, 4, "bfloat16"), (128, 4, "float32"), (128, 8, "float16")]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--libs", default=os.environ.get("TQ_CUDA_LIB", "build/gpu/libtq_cuda.so"),
                    help="comma-separated kernel libraries to compare (the first is the one reported)")
    ap.add_argument("--n", type=int, default=1 << 20, help="vectors per call")
    ap.add_argument("--cases", type=int, default=len(CASES), help="run only the first N cases")
    args = ap.parse_args()
    paths = args.libs.split(",")
    libs = [tqcuda.load(p) for p in paths]
    props = torch.cuda.get_device_properties(0)
    a = torch.empty(2 * 1024**3, dtype=torch.uint8, device="cuda")  # the yardstick of bench_attention.py
    b = torch.empty_like(a)
    t = median_us(lambda: b.copy_(a), iters=10)
    copy_bw = 2 * a.numel() / (t * 1e-6) / 1e12
    del a, b
    print(f"GPU {props.name}, torch {torch.__version__}; copy bandwidth (read+write) {copy_bw:.2f} TB/s")
    n = args.n
    stream = tqcuda.stream_of(torch)
    rows = []
    for d, bits, dt in CASES[:args.cases]:
        x = torch.randn(n, d, device="cuda", dtype=TDT[dt])
        R = codec.row_bytes(d, bits)
        rot = torch.from_numpy(codec.rotation(d, 0)).cuda()
        cb = torch.from_numpy(codec.codebook(d, bits)).cuda()
        outs = [torch.empty(n, R, dtype=torch.uint8, device="cuda") for _ in libs]
        moved = n * d * x.element_size() + n * R
        r = {"d": d, "bits": bits, "dtype": dt, "n": n, "bytes": moved}
        for path, lib, out in zip(paths, libs, outs):
            def fn(lib=lib, out=out):
                tqcuda.check(lib, lib.tq_cuda_encode(x.data_ptr(), tqcuda.DT[dt], n, d, rot.data_ptr(), 1,
                                                     cb.data_ptr(), bits, 0, None, 0, out.data_ptr(), stream),
                             "encode")
            us = median_us(fn)
            r[os.path.basename(path)] = {"us": us, "TBps": moved / (us * 1e-6) / 1e12}
        if len(outs) > 1:  # the builds must agree on every code byte (the scale is exact to 1e-5 only)
            r["codes_identical"] = all(bool(torch.equal(outs[0][:, 4:], o[:, 4:])) for o in outs[1:])
        rows.append(r)
        del x, outs
        torch.cuda.empty_cache()
    names = [os.path.basename(p) for p in paths]
    head = "| d | bits | dtype | " + " | ".join(f"{nm} us | {nm} TB/s | % of copy" for nm in names) + \
        (" | speedup | codes identical |" if len(names) > 1 else " |")
    print(head)
    print("|" + "---|" * (3 + 3 * len(names) + (2 if len(names) > 1 else 0)))
    for r in rows:
        cells = [f"{r[nm]['us']:.1f} | {r[nm]['TBps']:.2f} | {100 * r[nm]['TBps'] / copy_bw:.0f}%" for nm in names]
        extra = (f" | {r[names[1]]['us'] / r[names[0]]['us']:.2f}x | {r['codes_identical']} |" if len(names) > 1 else " |")
        print(f"| {r['d']} | {r['bits']} | {r['dtype']} | " + " | ".join(cells) + extra)
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "encode.json"), "w") as f:
            json.dump({"gpu": props.name, "torch": torch.__version__, "copy_TBps": copy_bw, "libs": paths,
                       "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
