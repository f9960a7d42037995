"""Comparisons with the numpy reference and the outcome of one fuzz case.

Tolerances are those of the op tests (tests/test_cpu_ops_attention.py's check): codes bit-exact,
scales to 1e-5 relative, QJL sign bits may flip where a projection is within rounding of zero,
attention outputs to 1e-4 (float32) or 2e-3 (float16) of max(1, max |reference|).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tq_ort import codec

# Outcomes: the first two pass for valid cases, the next two for invalid ones; the rest fail.
PASS = ("match", "result", "error")
FAIL = ("mismatch", "refused", "vague-error", "crash", "hang", "oom")
OUTCOMES = PASS + FAIL
# An error raised by our kernels (prefixed "TurboQuant...") must name what it rejects.
NAMING = ("input '", "attribute", "output '", "present_key capacity")


@dataclass
class Outcome:
    op: str
    label: str
    valid: bool
    kind: str       # one of OUTCOMES
    detail: str     # error message, signal, difference
    seconds: float

    @property
    def passed(self) -> bool:
        return self.kind in PASS


def rows_diff(got: np.ndarray, ref: np.ndarray, d: int, bits: int, use_qjl: bool, m: int | None,
              what: str) -> str | None:
    """None, or how uint8 rows [..., row_bytes] differ beyond the codec's tolerance."""
    if got.shape != ref.shape or got.dtype != ref.dtype:
        return f"{what}: {got.dtype} {list(got.shape)} vs reference {ref.dtype} {list(ref.shape)}"
    if got.size == 0:
        return None
    lay = codec.layout(d, bits, use_qjl, m)
    cs = slice(4, 4 + lay.code_bytes)
    bad = np.argwhere(np.any(got[..., cs] != ref[..., cs], axis=-1))
    if bad.size:
        return f"{what}: codes differ in {len(bad)} rows, first at {bad[0].tolist()}"
    s_got = got[..., :4].copy().view(np.float32)
    s_ref = ref[..., :4].copy().view(np.float32)
    if not np.allclose(s_got, s_ref, rtol=1e-5, atol=1e-30, equal_nan=True):
        i = np.unravel_index(np.argmax(np.abs(s_got - s_ref)), s_got.shape)
        return f"{what}: scale {s_got[i]} vs reference {s_ref[i]} at {list(i)}"
    if use_qjl:
        ro = lay.rnorm_offset
        r_got = got[..., ro:ro + 4].copy().view(np.float32)[..., 0].astype(np.float64)
        r_ref = ref[..., ro:ro + 4].copy().view(np.float32)[..., 0].astype(np.float64)
        codes = codec.unpack_bits(ref[..., cs], bits, d)
        cnorm = np.linalg.norm(codec.codebook(d, bits).astype(np.float64)[codes], axis=-1)
        # The residual r = y - scale * c[code] is float32 in the kernel (float64 in the reference):
        # each coordinate carries a rounding error of about eps * |y|, |y| ~ |scale| * |c[code]|,
        # which dominates rnorm where the codebook fits y closely (8-bit codes of a large vector).
        rnd = 1e-5 * np.abs(s_ref[..., 0].astype(np.float64)) * cnorm
        err = np.abs(r_got - r_ref)
        ok = (err <= 1e-4 * np.abs(r_ref) + 1e-6 * max(1.0, float(np.abs(r_ref).max()))) | (err <= rnd)
        if not ok.all():
            i = tuple(np.argwhere(~ok)[0])
            return f"{what}: rnorm {r_got[i]} vs reference {r_ref[i]} at {list(i)} (max diff {float(err.max()):.3g})"
        sg = np.unpackbits(got[..., lay.signs_offset:], axis=-1, bitorder="little")
        sr = np.unpackbits(ref[..., lay.signs_offset:], axis=-1, bitorder="little")
        # A residual within rounding of zero (e.g. a one-hot vector that a Hadamard rotation makes
        # flat, which the codebook then fits exactly): every projection is rounding noise, so its
        # sign bits are arbitrary (docs/ops.md 1.3 step 6). Such rows are not compared.
        noise = np.abs(r_ref) <= rnd
        flips = np.count_nonzero((sg != sr) & ~noise[..., None])
        # a flip needs a projection within rounding of 0: rare, at most a couple per row
        if flips > max(2, 0.01 * sg.size):
            return f"{what}: {flips} of {sg.size} QJL sign bits differ"
    return None


