"""Bad inputs fail with an error that names the tensor, its shape and what was expected (never a crash)."""
from __future__ import annotations

import re

import numpy as np
import pytest

from tq_ort import codec
from test_cpu_ops_attention import Case, run_concat  # noqa: E402  (tests/ is on sys.path under pytest)


@pytest.fixture
def enc(rng):
    d = 64
    return dict(x=rng.standard_normal((2, d)).astype(np.float32), rot=codec.rotation(d, 1), cb=codec.codebook(d, 4),
                qjl=codec.qjl_matrix(d, d, 2))


def raises(match):
    return pytest.raises(Exception, match=match)


def test_encode_wrong_last_dim(ops, enc):
    with raises(re.escape("input 'x' (float32 [2, 63]): expected shape [..., 64] (d from rotation)")):
        ops.encode(enc["x"][:, :63], enc["rot"], enc["cb"], bits=4)


def test_encode_wrong_dtype(ops, enc):
    with raises(re.escape("input 'x' (int32 [2, 64]): expected dtype float32 or float16")):
        ops.encode(enc["x"].astype(np.int32), enc["rot"], enc["cb"], bits=4)


def test_encode_bits_not_supported(ops, enc):
    with raises("attribute bits=7: expected one of 1, 2, 3, 4, 5, 6, 8"):
        ops.encode(enc["x"], enc["rot"], enc["cb"], bits=7)


def test_encode_codebook_length_mismatch(ops, enc):
    with raises(re.escape("input 'codebook' (float32 [16]): expected length 2^bits = 8")):
        ops.encode(enc["x"], enc["rot"], enc["cb"], bits=3)


def test_encode_codebook_not_ascending(ops, enc):
    with raises(r"input 'codebook' \(float32 \[16\]\): expected ascending"):
        ops.encode(enc["x"], enc["rot"], enc["cb"][::-1].copy(), bits=4)


@pytest.mark.parametrize("shape", [(48,), (4, 5)])
def test_encode_bad_rotation(ops, enc, shape):
    with raises(re.escape(f"input 'rotation' (float32 {list(shape)})".replace("(48,)", "[48]"))):
        ops.encode(enc["x"], np.ones(shape, np.float32), enc["cb"], bits=4)


def test_encode_qjl_missing(ops, enc):
    with raises(r"input 'qjl_matrix' \(absent\): expected a float32 \[m, 64\] QJL matrix"):
        ops.encode(enc["x"], enc["rot"], enc["cb"], bits=4, use_qjl=1)


def test_encode_qjl_wrong_shape(ops, enc):
    with raises(re.escape("input 'qjl_matrix' (float32 [64, 32]): expected [m, 64], m >= 1")):
        ops.encode(enc["x"], enc["rot"], enc["cb"], enc["qjl"][:, :32].copy(), bits=4, use_qjl=1)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_encode_non_finite(ops, enc, bad, dtype):
    x = enc["x"].astype(dtype)
    x[1, 5] = bad
    with raises(re.escape(f"input 'x' ({np.dtype(dtype).name} [2, 64]): expected finite values "
                          "(non-finite value at flat index 69)")):
        ops.encode(x, enc["rot"], enc["cb"], bits=4)


def test_decode_wrong_row_width(ops, enc):
    rows = codec.encode(enc["x"], enc["rot"], enc["cb"])
    with raises(re.escape("input 'rows' (uint8 [2, 35]): expected shape [..., 36] (row_bytes for d=64, bits=4, "
                          "use_qjl=0)")):
        ops.decode(rows[:, :35].copy(), enc["rot"], enc["cb"])


def test_decode_qjl_row_width(ops, enc):
    rows = codec.encode(enc["x"], enc["rot"], enc["cb"])
    with raises(r"input 'rows' \(uint8 \[2, 36\]\): expected shape \[\.\.\., 48\].*use_qjl=1, m=64"):
        ops.decode(rows, enc["rot"], enc["cb"], enc["qjl"], use_qjl=1)


def test_decode_output_dtype_must_match_declaration(ops, enc):
    rows = codec.encode(enc["x"], enc["rot"], enc["cb"])
    with raises("output 'x_hat' is declared float32 in the model but output_dtype=10"):
        ops.run("TurboQuantDecode", {"rows": rows, "rotation": enc["rot"], "codebook": enc["cb"]},
                {"x_hat": (np.float32, None)}, dict(output_dtype=10))


# ---- attention -----------------------------------------------------------------------------------

def attn_error(ops, rng, match, mutate=None, **case):
    c = Case(**case).build(rng)
    if mutate:
        mutate(c)
    with raises(match):
        run_concat(ops, c)


