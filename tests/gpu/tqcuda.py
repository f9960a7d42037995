"""ctypes bindings to the standalone CUDA kernel library (custom_ops/cuda/tq_cuda_api.h).

Device memory comes from torch tensors (data_ptr); no ONNX Runtime involved. Used by
tests/gpu/test_kernels.py and benchmarks/gpu/bench_attention.py.
"""
from __future__ import annotations

import ctypes
import os

import numpy as np

DT = {"float32": 1, "float16": 10, "bfloat16": 16}


class TqAttnParams(ctypes.Structure):
    _fields_ = [(n, ctypes.c_void_p) for n in (
        "query", "key", "value", "past_key", "past_value", "present_key", "present_value", "seqlens_k",
        "rotation", "key_codebook", "value_codebook", "qjl", "cos_cache", "sin_cache", "output")] + [
        (n, ctypes.c_int64) for n in (
            "dtype", "B", "S", "Hq", "Hkv", "d", "P", "Pp", "rot_rank", "key_bits", "value_bits", "use_qjl", "m",
            "do_rotary", "max_pos", "local_window")] + [
        ("scale", ctypes.c_double), ("softcap", ctypes.c_double), ("force_path", ctypes.c_int64)] + [
        (n, ctypes.c_void_p) for n in (
            "past_key_recent", "past_value_recent", "present_key_recent", "present_value_recent")] + [
        ("recent_window", ctypes.c_int64)]


def load(path: str | None = None):
    path = path or os.environ.get("TQ_CUDA_LIB") or os.path.join(os.path.dirname(__file__), "..", "..", "build",
                                                                 "gpu", "libtq_cuda.so")
    lib = ctypes.CDLL(os.path.abspath(path))
    lib.tq_cuda_last_error.restype = ctypes.c_char_p
    lib.tq_cuda_row_bytes.argtypes = [ctypes.c_int] * 4
    lib.tq_cuda_encode.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_int, ctypes.c_void_p,
                                   ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_void_p,
                                   ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
    lib.tq_cuda_decode.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_void_p, ctypes.c_int,
                                   ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p,
                                   ctypes.c_int, ctypes.c_void_p]
    lib.tq_cuda_attention_workspace.argtypes = [ctypes.POINTER(TqAttnParams)]
    lib.tq_cuda_attention_workspace.restype = ctypes.c_size_t
    lib.tq_cuda_attention.argtypes = [ctypes.POINTER(TqAttnParams), ctypes.c_void_p, ctypes.c_size_t,
                                      ctypes.c_void_p]
    return lib


def check(lib, rc: int, what: str) -> None:
    if rc != 0:
        raise RuntimeError(f"{what} failed ({rc}): {lib.tq_cuda_last_error().decode()}")


def ptr(t) -> int | None:
    return None if t is None else int(t.data_ptr())


def stream_of(torch) -> int:
    return int(torch.cuda.current_stream().cuda_stream)


def attention_params(**kw) -> TqAttnParams:
    p = TqAttnParams()
    for k, v in kw.items():
        setattr(p, k, v)
    return p


def to_np_f32(t) -> np.ndarray:
    return t.detach().float().cpu().numpy()