def float_diff(got: np.ndarray, ref: np.ndarray, what: str, tol32: float = 1e-4, tol16: float = 2e-3) -> str | None:
    if got.shape != ref.shape or got.dtype != ref.dtype:
        return f"{what}: {got.dtype} {list(got.shape)} vs reference {ref.dtype} {list(ref.shape)}"
    if got.size == 0:
        return None
    g, r = got.astype(np.float64), ref.astype(np.float64)
    if not np.array_equal(np.isfinite(g), np.isfinite(r)):
        return f"{what}: non-finite values differ from the reference"
    fin = np.isfinite(r)
    scale = max(1.0, float(np.abs(r[fin]).max())) if fin.any() else 1.0
    tol = (tol16 if got.dtype == np.float16 else tol32) * scale
    err = np.abs(np.where(fin, g - r, 0.0))
    if err.max() > tol:
        i = np.unravel_index(np.argmax(err), err.shape)
        return f"{what}: max abs err {err.max():.3g} (tol {tol:.3g}) at {list(i)}"
    return None


F16_MAX = 65504.0


def half_diff(got: np.ndarray, ref32: np.ndarray, what: str, tol16: float = 2e-3) -> str | None:
    """A float16 output against the float32 reference, to float_diff's tolerance. Where that
    tolerance reaches past float16's range, rounding alone can carry a value over the overflow
    threshold or not (a one-hot row decoded at scale 1e12: the float32 noise of 1e5 on the zero
    coordinates is +-inf in float16, the reference's float64 sum gives 0): there +inf is within
    tolerance of any reference >= 65504 - tol (and -inf likewise); elsewhere infinities must agree."""
    if got.shape != ref32.shape or got.dtype != np.float16:
        return f"{what}: {got.dtype} {list(got.shape)} vs reference float16 {list(ref32.shape)}"
    if got.size == 0:
        return None
    g, r = got.astype(np.float64), ref32.astype(np.float64)
    if not np.array_equal(np.isnan(g), np.isnan(r)):
        return f"{what}: NaN where the reference has none (or the reverse)"
    fin = np.isfinite(r)
    scale = max(1.0, float(np.abs(r[fin]).max())) if fin.any() else 1.0
    tol = tol16 * scale
    pos, neg = g == np.inf, g == -np.inf
    ok_pos = (r == np.inf) | (fin & (r + tol >= F16_MAX))
    ok_neg = (r == -np.inf) | (fin & (r - tol <= -F16_MAX))
    bad_inf = (pos & ~ok_pos) | (neg & ~ok_neg)
    if bad_inf.any():
        i = tuple(np.argwhere(bad_inf)[0])
        return f"{what}: {got[i]} at {list(i)} where the reference is {ref32[i]} (tol {tol:.3g})"
    both = np.isfinite(g) & fin
    if np.any(np.isfinite(g) & np.isinf(r)):
        return f"{what}: finite where the float32 reference overflows"
    err = np.abs(np.where(both, g - r, 0.0))
    if err.max() > tol:
        i = np.unravel_index(np.argmax(err), err.shape)
        return f"{what}: max abs err {err.max():.3g} (tol {tol:.3g}) at {list(i)}"
    return None


def exact_diff(got: np.ndarray, ref: np.ndarray, what: str) -> str | None:
    if got.shape != ref.shape or got.dtype != ref.dtype or not np.array_equal(got, ref, equal_nan=True):
        return f"{what}: {got.dtype} {list(got.shape)} differs from the reference {ref.dtype} {list(ref.shape)}"
    return None
