"""TurboQuantEncode / TurboQuantDecode on the ORT CPU EP against the numpy reference (tq_ort.codec)."""
from __future__ import annotations

import numpy as np
import pytest

from tq_ort import codec

DIMS = [64, 80, 96, 128, 256]
BITS = [1, 2, 3, 4, 5, 6, 8]


def make_codec(d, bits, seed, use_qjl=False, m=None):
    rot = codec.rotation(d, seed)
    cb = codec.codebook(d, bits)
    qjl = codec.qjl_matrix(m or d, d, seed + 1) if use_qjl else None
    return rot, cb, qjl


def sample(rng, shape, dtype=np.float32):
    """Gaussian vectors with per-vector scales over a few decades (never all zeros)."""
    x = rng.standard_normal(shape) * np.exp(rng.uniform(-3, 3, shape[:-1] + (1,)))
    return x.astype(dtype)


def compare_rows(got, ref, d, bits, use_qjl, m, seed):
    lay = codec.layout(d, bits, use_qjl, m)
    assert got.shape == ref.shape and got.dtype == np.uint8, f"seed={seed}: {got.shape} vs {ref.shape}"
    cs = slice(4, 4 + lay.code_bytes)
    bad = np.argwhere(np.any(got[..., cs] != ref[..., cs], axis=-1))
    assert bad.size == 0, f"seed={seed}: codes differ in {len(bad)} rows, first at {bad[0].tolist()}"
    s_got, s_ref = got[..., 0:4].copy().view(np.float32), ref[..., 0:4].copy().view(np.float32)
    np.testing.assert_allclose(s_got, s_ref, rtol=1e-5, atol=0, err_msg=f"scale, seed={seed}")
    if use_qjl:
        ro = lay.rnorm_offset
        r_got, r_ref = got[..., ro:ro + 4].copy().view(np.float32), ref[..., ro:ro + 4].copy().view(np.float32)
        np.testing.assert_allclose(r_got, r_ref, rtol=2e-4, atol=1e-6 * float(np.abs(r_ref).max()),
                                   err_msg=f"rnorm, seed={seed}")
        so = lay.signs_offset
        sg = np.unpackbits(got[..., so:so + lay.sign_bytes], axis=-1, bitorder="little")
        sr = np.unpackbits(ref[..., so:so + lay.sign_bytes], axis=-1, bitorder="little")
        flips = float(np.mean(sg[..., :m] != sr[..., :m]))
        assert flips < 0.01, f"seed={seed}: {flips:.2%} QJL sign bits flipped"
        assert not np.any(sg[..., m:]), f"seed={seed}: sign padding not zero"


@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("bits", BITS)
def test_encode_matches_reference(ops, seed, rng, d, bits):
    rot, cb, _ = make_codec(d, bits, seed)
    x = sample(rng, (3, 37, d))
    got = ops.encode(x, rot, cb, bits=bits)
    compare_rows(got, codec.encode(x, rot, cb), d, bits, False, None, seed)


@pytest.mark.parametrize("d,bits,m", [(64, 3, 64), (80, 2, 80), (96, 3, 48), (128, 3, 128), (256, 1, 256),
                                      (128, 4, 100)])
def test_encode_qjl_matches_reference(ops, seed, rng, d, bits, m):
    rot, cb, qjl = make_codec(d, bits, seed, True, m)
    x = sample(rng, (5, 41, d))
    got = ops.encode(x, rot, cb, qjl, bits=bits, use_qjl=1)
    compare_rows(got, codec.encode(x, rot, cb, True, qjl), d, bits, True, m, seed)


@pytest.mark.parametrize("d,bits,use_qjl", [(64, 4, 0), (80, 3, 1), (128, 2, 0), (128, 3, 1), (256, 8, 0)])
def test_encode_float16_input(ops, seed, rng, d, bits, use_qjl):
    rot, cb, qjl = make_codec(d, bits, seed, bool(use_qjl))
    x = sample(rng, (2, 50, d), np.float16)
    got = ops.encode(x, rot, cb, qjl, bits=bits, use_qjl=use_qjl)
    compare_rows(got, codec.encode(x, rot, cb, bool(use_qjl), qjl), d, bits, bool(use_qjl), d if use_qjl else None,
                 seed)