def test_attention_query_shape(ops, rng):
    attn_error(ops, rng, re.escape("input 'query' (float32 [2, 1, 500]): expected [B, S, num_heads*d] = "
                                   "[B, S, 512] (num_heads=8, d=64)"),
               lambda c: setattr(c, "q", c.q[:, :, :500].copy()))


def test_attention_key_shape(ops, rng):
    attn_error(ops, rng, re.escape("input 'key' (float32 [2, 2, 128]): expected [2, 1, 128] (kv_num_heads=2)"),
               lambda c: setattr(c, "k", np.concatenate([c.k, c.k], axis=1)))


def test_attention_value_dtype(ops, rng):
    attn_error(ops, rng, re.escape("input 'value' (float16 [2, 1, 128]): expected dtype float32 (the query's)"),
               lambda c: setattr(c, "v", c.v.astype(np.float16)))


def test_attention_past_key_row_width(ops, rng):
    attn_error(ops, rng, re.escape("input 'past_key' (uint8 [2, 2, 24, 36]): expected [B, kv_num_heads, P, "
                                   "row_bytes] = [2, 2, P, 28] (row_bytes for d=64, key_bits=3, use_qjl=0)"),
               key_bits=4, attrs=dict(key_bits=3),
               mutate=lambda c: setattr(c, "kcb", codec.codebook(64, 3)))


def test_attention_past_value_width(ops, rng):
    attn_error(ops, rng, re.escape("input 'past_value' (uint8 [2, 2, 24, 35]): expected [2, 2, 24, 36]"),
               lambda c: setattr(c, "pv", c.pv[..., :35].copy()))


def test_attention_keys_only_needs_float_values(ops, rng):
    attn_error(ops, rng, re.escape("input 'past_value' (uint8 [2, 2, 24, 36]): expected dtype float32 "
                                   "(value_bits=0"),
               attrs=dict(value_bits=0))


def test_attention_codebook_vs_key_bits(ops, rng):
    attn_error(ops, rng, re.escape("input 'key_codebook' (float32 [16]): expected length 2^key_bits = 4"),
               attrs=dict(key_bits=2))


def test_attention_heads_not_multiple(ops, rng):
    attn_error(ops, rng, "num_heads=6, kv_num_heads=4: expected positive with num_heads a multiple", Hq=6, Hkv=4)


def test_attention_seqlens_out_of_range(ops, rng):
    attn_error(ops, rng, re.escape("input 'seqlens_k' (int32 [2]): expected 0 <= seqlens_k[b] < 24 (cache "
                                   "capacity); seqlens_k[1] = -1"),
               lambda c: setattr(c, "sl", np.array([3, -1], np.int32)))


def test_attention_seqlens_shape(ops, rng):
    attn_error(ops, rng, re.escape("input 'seqlens_k' (int32 [3]): expected [2] (batch size)"),
               lambda c: setattr(c, "sl", np.array([3, 4, 5], np.int32)))


def test_attention_cache_too_small(ops, rng):
    """A right-padded prompt of S=8 tokens does not fit a 6-row shared cache."""
    attn_error(ops, rng, "cache too small", S=8, P=6, past_lens=(0, 0), seqlens=(3, 5), total=6)


def test_attention_past_shorter_than_seqlens(ops, rng):
    attn_error(ops, rng, r"input 'seqlens_k' \(int32 \[2\]\): expected seqlens_k\[0\] = 30 to leave at most P = 24",
               lambda c: setattr(c, "sl", np.array([30, 4], np.int32)), total=40)


@pytest.mark.parametrize("name", ["q", "k", "v"])
def test_attention_non_finite(ops, rng, name):
    full = {"q": "query", "k": "key", "v": "value"}[name]

    def poison(c):
        arr = getattr(c, name).copy()
        arr[1, 0, 3] = np.nan
        setattr(c, name, arr)
    attn_error(ops, rng, rf"input '{full}' \(float32 \[2, 1, \d+\]\): expected finite values", poison)


def test_attention_rotary_needs_cos(ops, rng):
    attn_error(ops, rng, re.escape("input 'cos_cache' (absent): expected a float32 [max_pos, d/2] tensor "
                                   "(do_rotary=1)"), attrs=dict(do_rotary=1))


def test_attention_rotary_cache_too_short(ops, rng):
    def cut(c):
        c.cos, c.sin = c.cos[:10].copy(), c.sin[:10].copy()
    attn_error(ops, rng, re.escape("input 'cos_cache' (float32 [10, 32]): expected [max_pos, 32] with max_pos > 20"),
               cut, do_rotary=True)


def test_attention_qjl_missing(ops, rng):
    attn_error(ops, rng, r"input 'qjl_matrix' \(absent\)", attrs=dict(use_qjl=1))


def test_attention_total_sequence_length_dtype(ops, rng):
    attn_error(ops, rng, "total_sequence_length", lambda c: setattr(c, "tot", np.asarray(5, np.int64)))
