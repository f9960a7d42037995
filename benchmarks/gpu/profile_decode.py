"""One TurboQuantAttention decode step (B=1, Hq=32, Hkv=8, d=128, 128K context, 4-bit), for ncu."""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
import bench_attention as ba  # noqa: E402

lib = ba.tqcuda.load()
for kb in (4, 3):
    k = ba.TQKernel(lib, 1, int(os.environ.get("CTX", 131072)), kb, kb)
    k()
    torch.cuda.synchronize()
