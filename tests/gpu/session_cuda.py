"""On a GPU machine: the generation session on the CUDA EP with a device-resident compressed cache,
against the same session on the CPU EP (tiny Llama export, original and rewritten at 8 / 4 bits).

    PYTHONPATH=/tmp/ortgpu:. TQ_ORT_LIBRARY=build/ort/libtq_ort_ops.so python3 tests/gpu/session_cuda.py DIR
DIR holds orig.onnx, k8.onnx, k4.onnx (+ config.json), and optionally k4r8.onnx (K4V4 + an exact
recent window of 8: the ring wraps) and bal.onnx (the balanced preset: K4V3 + 64 exact, covering this
whole run). Prints a table; exits 1 on a mismatch.
"""
import os
import sys

import numpy as np
import onnxruntime as ort

from tq_ort.session import DecoderSession


def run(path, device, steps=24, shared=None, feed=None):
    """Greedy run; with `feed`, those tokens are fed instead of its own (teacher forcing)."""
    s = DecoderSession(path, device=device, max_length=64, shared_buffer=shared)
    s.reset()
    ids = np.random.default_rng(0).integers(0, 256, (1, 7))
    logits = [s.step(ids)]
    toks = []
    for i in range(steps):
        toks.append(int(logits[-1].argmax()))
        logits.append(s.step(np.array([[feed[i] if feed else toks[-1]]])))
    where = {v.device_name() for v in s._cache.values()}
    return np.stack(logits), toks, where, s


def main(d):
    assert "CUDAExecutionProvider" in ort.get_available_providers(), ort.get_available_providers()
    bad = 0
    names = ["orig", "k8", "k4"] + [n for n in ("k4r8", "bal") if os.path.exists(f"{d}/{n}.onnx")]
    for name in names:
        for shared in ((None,) if name == "orig" else (True, False)):
            lc, tc, wc, _ = run(f"{d}/{name}.onnx", "cpu", shared=shared)
            lg, tg, wg, sg = run(f"{d}/{name}.onnx", "cuda", shared=shared, feed=tc)  # same tokens fed
            rel = float(np.abs(lc - lg).max() / (lc.max() - lc.min()))
            agree = sum(a == b for a, b in zip(tc, tg))
            # the 4-bit CUDA decode path rounds the rotated query and weights to fp16 (docs/cuda.md)
            ok = rel < 1e-2 and agree >= len(tc) - 2 and wg == {"cuda"}
            bad += not ok
            print(f"{name:5s} shared={sg.shared!s:5s} cache on {sorted(wg)} cpu-vs-cuda rel dlogit {rel:.2e} "
                  f"greedy tokens agree {agree}/{len(tc)} {'OK' if ok else 'MISMATCH'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
