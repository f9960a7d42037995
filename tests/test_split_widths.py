"""Split widths (fractional bits, docs/ops.md 1.4.1): the first hi rotated coordinates at bits + 1.

The numpy reference (layout, packing, distortion between the two whole widths) and the CPU ops
against it: bit-exact codes from TurboQuantEncode, TurboQuantDecode, TurboQuantAttention, and the
errors for attributes and codebooks that do not fit.
"""
from __future__ import annotations

import re

import numpy as np
import pytest

from test_cpu_ops_attention import Case, check_case
from test_cpu_ops_codec import compare_rows, sample
from tq_ort import codec

# (d, bits, hi): 3.5 / 2.5 / 4.5 bits at d = 64 and 128, a few hi, odd head dims, 5.x bits.
SPLITS = [(64, 3, 32), (64, 2, 32), (64, 4, 32), (128, 3, 64), (128, 1, 8), (80, 3, 40), (96, 2, 88),
          (256, 5, 128), (64, 3, 8)]


def split_codec(d, bits, hi, seed):
    return codec.rotation(d, seed), codec.split_codebook(d, bits, hi)


# ---- the reference -----------------------------------------------------------------------------

@pytest.mark.parametrize("d,bits,hi", SPLITS)
def test_layout_sizes(d, bits, hi):
    lay = codec.layout(d, bits, hi=hi)
    assert lay.version == 2 and lay.width == bits + hi / d
    assert lay.hi_code_bytes * 8 >= hi * (bits + 1) and lay.lo_code_bytes * 8 >= (d - hi) * bits
    assert lay.hi_code_bytes % 4 == 0 and lay.lo_code_bytes % 4 == 0
    assert lay.hi_code_bytes * 8 - hi * (bits + 1) < 32 and lay.lo_code_bytes * 8 - (d - hi) * bits < 32
    assert lay.row_bytes == 4 + lay.code_bytes
    assert codec.layout(d, bits, hi=0).version == 1


def test_split_of_64_is_3_5_bits():
    """K3.5 at d = 64: 32 coordinates at 4 bits (16 bytes) + 32 at 3 (12 bytes) + the scale."""
    lay = codec.layout(64, 3, hi=32)
    assert (lay.hi_code_bytes, lay.lo_code_bytes, lay.row_bytes) == (16, 12, 32)
    assert codec.row_bytes(64, 3) == 28 and codec.row_bytes(64, 4) == 36


@pytest.mark.parametrize("d,bits,hi", SPLITS)
def test_rows_round_trip_codes(d, bits, hi, seed, rng):
    rot, cb = split_codec(d, bits, hi, seed)
    x = sample(rng, (4, 33, d))
    codes, scale, _ = codec.quantize(x, rot, cb, hi=hi)
    K = 1 << bits
    assert np.all((codes[..., :hi] >= K) & (codes[..., :hi] < 3 * K)), "hi coordinates index the (b+1)-bit table"
    assert np.all(codes[..., hi:] < K)
    rows = codec.encode(x, rot, cb, hi=hi)
    lay, s2, c2, _, _ = codec.row_fields(rows, rot, cb, hi=hi)
    assert np.array_equal(c2, codes) and np.array_equal(s2, scale)
    # the hi stream really holds (bits+1)-bit codes: unpacked on its own it gives the codes less 2^bits
    top = codec.unpack_bits(rows[..., 4:4 + lay.hi_code_bytes], bits + 1, hi)
    assert np.array_equal(top, codes[..., :hi] - K)


