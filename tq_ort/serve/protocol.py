"""The generate models' tensors: Triton request -> validated GenRequest, GenResult -> response.

Inputs (batching off: shapes without a batch dimension):
  prompt BYTES [1] (UTF-8), max_new_tokens INT32 [1], and optional temperature FP32 [1] (0 = greedy,
  default), top_p FP32 [1] (default 1), top_k INT32 [1] (0 = all), seed INT64 [1] (default 0),
  stop BYTES [-1] (stop strings: generation ends before the first one, which is not returned).
Outputs: text BYTES [1], token_ids INT32 [-1], finish_reason BYTES [1] ("eos", "stop", "length"),
  cache_bytes and cache_bytes_fp16 INT64 [1] (the sequence's compressed cache at its final length
  and the same tokens in float16).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import numpy as np

from ..session import Sampling
from .scheduler import GenRequest, GenResult

MAX_STOPS = 16


def input_specs() -> list[tuple[str, Any, tuple[int, ...], bool]]:
    """(name, numpy dtype, shape, optional) of the generate inputs."""
    return [("prompt", bytes, (1,), False), ("max_new_tokens", np.int32, (1,), False),
            ("temperature", np.float32, (1,), True), ("top_p", np.float32, (1,), True),
            ("top_k", np.int32, (1,), True), ("seed", np.int64, (1,), True), ("stop", bytes, (-1,), True)]


def output_specs() -> list[tuple[str, Any, tuple[int, ...]]]:
    return [("text", bytes, (1,)), ("token_ids", np.int32, (-1,)), ("finish_reason", bytes, (1,)),
            ("cache_bytes", np.int64, (1,)), ("cache_bytes_fp16", np.int64, (1,))]


def _utf8(value: Any, what: str) -> str:
    if isinstance(value, str):
        return value
    raw = bytes(value)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{what}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start})") from None


def _scalar(r: Mapping[str, np.ndarray], name: str, default: Any, kind: type) -> Any:
    if name not in r:
        return default
    a = np.asarray(r[name])
    if a.size != 1:
        raise ValueError(f"{name}: expected one value, got shape {list(a.shape)}")
    return kind(a.reshape(-1)[0])


def parse(r: Mapping[str, np.ndarray], encode: Callable[[str], list[int]], eos: frozenset[int],
          max_length: int) -> GenRequest:
    """A GenRequest from one Triton request's inputs, or ValueError saying what is wrong."""
    if "prompt" not in r:
        raise ValueError("prompt: missing input")
    p = np.asarray(r["prompt"], dtype=object).reshape(-1)
    if p.size != 1:
        raise ValueError(f"prompt: expected one string, got {p.size}")
    prompt = _utf8(p[0], "prompt")
    if not prompt:
        raise ValueError("prompt: empty")
    n = _scalar(r, "max_new_tokens", None, int)
    if n is None:
        raise ValueError("max_new_tokens: missing input")
    if not 1 <= n <= max_length:
        raise ValueError(f"max_new_tokens={n}: expected 1 to {max_length} (the server's max_length)")
    temperature = _scalar(r, "temperature", 0.0, float)
    top_p = _scalar(r, "top_p", 1.0, float)
    top_k = _scalar(r, "top_k", 0, int)
    seed = _scalar(r, "seed", 0, int)
    if not (math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature={temperature}: expected a finite value >= 0 (0 = greedy)")
    if not (math.isfinite(top_p) and 0 < top_p <= 1):
        raise ValueError(f"top_p={top_p}: expected 0 < top_p <= 1")
    if top_k < 0:
        raise ValueError(f"top_k={top_k}: expected >= 0 (0 = all tokens)")
    stops: list[str] = []
    if "stop" in r:
        raw = np.asarray(r["stop"], dtype=object).reshape(-1)
        if raw.size > MAX_STOPS:
            raise ValueError(f"stop: {raw.size} strings, at most {MAX_STOPS}")
        stops = [_utf8(s, f"stop[{i}]") for i, s in enumerate(raw)]
        if any(not s for s in stops):
            raise ValueError("stop: empty stop string")
    return GenRequest(encode(prompt), n, Sampling(temperature, top_k, top_p, seed), stops, eos)


def response(res: GenResult, text: str | None = None) -> dict[str, np.ndarray]:
    """Output tensors of a result (`text` overrides the text: a streamed piece)."""
    t = res.text if text is None else text
    return {"text": np.array([t.encode("utf-8")], dtype=object),
            "token_ids": np.asarray(res.token_ids, dtype=np.int32),
            "finish_reason": np.array([res.finish_reason.encode()], dtype=object),
            "cache_bytes": np.array([res.cache_bytes], dtype=np.int64),
            "cache_bytes_fp16": np.array([res.cache_bytes_fp16], dtype=np.int64)}


def piece(text: str) -> dict[str, np.ndarray]:
    """A streamed chunk before the end: the new text only."""
    return {"text": np.array([text.encode("utf-8")], dtype=object), "token_ids": np.zeros(0, dtype=np.int32),
            "finish_reason": np.array([b""], dtype=object), "cache_bytes": np.array([0], dtype=np.int64),
            "cache_bytes_fp16": np.array([0], dtype=np.int64)}
