"""Sizes whose products overflow 2^31 or 2^63, and a total_sequence_length far beyond the buffer, fail
with an error naming the output, its shape and the limit, before anything is allocated
(docs/reliability.md section 2; the limits are in custom_ops/ort/common.h).

Every case runs in the fuzz worker child (tests/fuzz/runner.py) under an address-space limit of a
few GB above what its imports mapped: an op that tried to allocate the sizes below would get
MemoryError or die, not the op's own error (under tests/test_sanitize.py, where no address-space limit
fits ASan, TQ_ORT_MEMORY_LIMIT_MB plays its part). Huge sizes come from total_sequence_length (int32, up to
2^31-1) and the head-count attributes, with zero-size tensors whose other dims are as large as the
shapes claim (tests/fuzz/model.py's Empty).
"""
from __future__ import annotations

import re

import numpy as np
import pytest

from fuzz.model import F16, F32, U8, Empty, FuzzCase
from fuzz.runner import Runner
from tq_ort import codec

I32_MAX = 2**31 - 1
ATTN_INPUTS = ("query", "key", "value", "past_key", "past_value", "seqlens_k", "total_sequence_length", "rotation",
               "key_codebook", "value_codebook", "qjl_matrix", "cos_cache", "sin_cache", "past_key_recent",
               "past_value_recent")


@pytest.fixture(scope="module")
def runner(lib_path):
    with Runner(lib_path, timeout_s=60.0) as r:
        yield r


def run_error(runner: Runner, case: FuzzCase, *patterns: str) -> str:
    """Runs the case; asserts ORT returned an error (quickly, no MemoryError) containing every pattern."""
    rep = runner.run(case.request())
    assert rep.kind == "error", (rep.kind, str(rep.value)[:500], case.describe())
    msg = str(rep.value)
    assert "MemoryError" not in msg and "Failed to allocate" not in msg, msg
    for p in patterns:
        assert re.search(p, msg), (p, msg)
    assert rep.seconds < 30, rep.seconds  # refused before any allocation, not after a long memset
    return msg


def attention_case(*, B=1, S=1, hq=1, hkv=1, d=64, P=0, total=1, key_bits=4, value_bits=4, empty=False,
                   dtype=np.float32) -> FuzzCase:
    """A TurboQuantAttention step; empty: query/key/value and the caches are zero-size tensors that
    declare the given dims (S = 0 or P = 0 keeps them empty)."""
    rot = codec.rotation(d, 1)
    kcb, vcb = codec.codebook(d, key_bits), codec.codebook(d, value_bits)
    Rk = codec.layout(d, key_bits).row_bytes
    Rv = codec.layout(d, value_bits).row_bytes

    def t(shape, dt):
        return Empty(tuple(shape), np.dtype(dt)) if empty else np.zeros(shape, dt)

    inputs = dict(zip(ATTN_INPUTS, (
        t((B, S, hq * d), dtype), t((B, S, hkv * d), dtype), t((B, S, hkv * d), dtype),
        t((B, hkv, P, Rk), np.uint8), t((B, hkv, P, Rv), np.uint8),
        np.zeros(B, np.int32), np.asarray(total, np.int32), rot, kcb, vcb, None, None, None, None, None)))
    attrs = dict(num_heads=hq, kv_num_heads=hkv, key_bits=key_bits, value_bits=value_bits)
    T = F16 if np.dtype(dtype) == np.float16 else F32
    return FuzzCase("TurboQuantAttention", "size", attrs, inputs, {"output": T, "present_key": U8, "present_value": U8})


def test_capacity_rows_beyond_2_31(runner):
    """total_sequence_length = 2^31-1 with 2 KV heads: present_key would hold 2^32-2 rows (> 2^31-1)."""
    run_error(runner, attention_case(hq=2, hkv=2, total=I32_MAX),
              re.escape("output 'present_key' (uint8 [1, 2, 2147483647, 36])"),
              re.escape("max(P=0, total_sequence_length=2147483647)"),
              re.escape("4294967294 rows of 36 elements exceed the limit of 2147483647 rows (2^31-1"))


def test_capacity_bytes_overflow_2_63(runner):
    """num_heads = kv_num_heads = 2^30-1 (num_heads*d = 2^31-2, the largest output dim) and
    total_sequence_length = 2^31-1 on empty tensors: present_key [1, 2^30-1, 2^31-1, 8] has about
    2^64 elements, more than int64 counts."""
    h = 2**30 - 1
    case = attention_case(S=0, P=0, hq=h, hkv=h, d=2, total=I32_MAX, empty=True)
    run_error(runner, case, re.escape(f"output 'present_key' (uint8 [1, {h}, 2147483647, 8])"),
              re.escape("more than 2^63-1 elements (the size overflows int64)"))


