"""Decode-step kernel time (CUDA-graph replay of the whole TurboQuantAttention step through the C ABI)
for a few shapes, one line per shape: for comparing tuning knobs side by side, e.g.

    for s in 2 3; do TQ_CUDA_STAGES=$s python benchmarks/gpu/tune_decode.py; done

(TQ_CUDA_STAGES / TQ_CUDA_SPLITS: docs/cuda.md). B, context, K/V bits per shape; Hq=32, Hkv=8, d=128.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import bench_attention as ba  # noqa: E402

SHAPES = [(1, 1024, 4, 4), (1, 16384, 4, 4), (1, 131072, 4, 4), (1, 131072, 4, 3), (32, 16384, 4, 4)]


def main() -> None:
    lib = ba.tqcuda.load()
    knobs = {k: v for k, v in os.environ.items() if k.startswith("TQ_CUDA_")}
    for B, ctx, kb, vb in SHAPES:
        k = ba.TQKernel(lib, B, ctx, kb, vb)
        us = ba.graph_time(k)
        print(f"{knobs or 'default'} B={B} ctx={ctx} K{kb}V{vb}: {us:.1f} us, {k.bytes / (us * 1e-6) / 1e12:.2f} TB/s", flush=True)
        del k


if __name__ == "__main__":
    main()