@pytest.mark.parametrize("d,bits", [(64, 3), (128, 2), (128, 4)])
def test_distortion_between_whole_widths(d, bits, seed, rng):
    """MSE of the split width lies between bits and bits + 1 and falls as hi grows."""
    rot = codec.rotation(d, seed)
    x = rng.standard_normal((4000, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=-1, keepdims=True)

    def mse(hi, b=bits):
        cb = codec.split_codebook(d, b, hi)
        xh = codec.decode(codec.encode(x, rot, cb, hi=hi), rot, cb, hi=hi)
        return float(np.mean(np.sum((xh - x) ** 2, axis=-1)))

    errs = [mse(h) for h in (0, d // 4, d // 2, 3 * d // 4)] + [mse(0, bits + 1)]
    assert all(a > b for a, b in zip(errs, errs[1:])), f"MSE not falling with hi: {errs}"


def test_zero_vector_round_trips(seed):
    rot, cb = split_codec(64, 3, 32, seed)
    rows = codec.encode(np.zeros((2, 64), np.float32), rot, cb, hi=32)
    assert np.all(codec.decode(rows, rot, cb, hi=32) == 0)
    _, _, codes, _, _ = codec.row_fields(rows, rot, cb, hi=32)
    assert np.all(codes[:, :32] == 8 + 8) and np.all(codes[:, 32:] == 4)


@pytest.mark.parametrize("hi,msg", [(4, "multiple of 8"), (64, "multiple of 8 in \\(0, d=64\\)"),
                                    (-8, "multiple of 8"), (72, "multiple of 8")])
def test_reference_rejects_bad_hi(hi, msg):
    with pytest.raises(ValueError, match=msg):
        codec.layout(64, 3, hi=hi)


def test_reference_rejects_6_bit_split_and_short_codebook(seed):
    with pytest.raises(ValueError, match="bits \\+ 1 = 7 is not a supported width"):
        codec.layout(64, 6, hi=32)
    rot = codec.rotation(64, seed)
    with pytest.raises(ValueError, match="2\\^bits \\+ 2\\^\\(bits\\+1\\)"):
        codec.encode(np.ones((1, 64), np.float32), rot, codec.codebook(64, 3), hi=32)


# ---- the CPU ops against it ----------------------------------------------------------------------

@pytest.mark.parametrize("d,bits,hi", SPLITS)
def test_encode_matches_reference(ops, seed, rng, d, bits, hi):
    rot, cb = split_codec(d, bits, hi, seed)
    x = sample(rng, (3, 37, d))
    got = ops.encode(x, rot, cb, bits=bits, hi_channels=hi)
    ref = codec.encode(x, rot, cb, hi=hi)
    assert got.shape == ref.shape
    compare_rows(got, ref, d, bits, False, None, seed)  # the whole code area: both streams and padding


@pytest.mark.parametrize("d,bits,hi,m", [(64, 2, 32, 64), (128, 3, 64, 100)])
def test_encode_qjl_matches_reference(ops, seed, rng, d, bits, hi, m):
    rot, cb = split_codec(d, bits, hi, seed)
    qjl = codec.qjl_matrix(m, d, seed + 1)
    x = sample(rng, (5, 41, d))
    got = ops.encode(x, rot, cb, qjl, bits=bits, use_qjl=1, hi_channels=hi)
    ref = codec.encode(x, rot, cb, True, qjl, hi=hi)
    lay = codec.layout(d, bits, True, m, hi)
    assert got.shape[-1] == lay.row_bytes
    np.testing.assert_array_equal(got[..., :4 + lay.code_bytes][..., 4:], ref[..., 4:4 + lay.code_bytes])
    flips = np.mean(np.unpackbits(got[..., lay.signs_offset:], axis=-1) != np.unpackbits(ref[..., lay.signs_offset:],
                                                                                          axis=-1))
    assert flips < 0.01


@pytest.mark.parametrize("d,bits,hi", [(64, 3, 32), (128, 4, 64), (20, 2, 8)])
def test_encode_float16_and_portable(ops, seed, rng, d, bits, hi):
    """float16 input, and d = 20 (not a multiple of 8: the portable encoder)."""
    rot = codec.rotation(d, seed)
    cb = codec.split_codebook(d, bits, hi)
    x = sample(rng, (2, 50, d), np.float16)
    got = ops.encode(x, rot, cb, bits=bits, hi_channels=hi)
    compare_rows(got, codec.encode(x, rot, cb, hi=hi), d, bits, False, None, seed)


@pytest.mark.parametrize("d,bits,hi", SPLITS[:5])
def test_decode_matches_reference(ops, seed, rng, d, bits, hi):
    rot, cb = split_codec(d, bits, hi, seed)
    rows = codec.encode(sample(rng, (3, 29, d)), rot, cb, hi=hi)
    got = ops.decode(rows, rot, cb, hi_channels=hi)
    ref = codec.decode(rows, rot, cb, hi=hi)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * float(np.abs(ref).max()))


@pytest.mark.parametrize("d,kb,khi,vb,vhi", [(64, 3, 32, 3, 0), (64, 3, 32, 2, 32), (128, 4, 64, 3, 64),
                                             (80, 2, 40, 4, 8), (256, 1, 128, 5, 64), (64, 5, 56, 5, 8)])
def test_attention_matches_reference(ops, rng, seed, d, kb, khi, vb, vhi):
    check_case(ops, Case(d=d, key_bits=kb, key_hi=khi, value_bits=vb, value_hi=vhi), rng, seed)


@pytest.mark.parametrize("mode", ["concat", "shared"])
def test_attention_prefill_gqa_qjl(ops, rng, seed, mode):
    """Prompt steps (S > 1), GQA, rotary and QJL keys on split widths, both cache modes."""
    c = Case(d=64, key_bits=3, key_hi=32, value_bits=2, value_hi=16, use_qjl=True, S=5, Hq=8, Hkv=2, P=30,
             past_lens=(20, 9), do_rotary=True)
    check_case(ops, c, rng, seed, mode)


# ---- errors ----------------------------------------------------------------------------------------

def raises(msg):
    return pytest.raises(Exception, match=msg)


@pytest.mark.parametrize("hi", [4, 64, 100])
def test_encode_rejects_bad_hi(ops, seed, hi):
    rot, cb = split_codec(64, 3, 32, seed)
    with raises(re.escape(f"attribute hi_channels={hi} (d=64, bits=3): expected 0 or a multiple of 8 in (0, d)")):
        ops.encode(np.ones((2, 64), np.float32), rot, cb, bits=3, hi_channels=hi)


def test_encode_rejects_negative_hi(ops, seed):
    rot, cb = split_codec(64, 3, 32, seed)
    with raises(re.escape("attribute hi_channels=-8: expected 0 (one width)")):
        ops.encode(np.ones((2, 64), np.float32), rot, cb, bits=3, hi_channels=-8)


def test_codebook_must_fit_split(ops, seed):
    rot = codec.rotation(64, seed)
    x = np.ones((2, 64), np.float32)
    with raises(re.escape("input 'codebook' (float32 [8]): expected length 2^bits + 2^(bits+1) = 24")):
        ops.encode(x, rot, codec.codebook(64, 3), bits=3, hi_channels=32)
    with raises(re.escape("input 'codebook' (float32 [24]): expected length 2^bits = 8")):
        ops.encode(x, rot, codec.split_codebook(64, 3, 32), bits=3)  # split codebook, hi_channels missing
    bad = codec.split_codebook(64, 3, 32).copy()
    bad[8], bad[9] = bad[9], bad[8]  # the (bits+1)-bit part out of order
    with raises(re.escape("expected ascending centroids (entry 8 > entry 9)")):
        ops.encode(x, rot, bad, bits=3, hi_channels=32)


def test_six_bit_split_rejected(ops, seed):
    rot = codec.rotation(64, seed)
    with raises(re.escape("attribute bits=6: expected one of 1, 2, 3, 4, 5 with split widths")):
        ops.encode(np.ones((2, 64), np.float32), rot, np.sort(np.random.default_rng(0).standard_normal(192))
                   .astype(np.float32), bits=6, hi_channels=32)


def test_attention_rows_of_the_wrong_width(ops, rng, seed):
    """Rows written at K3 (28 bytes) fed to an op told key_hi_channels=32 (32 bytes): a clear error."""
    c = Case(d=64, key_bits=3, value_bits=3).build(rng)
    c.kcb = codec.split_codebook(64, 3, 32)
    c.attrs["key_hi_channels"] = 32
    with raises(re.escape("past_key") + ".*" + re.escape("row_bytes] = [2, 2, P, 32] (row_bytes for d=64, key_bits=3, "
                                                          "key_hi_channels=32")):
        from test_cpu_ops_attention import run_concat
        run_concat(ops, c)
