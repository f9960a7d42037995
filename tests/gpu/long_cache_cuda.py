"""On a GPU machine: the long-cache checks of tests/test_long_cache.py on the CUDA EP.

1. TurboQuantAttention over > 100K cached rows against the numpy reference (the same needle cases:
   float32 4-bit decode over 131,071 rows in concat mode; float16 QJL + RoPE 4-token prefill over
   100,003 rows of a 131,072-row shared buffer in device memory), and each needle must move the output.
2. With DIR (a rewritten tiny model folder, see tests/gpu/concurrency_cuda.py for how to make one):
   DecoderSession(device="cuda", max_length=131072): the device memory its cache takes (cudaMemGetInfo
   before and after the allocation) against the compressed size and the float16 size, and 3 decode steps
   over 131,000 cached rows (the model's own rows, tiled): shared buffer vs concat on CUDA, and CUDA vs CPU.

    PYTHONPATH=/tmp/ortgpu:. TQ_ORT_LIBRARY=build/ort/libtq_ort_ops.so python3 tests/gpu/long_cache_cuda.py [DIR]

Exit 0 all within tolerance (or no CUDA: skipped), 1 otherwise. Tolerances: output 1e-2 of its scale
(the CUDA decode path rounds the rotated query and weights to fp16, docs/cuda.md); logits 1e-2 of their range.
"""
from __future__ import annotations

import ctypes
import sys
import time
import traceback
from pathlib import Path

import numpy as np

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))
CUDA_TOL = 1e-2


def cuda_mem_info():
    """(free, total) device bytes through the CUDA runtime, or None if no libcudart can be loaded."""
    names = ["libcudart.so", "libcudart.so.13", "libcudart.so.12"]
    try:
        import nvidia.cuda_runtime as cr  # the pip CUDA runtime onnxruntime-gpu uses, if installed

        names = [str(p) for d in cr.__path__ for p in sorted(Path(d, "lib").glob("libcudart.so*"))] + names
    except ImportError:
        pass
    for n in names:
        try:
            rt = ctypes.CDLL(n)
        except OSError:
            continue
        free, total = ctypes.c_size_t(), ctypes.c_size_t()
        if rt.cudaMemGetInfo(ctypes.byref(free), ctypes.byref(total)) == 0:
            return lambda: _info(rt)
    return None


def _info(rt) -> tuple[int, int]:
    free, total = ctypes.c_size_t(), ctypes.c_size_t()
    rt.cudaMemGetInfo(ctypes.byref(free), ctypes.byref(total))
    return free.value, total.value


def run_cuda(ops, c, mode: str) -> list:
    """The case on the CUDA EP: concat through ops.run, or past/present bound to the same device OrtValues."""
    from test_cpu_ops_attention import run_concat, run_shared

    if mode == "concat":
        return run_concat(ops, c)
    return run_shared(ops, c, device="cuda")


def op_checks(lib: str) -> int:
    import test_long_cache as tl
    from test_cuda_ops import CUDA, CudaOps

    ops = CudaOps(lib, CUDA[:1])
    bad = 0
    for kind, mode in (("decode", "concat"), ("prefill", "shared")):
        try:
            c = tl.long_case(kind, np.random.default_rng(7))
            t = time.time()
            got = run_cuda(ops, c, mode)
            dt = time.time() - t
            rel = tl.check_long(c, got, c.reference(), 7, f"cuda {kind}/{mode}", tol=CUDA_TOL)
            out = got[0].astype(np.float32)
            moved = []
            for pos in tl.NEEDLES:
                keep = c.pk.copy(), c.pv.copy()
                c.pk[:, :, pos], c.pv[:, :, pos] = c.pk[:, :, pos + 1], c.pv[:, :, pos + 1]
                moved.append(float(np.abs(run_cuda(ops, c, mode)[0].astype(np.float32) - out).max()
                                   / np.abs(out).max()))
                c.pk, c.pv = keep
            ok = all(m > 20 * max(rel, 1e-3) for m in moved)
            bad += not ok
            print(f"op {kind}/{mode}: {c.P} rows, output rel err {rel:.2e} (tol {CUDA_TOL}), needle effects "
                  f"{', '.join(f'{m:.2e}' for m in moved)}, first run {dt * 1e3:.0f} ms {'OK' if ok else 'FAILED'}")
        except Exception:  # noqa: BLE001 - report every check
            bad += 1
            print(f"op {kind}/{mode}: FAILED\n{traceback.format_exc()}")
    return bad


