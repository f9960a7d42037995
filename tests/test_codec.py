"""The numpy reference against the math it claims: codebooks, rotations, layout, distortion, QJL."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.linalg import hadamard

from tq_ort import codec as C

# Gaussian Lloyd-Max distortion per unit variance (Max 1960): the paper's "~0.36 / 0.117 / 0.03 /
# 0.009" are these numbers rounded. TurboQuant's Theorem 1 bound is sqrt(3)*pi/2 * 4^-b.
LLOYD_MAX_GAUSS = {1: 0.3634, 2: 0.1175, 3: 0.03454, 4: 0.009497}


def unit_vectors(rng, n, d):
    x = rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("d", [64, 80, 128, 256])
@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 6, 8])
def test_codebook_is_a_lloyd_max_fixed_point(d, bits):
    cb = C.codebook_f64(d, bits)
    assert cb.shape == (1 << bits,)
    assert np.all(np.diff(cb) > 0) and np.allclose(cb, -cb[::-1])
    # Monte Carlo check of the centroid condition on the exact coordinate law (independent of the
    # closed form used to compute it): each centroid is the mean of its cell.
    rng = np.random.default_rng(d * 10 + bits)
    t = unit_vectors(rng, 40000, d)[:, :8].astype(np.float64).ravel()
    cells = np.searchsorted((cb[:-1] + cb[1:]) / 2, t)
    for k in np.unique(cells):
        sel = t[cells == k]
        if sel.size > 2000:
            assert abs(sel.mean() - cb[k]) < 5 * sel.std() / np.sqrt(sel.size) + 1e-9


def test_one_bit_codebook_matches_closed_form():
    # For large d the coordinate is ~N(0, 1/d): the 1-bit centroids are +-sqrt(2/(pi d)).
    d = 256
    assert np.allclose(C.codebook(d, 1), [-np.sqrt(2 / (np.pi * d)), np.sqrt(2 / (np.pi * d))], rtol=5e-3)


def test_fwht_is_sylvester_hadamard():
    rng = np.random.default_rng(0)
    for d in (2, 8, 64, 256):
        x = rng.standard_normal((3, d)).astype(np.float32)
        assert np.allclose(C.fwht(x), x @ hadamard(d).T, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("d", [64, 80, 96, 128])
def test_rotation_round_trip(d):
    rng = np.random.default_rng(d)
    rot = C.rotation(d, seed=5)
    assert rot.ndim == (1 if d in (64, 128) else 2)
    x = rng.standard_normal((4, d))
    y = C.forward(x, rot)
    assert np.allclose(np.linalg.norm(y, axis=1), np.linalg.norm(x, axis=1))
    assert np.allclose(C.inverse(y, rot), x, atol=1e-5)
    assert not np.allclose(C.rotation(d, seed=6), rot)


def test_pack_layout_low_nibble_first():
    codes = np.array([[1, 2, 3, 4, 15, 0]], dtype=np.uint8)
    packed = C.pack_bits(codes, 4, 4)
    assert packed.tolist() == [[0x21, 0x43, 0x0F, 0x00]]
    rng = np.random.default_rng(1)
    for b in (1, 2, 3, 4, 5, 6, 8):
        c = rng.integers(0, 1 << b, size=(5, 80), dtype=np.uint8)
        nb = (80 * b + 7) // 8
        assert np.array_equal(C.unpack_bits(C.pack_bits(c, b, nb + 3), b, 80), c)


@pytest.mark.parametrize("d,bits,qjl,expected", [
    (64, 4, False, 36), (128, 4, False, 68), (128, 3, False, 52), (128, 2, False, 36),
    (128, 3, True, 72), (128, 8, False, 132), (256, 4, False, 132), (80, 3, False, 36)])
def test_row_bytes_table(d, bits, qjl, expected):
    assert C.row_bytes(d, bits, qjl) == expected  # the table in docs/ops.md 1.4


@pytest.mark.parametrize("d", [64, 96, 128])
def test_codes_are_nearest_centroids(d):
    rng = np.random.default_rng(d + 1)
    rot, cb = C.rotation(d, 1), C.codebook(d, 3)
    x = rng.standard_normal((500, d)).astype(np.float32) * 3.0
    codes, scale, _ = C.quantize(x, rot, cb)
    u = C.forward(x, rot)
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    nearest = np.argmin(np.abs(u[..., None] - cb.astype(np.float64)), axis=-1)
    gap = np.sort(np.abs(u[..., None] - cb), axis=-1)
    clear = (gap[..., 1] - gap[..., 0]) > 1e-5  # away from a boundary, float32 rounding can't flip it
    assert np.array_equal(codes[clear], nearest[clear])
    assert clear.mean() > 0.99
    # the least-squares scale: never longer than the vector itself
    assert np.all(scale <= np.linalg.norm(x, axis=1) / np.linalg.norm(cb[codes], axis=1) * (1 + 1e-5))


@pytest.mark.parametrize("d", [64, 128, 256])
@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_mse_distortion_within_paper_bounds(d, bits):
    rng = np.random.default_rng(1000 * d + bits)
    rot, cb = C.rotation(d, seed=bits), C.codebook(d, bits)
    x = unit_vectors(rng, 4000, d)
    err = np.sum((C.decode(C.encode(x, rot, cb), rot, cb).astype(np.float64) - x) ** 2, axis=1).mean()
    assert 4.0 ** -bits < err <= LLOYD_MAX_GAUSS[bits] * 1.01, (d, bits, err)
    assert err <= np.sqrt(3) * np.pi / 2 * 4.0 ** -bits


def test_eight_bits_is_near_lossless():
    rng = np.random.default_rng(8)
    rot, cb = C.rotation(128, 0), C.codebook(128, 8)
    x = unit_vectors(rng, 1000, 128)
    err = np.sum((C.decode(C.encode(x, rot, cb), rot, cb) - x) ** 2, axis=1).mean()
    assert err < 1e-4


def test_zero_vector_round_trips_and_nan_is_refused():
    rot, cb = C.rotation(64, 0), C.codebook(64, 4)
    x = np.zeros((2, 64), np.float32)
    assert np.array_equal(C.decode(C.encode(x, rot, cb), rot, cb), x)
    x[1, 5] = np.nan
    with pytest.raises(ValueError, match=r"x shape \(2, 64\): expected finite"):
        C.encode(x, rot, cb)
    with pytest.raises(ValueError, match="expected last axis d=64"):
        C.encode(np.ones((2, 32), np.float32), rot, cb)
    with pytest.raises(ValueError, match="codebook shape"):
        C.encode(np.ones((2, 64), np.float32), rot, np.ones(5, np.float32))
    with pytest.raises(ValueError, match=r"rows shape \(3, 35\)"):
        C.decode(np.zeros((3, 35), np.uint8), rot, cb)


def test_qjl_estimator_is_unbiased_within_its_variance():
    d, m, trials = 64, 64, 3000
    rng = np.random.default_rng(7)
    rot, cb = C.rotation(d, 0), C.codebook(d, 2)
    x = rng.standard_normal((1, d)).astype(np.float32)
    q = rng.standard_normal(d)
    q_rot = C.forward(q, rot)
    true = float(q @ x[0])
    est = np.empty(trials)
    rnorm = None
    for t in range(trials):
        s = C.qjl_matrix(m, d, seed=1000 + t)
        rows = C.encode(x, rot, cb, use_qjl=True, qjl=s)
        _, scale, codes, rnorm, signs = C.row_fields(rows, rot, cb, True, s)
        est[t] = scale[0] * (q_rot @ cb[codes[0]].astype(np.float64)) + C.qjl_inner(q_rot, rnorm[0], signs[0], s)
    bound = np.pi / 2 * float(rnorm[0]) ** 2 * (q @ q) / m  # stated variance bound (ops.md 1.6)
    assert est.var() <= bound * 1.1
    assert abs(est.mean() - true) < 4 * np.sqrt(bound / trials), (est.mean(), true)
    # and the MSE-only estimate is biased for the same vector, which is why QJL exists
    mse_only = scale[0] * (q_rot @ cb[codes[0]].astype(np.float64))
    assert abs(mse_only - true) > abs(est.mean() - true)