def test_output_dim_beyond_2_31(runner):
    """num_heads*d above 2^31-1 is refused even for an empty output (S = 0)."""
    case = attention_case(S=0, P=0, hq=I32_MAX, hkv=I32_MAX, d=2, total=1, empty=True)
    run_error(runner, case, re.escape("output 'output' (float32 [1, 0, 4294967294]) = [B, S, num_heads*d] "
                                      "(num_heads=2147483647, d=2): dim 2 = 4294967294 exceeds the limit of "
                                      "2147483647 (2^31-1"))


LIMIT_RE = r"exceed the limit of (\d+) bytes"


@pytest.fixture(scope="module")
def mem_limit(runner) -> int:
    """The memory limit the worker's op applies (RLIMIT_AS there, or RAM + swap), from the message of
    a capacity beyond any machine: total_sequence_length = 2^31-1 of 1028-byte rows, 2.2 TB."""
    rep = runner.run(attention_case(d=1024, key_bits=8, value_bits=8, total=I32_MAX).request())
    m = re.search(LIMIT_RE, str(rep.value))
    assert rep.kind == "error" and m, rep
    return int(m.group(1))


def test_capacity_far_beyond_memory(runner, mem_limit):
    """total_sequence_length = 2^31-1 on a one-head cache of 1028-byte rows: 2.2 TB of present_key,
    more than the process may hold: refused before the allocation, naming the capacity's origin."""
    msg = run_error(runner, attention_case(d=1024, key_bits=8, value_bits=8, total=I32_MAX),
                    re.escape("output 'present_key' (uint8 [1, 1, 2147483647, 1028]) = [B, kv_num_heads, "
                              "max(P=0, total_sequence_length=2147483647), row_bytes]"),
                    # the node's outputs so far: present_key and the 4 KB of output
                    r"2207613189116 bytes \(2207613193212 for the node's outputs so far\) " + LIMIT_RE,
                    re.escape("min(RAM + swap, RLIMIT_AS, RLIMIT_DATA, TQ_ORT_MEMORY_LIMIT_MB)"))
    assert "TurboQuantAttention 'TurboQuantAttention_fuzz'" in msg
    assert 2**28 < mem_limit < 2207613189116


def test_capacity_sum_of_outputs(runner, mem_limit):
    """Each cache alone fits the limit where both together do not: the limit is on the node's outputs."""
    total = int(0.6 * mem_limit / 36)  # rows of 36 bytes: each cache 0.6 of the limit
    if total > I32_MAX:
        pytest.skip(f"memory limit {mem_limit} too large for one int32 capacity")
    run_error(runner, attention_case(total=total),
              re.escape(f"output 'present_value' (uint8 [1, 1, {total}, 36])"),
              rf"{total * 36} bytes \({total * 72 + 256} for the node's outputs so far\) "
              rf"exceed the limit of {mem_limit}")


@pytest.mark.parametrize("attr", ["num_heads", "both"])
@pytest.mark.parametrize("value", [2**31, 2**40, 2**62])
def test_head_attributes_beyond_int32(runner, attr, value):
    """num_heads / kv_num_heads that the kernels would truncate to a 32-bit int (2^32 -> 0: a
    division by zero; num_heads * d overflowing int64 for 2^62) are refused when the kernel is made."""
    case = attention_case(d=4)
    case.attrs["num_heads"] = value
    if attr == "both":
        case.attrs["kv_num_heads"] = value
    run_error(runner, case, re.escape(f"attribute num_heads={value}: expected at most 2147483647 (2^31-1"))


@pytest.mark.parametrize("h", [2**32, 3 * 2**32])
def test_head_counts_that_truncate_to_zero(runner, h):
    """Regression: num_heads = kv_num_heads = 2^32 on an empty batch passed every shape check, became
    0 as the kernel's int and divided by zero (SIGFPE; UBSan: cpu/attention.cc "division by zero")."""
    case = attention_case(B=0, S=1, hq=h, hkv=h, d=2, empty=True)
    run_error(runner, case, re.escape(f"attribute num_heads={h}: expected at most 2147483647"))


def test_recent_window_beyond_int32(runner):
    case = attention_case(d=4)
    case.attrs["recent_window"] = 2**32 + 3
    run_error(runner, case, re.escape("attribute recent_window=4294967299: expected at most 2147483647"))


def encode_case(x, d: int, bits: int = 4, qjl=None, bits_attr: int | None = None) -> FuzzCase:
    """bits: the codebook's; bits_attr: the attribute (default: bits)."""
    attrs = dict(bits=bits if bits_attr is None else bits_attr, use_qjl=int(qjl is not None))
    return FuzzCase("TurboQuantEncode", "size", attrs,
                    {"x": x, "rotation": codec.rotation(d, 1), "codebook": codec.codebook(d, bits), "qjl_matrix": qjl},
                    {"rows": U8})