def session_checks(folder: Path) -> int:
    import onnxruntime as ort

    import test_long_cache as tl
    from tq_ort.session import DecoderSession

    mem = cuda_mem_info()
    seed_sess = DecoderSession(folder, max_length=512)
    seed_sess.reset()
    seed_sess.step(np.random.default_rng(0).integers(0, 256, (1, 512)))
    block = seed_sess.cache_arrays()
    n = 131_000
    s = DecoderSession(folder, device="cuda", max_length=tl.LONG)
    before = mem() if mem else None
    s.reset()
    after = mem() if mem else None
    rows = tl.LONG * s.batch
    expected = sum(rows * L["kv_heads"] * (L["key_row_bytes"] + L["value_row_bytes"]) for L in s.config["layers"])
    fp16 = sum(rows * 2 * L["kv_heads"] * L["head_dim"] * 2 for L in s.config["layers"])
    used = None if before is None else before[0] - after[0]
    mib = 2 ** 20
    print(f"session: cache_bytes {s.cache_bytes() / mib:.2f} MiB (rows x row bytes {expected / mib:.2f} MiB, float16 "
          f"{fp16 / mib:.2f} MiB); device memory taken by reset(): "
          f"{'n/a (no libcudart)' if used is None else f'{used / mib:.2f} MiB'}")
    bad = int(s.cache_bytes() != expected)
    full = {}
    for name, r in block.items():
        arr = np.zeros(tuple(s._cache[name].shape()), np.uint8)
        arr[:, :, :n] = np.tile(r, (1, 1, -(-n // r.shape[2]), 1))[:, :, :n]
        s._cache[name].update_inplace(arr)
        full[name] = np.ascontiguousarray(arr[:, :, :n])
    concat = DecoderSession(folder, device="cuda", max_length=tl.LONG, shared_buffer=False)
    cpu = DecoderSession(folder, device="cpu", max_length=tl.LONG, shared_buffer=False)
    for d in (concat, cpu):
        d.reset()
        for name, arr in full.items():
            d._cache[name] = ort.OrtValue.ortvalue_from_numpy(arr, d.device, 0)
    s.length = concat.length = cpu.length = n
    ids = [7, 100, 200]
    logits = {}
    for label, d in (("shared", s), ("concat", concat), ("cpu", cpu)):
        t = time.time()
        logits[label] = np.stack([d.step(np.asarray([[i]])) for i in ids])
        print(f"session {label}: 3 steps over {n} cached rows in {(time.time() - t) * 1e3:.0f} ms")
    span = float(np.ptp(logits["cpu"]))
    for a, b in (("shared", "concat"), ("shared", "cpu")):
        rel = float(np.abs(logits[a] - logits[b]).max()) / span
        ok = rel < CUDA_TOL and np.isfinite(logits[a]).all()
        bad += not ok
        print(f"session {a} vs {b}: max |dlogit| / range {rel:.2e} {'OK' if ok else 'FAILED'}")
    return bad


def main(argv: list[str]) -> int:
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        print(f"SKIP: this onnxruntime ({ort.__version__}) has no CUDAExecutionProvider: "
              f"{ort.get_available_providers()}")
        return 0
    from tq_ort.library import library_path

    bad = op_checks(library_path())
    if argv:
        try:
            bad += session_checks(Path(argv[0]))
        except Exception:  # noqa: BLE001
            bad += 1
            print(f"session: FAILED\n{traceback.format_exc()}")
    else:
        print("session: SKIP (pass a rewritten tiny model folder)")
    print("FAILED" if bad else "ALL OK")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
