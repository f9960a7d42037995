"""Lloyd-Max codebooks for one coordinate of a uniformly random unit vector in R^d.

The coordinate t has density proportional to (1 - t^2)^((d-3)/2) on [-1, 1], i.e.
(t + 1) / 2 ~ Beta(a, a) with a = (d - 1) / 2. Cell masses and partial means have closed forms in
the regularized incomplete beta function, so Lloyd's iteration needs no numerical integration.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import optimize, special

SUPPORTED_BITS = (1, 2, 3, 4, 5, 6, 8)


def _check(d: int, bits: int) -> None:
    if not isinstance(d, (int, np.integer)) or d < 2:
        raise ValueError(f"head_dim d={d!r}: expected an integer >= 2")
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"bits={bits!r}: expected one of {SUPPORTED_BITS}")


def _lloyd_step(c: np.ndarray, a: float) -> np.ndarray:
    """One Lloyd update: boundaries at midpoints, centroids at the cell means."""
    x = (np.concatenate(([-1.0], (c[:-1] + c[1:]) / 2.0, [1.0])) + 1.0) / 2.0
    mass = np.diff(special.betainc(a, a, x))
    # E[t 1{cell}] = E[2X - 1; cell] = (I(a+1, a) diff) - (I(a, a) diff)   (E[X] = 1/2)
    partial = np.diff(special.betainc(a + 1.0, a, x)) - mass
    new = np.where(mass > 0, partial / np.maximum(mass, 1e-300), c)
    return (new - new[::-1]) / 2.0  # the density is symmetric: keep the codebook exactly so


@lru_cache(maxsize=None)
def _lloyd_max(d: int, bits: int) -> tuple[float, ...]:
    a = (d - 1) / 2.0
    k = 1 << bits
    # Start from the high-resolution optimum (centroid density ~ f^(1/3), again a Beta law), then
    # solve the Lloyd fixed point c = T(c) with Powell's hybrid method: plain Lloyd iteration
    # needs ~1e5 steps for 256 levels, the solver about a hundred evaluations.
    ap = (d - 3) / 6.0 + 1.0
    c = special.betaincinv(ap, ap, (np.arange(k) + 0.5) / k) * 2.0 - 1.0
    sol = optimize.root(lambda v: _lloyd_step(v, a) - v, c, method="hybr", options={"xtol": 1e-14})
    if np.all(np.isfinite(sol.x)) and np.all(np.diff(sol.x) > 0):
        c = sol.x
    for _ in range(100000):  # polish (and the fallback should the solver stall)
        new = _lloyd_step(c, a)
        delta = float(np.max(np.abs(new - c)))
        c = new
        if delta < 1e-11:
            break
    return tuple(float(v) for v in c)


def codebook(d: int, bits: int) -> np.ndarray:
    """The 2^bits Lloyd-Max centroids (ascending, float32) for head_dim d."""
    _check(d, bits)
    return np.asarray(_lloyd_max(int(d), int(bits)), dtype=np.float32)


def codebook_f64(d: int, bits: int) -> np.ndarray:
    """The same centroids in float64 (for distortion analysis)."""
    _check(d, bits)
    return np.asarray(_lloyd_max(int(d), int(bits)), dtype=np.float64)


def boundaries(cb: np.ndarray) -> np.ndarray:
    """Decision boundaries (c[k] + c[k+1]) * 0.5 in float32, exactly as every kernel computes them."""
    cb = np.asarray(cb, dtype=np.float32)
    return ((cb[:-1] + cb[1:]) * np.float32(0.5)).astype(np.float32)


def bits_of(cb: np.ndarray, hi: int = 0) -> int:
    """Code width implied by a codebook's length: 2^bits (one width), or with hi > 0 (split widths)
    2^bits + 2^(bits+1), the bits-bit centroids followed by the (bits+1)-bit ones."""
    n = int(np.asarray(cb).shape[0]) if np.ndim(cb) == 1 else -1
    for b in SUPPORTED_BITS:
        if n == (3 << b if hi else 1 << b) and (not hi or b + 1 in SUPPORTED_BITS):
            return b
    if hi:
        raise ValueError(
            f"codebook shape {np.shape(cb)}: expected a 1-D tensor of 2^bits + 2^(bits+1) entries "
            f"(hi_channels={hi} > 0: the bits-bit centroids, then the (bits+1)-bit ones)")
    raise ValueError(
        f"codebook shape {np.shape(cb)}: expected a 1-D tensor of 2^bits entries, bits in {SUPPORTED_BITS}")


def split_codebook(d: int, bits: int, hi: int = 0) -> np.ndarray:
    """The codebook input of a layer: codebook(d, bits), and with hi > 0 (the first hi rotated
    coordinates at bits + 1, docs/ops.md 1.4.1) codebook(d, bits) followed by codebook(d, bits + 1)."""
    if not hi:
        return codebook(d, bits)
    return np.concatenate([codebook(d, bits), codebook(d, bits + 1)]).astype(np.float32)


def tables(cb: np.ndarray, hi: int = 0) -> tuple[int, np.ndarray, np.ndarray | None]:
    """(bits, the bits-bit centroids, the (bits+1)-bit centroids or None) of a codebook input."""
    cb = np.asarray(cb, np.float32)
    b = bits_of(cb, hi)
    return b, cb[: 1 << b], (cb[1 << b:] if hi else None)