@pytest.mark.parametrize("d,bits", [(36, 3), (20, 4), (72, 2)])
def test_encode_odd_head_dims(ops, seed, rng, d, bits):
    """d not a multiple of 8 takes the portable encoder, 72 the vector one with a dense rotation."""
    rot, cb, qjl = make_codec(d, bits, seed, True, 13)
    x = sample(rng, (3, 11, d))
    compare_rows(ops.encode(x, rot, cb, qjl, bits=bits, use_qjl=1), codec.encode(x, rot, cb, True, qjl), d, bits,
                 True, 13, seed)


@pytest.mark.parametrize("shape", [(64,), (7, 64), (2, 3, 4, 64)])
def test_encode_any_rank(ops, seed, rng, shape):
    rot, cb, _ = make_codec(64, 4, seed)
    x = sample(rng, shape)
    got = ops.encode(x, rot, cb, bits=4)
    assert got.shape == shape[:-1] + (codec.row_bytes(64, 4),)
    compare_rows(got, codec.encode(x, rot, cb), 64, 4, False, None, seed)


@pytest.mark.parametrize("d", [64, 96])
def test_encode_zero_vector_round_trips_to_zero(ops, seed, rng, d):
    rot, cb, _ = make_codec(d, 3, seed)
    x = sample(rng, (4, d))
    x[1] = 0.0
    rows = ops.encode(x, rot, cb, bits=3)
    compare_rows(rows, codec.encode(x, rot, cb), d, 3, False, None, seed)
    back = ops.decode(rows, rot, cb)
    assert np.all(back[1] == 0.0), f"seed={seed}"


def test_encode_initializer_inputs(ops, seed, rng):
    """The codec tensors as graph initializers (how rewritten models carry them)."""
    rot, cb, qjl = make_codec(128, 3, seed, True)
    x = sample(rng, (9, 128))
    got = ops.run("TurboQuantEncode", {"x": x, "rotation": rot, "codebook": cb, "qjl_matrix": qjl},
                  {"rows": (np.uint8, None)}, dict(bits=3, use_qjl=1),
                  initializers={"rotation": rot, "codebook": cb, "qjl_matrix": qjl})[0]
    compare_rows(got, codec.encode(x, rot, cb, True, qjl), 128, 3, True, 128, seed)


@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("bits", [1, 3, 4, 8])
def test_decode_matches_reference(ops, seed, rng, d, bits):
    rot, cb, _ = make_codec(d, bits, seed)
    rows = codec.encode(sample(rng, (2, 33, d)), rot, cb)
    got = ops.decode(rows, rot, cb)
    ref = codec.decode(rows, rot, cb)
    scale = np.abs(ref).max(axis=-1, keepdims=True)
    assert np.all(np.abs(got - ref) <= 2e-6 * scale + 1e-30), f"seed={seed}: max err {np.abs(got - ref).max()}"


@pytest.mark.parametrize("d,use_qjl", [(64, 0), (80, 1), (128, 1)])
def test_decode_float16_output(ops, seed, rng, d, use_qjl):
    rot, cb, qjl = make_codec(d, 4, seed, bool(use_qjl))
    rows = codec.encode(sample(rng, (40, d)), rot, cb, bool(use_qjl), qjl)
    got = ops.decode(rows, rot, cb, qjl, use_qjl=use_qjl, out_dtype=np.float16)
    assert got.dtype == np.float16
    ref = codec.decode(rows, rot, cb, bool(use_qjl), qjl).astype(np.float16)
    np.testing.assert_allclose(got.astype(np.float32), ref.astype(np.float32), rtol=2e-3, atol=1e-6,
                               err_msg=f"seed={seed}")


def test_encode_decode_round_trip_error(ops, seed, rng):
    """8-bit codes are near-lossless: a sanity check of the whole path through ORT."""
    rot, cb, _ = make_codec(128, 8, seed)
    x = sample(rng, (64, 128))
    back = ops.decode(ops.encode(x, rot, cb, bits=8), rot, cb)
    rel = np.linalg.norm(back - x, axis=-1) / np.linalg.norm(x, axis=-1)
    assert rel.max() < 0.02, f"seed={seed}: relative error {rel.max()}"