def decode_case(rows, d: int, bits: int = 4, half: bool = False) -> FuzzCase:
    return FuzzCase("TurboQuantDecode", "size", dict(use_qjl=0, output_dtype=10 if half else 1),
                    {"rows": rows, "rotation": codec.rotation(d, 1), "codebook": codec.codebook(d, bits)},
                    {"x_hat": F16 if half else F32})


def test_encode_rows_beyond_memory(runner, mem_limit):
    """A long QJL sketch makes every row wide: 2^16 vectors of d = 2 with m large enough for the rows
    to take 1.5x the memory limit (the inputs are 1000x smaller)."""
    n = 2**16
    m = 1 << int(np.ceil(np.log2(1.5 * mem_limit * 8 / n)))
    rb = codec.layout(2, 4, True, m).row_bytes
    x = np.ones((n, 2), np.float32)
    qjl = np.ones((m, 2), np.float32)
    run_error(runner, encode_case(x, 2, qjl=qjl),
              re.escape(f"output 'rows' (uint8 [{n}, {rb}]) = [..., row_bytes] (x's leading dims)"),
              rf"{n * rb} bytes .*exceed the limit of {mem_limit} bytes")


@pytest.mark.parametrize("shape", [(0, 2**40, 4), (2**31, 0, 4), (0, 2**62, 4)])
def test_encode_dims_beyond_int32(runner, shape):
    """An empty x may declare any dims; an output dim above 2^31-1 is refused (the kernels' int)."""
    big = next(i for i, v in enumerate(shape) if v > I32_MAX)
    rep = runner.run(encode_case(Empty(shape, np.dtype(np.float32)), 4).request())
    assert rep.kind == "error", rep
    msg = str(rep.value)
    if "TurboQuantEncode" in msg:  # (ORT may refuse such a feed itself)
        assert re.search(re.escape(f"output 'rows' (uint8 [{shape[0]}, {shape[1]}, 8])") +
                         f".*dim {big} = {shape[big]} exceeds the limit of 2147483647", msg), msg


@pytest.mark.parametrize("shape", [(0, 2**40, 8), (2**33, 0, 8)])
def test_decode_dims_beyond_int32(runner, shape):
    rep = runner.run(decode_case(Empty(shape, np.dtype(np.uint8)), 4).request())
    assert rep.kind == "error", rep
    msg = str(rep.value)
    if "TurboQuantDecode" in msg:
        assert re.search(re.escape("output 'x_hat' (float32 [") + r".*exceeds the limit of 2147483647", msg), msg


def test_decode_output_beyond_memory(runner, mem_limit):
    """1-bit rows expand 32x when decoded: 2^14 rows of d = 2^17 (268 MB) would give 8 GiB of float32."""
    if mem_limit >= 2**33:
        pytest.skip(f"memory limit {mem_limit} >= 8 GiB (no address-space limit in the worker)")
    d = 2**17
    rows = np.zeros((2**14, codec.layout(d, 1).row_bytes), np.uint8)
    run_error(runner, decode_case(rows, d, bits=1),
              re.escape(f"output 'x_hat' (float32 [16384, {d}]) = [..., d] (rows' leading dims)"),
              rf"8589934592 bytes .*exceed the limit of {mem_limit} bytes")


@pytest.mark.parametrize("bits", [2**32 + 4, 2**32 + 1, 2**40 + 2, -(2**32) + 4])
def test_bits_attribute_is_not_truncated(runner, bits):
    """bits = 2^32 + 4 was read as 4 (its low 32 bits) and shifted 1 << bits (undefined behaviour);
    it is an error now, for encode and for the attention's key_bits / value_bits."""
    run_error(runner, encode_case(np.ones((2, 8), np.float32), 8, bits=4, bits_attr=bits),
              re.escape(f"attribute bits={bits}: expected one of 1, 2, 3, 4, 5, 6, 8"))
    for attr in ("key_bits", "value_bits"):
        case = attention_case(d=8)
        case.attrs[attr] = bits
        run_error(runner, case, re.escape(f"attribute {attr}={bits}: expected"))


def test_valid_large_capacity_still_runs(runner):
    """Below the limits nothing changes: total_sequence_length = 2^16 on a small cache gives outputs."""
    rep = runner.run(attention_case(d=8, total=2**16).request())
    assert rep.kind == "ok", rep
    assert rep.value[1].shape == (1, 1, 2**16, codec.layout(8, 4).row_bytes)


def test_memory_limit_by_hand(lib_path, monkeypatch):
    """TQ_ORT_MEMORY_LIMIT_MB lowers the limit (a container's, or a sanitizer run's where no
    RLIMIT_AS fits): 2 x 36 MiB of caches pass the default limit but not 64 MiB."""
    monkeypatch.setenv("TQ_ORT_MEMORY_LIMIT_MB", "64")
    with Runner(lib_path, timeout_s=60.0) as r:
        run_error(r, attention_case(total=2**20), re.escape("output 'present_value' (uint8 [1, 1, 1048576, 36])"),
                  r"exceed the limit of 67108864 bytes \(64 MiB")
