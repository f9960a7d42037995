"""Regression tests of the fuzz harness itself (tests/fuzz/): the comparisons and cases behind the
false failures the 10,000-case campaign found (docs/reliability.md section 1)."""
from __future__ import annotations

import numpy as np
import pytest

from fuzz.check import float_diff, half_diff, rows_diff
from fuzz.model import Empty
from tq_ort import codec


def test_float16_decode_overflow_within_rounding(ops):
    """1-bit rows of 1e12-scale vectors decoded to float16: the kernel's float32 rounding noise
    (~1e5 where the float64 reference cancels to 0) is +-inf in float16. The old comparison (against
    the float16 reference: "non-finite values differ") failed such valid cases; half_diff accepts an
    infinity wherever the tolerance reaches past 65504."""
    d = 128
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((48, d)) * 1e12).astype(np.float32)
    rot, cb = codec.rotation(d, 0), codec.codebook(d, 1)
    rows = codec.encode(x, rot, cb)
    got = ops.decode(rows, rot, cb, out_dtype=np.float16)
    with np.errstate(all="ignore"):
        r16 = codec.decode(rows, rot, cb, dtype=np.float16)
        r32 = codec.decode(rows, rot, cb, dtype=np.float32)
        assert float_diff(got, r16, "x_hat") is not None  # the case the campaign tripped on
        assert half_diff(got, r32, "x_hat") is None


def test_half_diff_still_catches_errors():
    ref = np.array([1.0, -2.0, 60000.0, 3.0], np.float32)  # tolerance: 2e-3 * 60000 = 120
    ok = ref.astype(np.float16)
    assert half_diff(ok, ref, "x") is None
    for bad in ([np.inf, -2, 60000, 3], [1, -2, 60000, -np.inf], [1, -2, 60000, 300], [1, np.nan, 60000, 3]):
        assert half_diff(np.asarray(bad, np.float16), ref, "x") is not None, bad
    # the tolerance (2e-3 * 60000 = 120) does not reach 65504 from 60000: no overflow allowed
    assert half_diff(np.asarray([1, -2, np.inf, 3], np.float16), ref, "x") is not None
    assert half_diff(ok.astype(np.float32), ref, "x") is not None  # dtype


def test_rnorm_tolerance_of_large_vectors(ops):
    """8-bit QJL rows of 1e12-scale keys: the float32 residual y - scale * c carries ~1e5 of rounding
    (the reference's is float64), far more than a tolerance relative to rnorm itself; rows_diff now
    allows what |scale| * |c| implies."""
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((64, 2)) * 1.6e12).astype(np.float32)
    rot, cb, q = codec.rotation(2, 3), codec.codebook(2, 8), codec.qjl_matrix(37, 2, 5)
    got = ops.encode(x, rot, cb, q, bits=8, use_qjl=1)
    ref = codec.encode(x, rot, cb, True, q)
    lay = codec.layout(2, 8, True, 37)
    rg = got[..., lay.rnorm_offset:lay.rnorm_offset + 4].copy().view(np.float32)
    rr = ref[..., lay.rnorm_offset:lay.rnorm_offset + 4].copy().view(np.float32)
    assert np.abs(rg - rr).max() > 1e3  # the case: far beyond the old rtol 1e-4 of rnorm
    assert rows_diff(got, ref, 2, 8, True, 37, "rows") is None
    # a real rnorm error is still one
    bad = got.copy()
    bad[..., lay.rnorm_offset:lay.rnorm_offset + 4] = (rr * 2).view(np.uint8).reshape(bad.shape[0], 4)
    assert rows_diff(bad, ref, 2, 8, True, 37, "rows") is not None


def test_empty_needs_a_zero_dim():
    """A mutation once fed Empty((3, 2^30-1, 2, 6)): not empty at all (the worker allocated 77 GB)."""
    assert Empty((0, 2**40, 4), np.dtype(np.float32)).size == 0
    with pytest.raises(ValueError, match="expected a zero dim"):
        Empty((3, 2**30 - 1, 2, 6), np.dtype(np.float16))
