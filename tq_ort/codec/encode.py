"""Encode vectors into compressed rows and decode them back (docs/ops.md sections 1.3-1.5)."""
from __future__ import annotations

import numpy as np

from .codebook import boundaries, tables
from .rotation import forward_unscaled, head_dim_of, inv_sqrt_d, inverse
from .rows import RowLayout, bytes_to_f32, f32_to_bytes, layout, pack_bits, unpack_bits


def _sum_sq_8lanes(z: np.ndarray) -> np.ndarray:
    """Sum of squares in the fixed 8-lane order of docs/ops.md 1.3 step 3 (float32, exact)."""
    d = z.shape[-1]
    zz = z * z
    acc = np.zeros((*z.shape[:-1], 8), dtype=np.float32)
    for i in range(0, d, 8):
        chunk = zz[..., i:i + 8]
        acc[..., : chunk.shape[-1]] = acc[..., : chunk.shape[-1]] + chunk
    a = [acc[..., k] for k in range(8)]
    return ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]))


def _check_finite(name: str, x: np.ndarray) -> None:
    if not np.all(np.isfinite(x)):
        bad = np.argwhere(~np.isfinite(x))[0]
        raise ValueError(f"{name} shape {x.shape}: expected finite values, found {x[tuple(bad)]} at {tuple(bad)}")


def quantize(x: np.ndarray, rot: np.ndarray, cb: np.ndarray, name: str = "x", hi: int = 0):
    """Codes [..., d] (uint8), scale [...] (float32) and the rotated y = R x [..., d] (float32).

    The codes index cb: with hi > 0 (split widths) coordinates [0, hi) hold 2^bits + their
    (bits+1)-bit code (cb is the bits-bit codebook followed by the (bits+1)-bit one), so cb[codes] are
    the centroids either way."""
    d = head_dim_of(rot)
    x = np.asarray(x)
    if x.shape[-1:] != (d,):
        raise ValueError(f"{name} shape {x.shape}: expected last axis d={d} (from rotation {np.shape(rot)})")
    x = x.astype(np.float32)
    _check_finite(name, x)
    cb = np.asarray(cb, dtype=np.float32)
    z = forward_unscaled(x, rot)
    ss = _sum_sq_8lanes(z)
    zero = ss == 0
    with np.errstate(divide="ignore"):
        inv = np.float32(1.0) / np.sqrt(ss)
    inv = np.where(zero, np.float32(0.0), inv).astype(np.float32)
    t = z * inv[..., None]
    bits, lo, up = tables(cb, hi)
    codes = np.searchsorted(boundaries(lo), t, side="left").astype(np.uint8)  # #{k : t > B[k]}
    codes[zero] = len(lo) // 2
    if hi:
        top = np.searchsorted(boundaries(up), t[..., :hi], side="left")
        top[zero] = len(up) // 2
        codes[..., :hi] = (top + len(lo)).astype(np.uint8)
    c = cb[codes].astype(np.float64)
    scale = inv_sqrt_d(rot) * np.einsum("...i,...i->...", z.astype(np.float64), c) / np.einsum("...i,...i->...", c, c)
    scale = np.where(zero, 0.0, scale).astype(np.float32)
    y = (z * inv_sqrt_d(rot)).astype(np.float32)
    return codes, scale, y


def encode(x: np.ndarray, rotation: np.ndarray, codebook: np.ndarray, use_qjl: bool = False,
           qjl: np.ndarray | None = None, name: str = "x", hi: int = 0) -> np.ndarray:
    """TurboQuantEncode: x [..., d] (float32/float16) -> rows uint8 [..., row_bytes].

    hi > 0: split widths (docs/ops.md 1.4.1), codebook = codebook(d, bits) then codebook(d, bits+1)."""
    d = head_dim_of(rotation)
    bits = tables(codebook, hi)[0]
    m = _qjl_dim(qjl, d, use_qjl)
    lay = layout(d, bits, use_qjl, m, hi)
    codes, scale, y = quantize(x, rotation, codebook, name, hi)
    rows = np.zeros((*codes.shape[:-1], lay.row_bytes), dtype=np.uint8)
    rows[..., 0:4] = f32_to_bytes(scale)
    rows[..., 4:4 + lay.code_bytes] = _pack_codes(codes, lay)
    if use_qjl:
        r = y.astype(np.float64) - scale[..., None].astype(np.float64) * np.asarray(codebook, np.float64)[codes]
        rows[..., lay.rnorm_offset:lay.rnorm_offset + 4] = f32_to_bytes(np.linalg.norm(r, axis=-1))
        p = r @ np.asarray(qjl, dtype=np.float64).T
        rows[..., lay.signs_offset:lay.signs_offset + lay.sign_bytes] = pack_bits(p >= 0, 1, lay.sign_bytes)
    return rows


def _pack_codes(codes: np.ndarray, lay: RowLayout) -> np.ndarray:
    """The code bytes of rows: one bits-bit stream, or (split widths) the (bits+1)-bit stream of
    coordinates [0, hi) then the bits-bit stream of [hi, d), each padded to 4 bytes."""
    if not lay.hi:
        return pack_bits(codes, lay.bits, lay.code_bytes)
    top = codes[..., :lay.hi] - np.uint8(1 << lay.bits)
    return np.concatenate([pack_bits(top, lay.bits + 1, lay.hi_code_bytes),
                           pack_bits(codes[..., lay.hi:], lay.bits, lay.lo_code_bytes)], axis=-1)


def _unpack_codes(code_bytes: np.ndarray, lay: RowLayout) -> np.ndarray:
    """Inverse of _pack_codes: codes that index the codebook input (see quantize)."""
    if not lay.hi:
        return unpack_bits(code_bytes, lay.bits, lay.d)
    top = unpack_bits(code_bytes[..., :lay.hi_code_bytes], lay.bits + 1, lay.hi) + np.uint8(1 << lay.bits)
    return np.concatenate([top, unpack_bits(code_bytes[..., lay.hi_code_bytes:], lay.bits, lay.d - lay.hi)],
                          axis=-1)


def _qjl_dim(qjl: np.ndarray | None, d: int, use_qjl: bool) -> int | None:
    if not use_qjl:
        return None
    if qjl is None:
        raise ValueError("qjl_matrix: required when use_qjl=1, got none")
    qjl = np.asarray(qjl)
    if qjl.ndim != 2 or qjl.shape[1] != d:
        raise ValueError(f"qjl_matrix shape {qjl.shape}: expected [m, {d}]")
    return int(qjl.shape[0])


def row_fields(rows: np.ndarray, rotation: np.ndarray, codebook: np.ndarray, use_qjl: bool = False,
               qjl: np.ndarray | None = None, name: str = "rows", hi: int = 0):
    """Split rows into (layout, scale [...], codes [..., d], rnorm [...] | None, signs [..., m] | None);
    codebook[codes] are the centroids (also with split widths, hi > 0)."""
    d = head_dim_of(rotation)
    bits = tables(codebook, hi)[0]
    lay: RowLayout = layout(d, bits, use_qjl, _qjl_dim(qjl, d, use_qjl), hi)
    rows = np.asarray(rows)
    if rows.dtype != np.uint8 or rows.shape[-1:] != (lay.row_bytes,):
        raise ValueError(
            f"{name} shape {rows.shape} dtype {rows.dtype}: expected uint8 [..., {lay.row_bytes}] "
            f"(d={d}, bits={bits}, use_qjl={int(use_qjl)}" + (f", hi_channels={hi})" if hi else ")"))
    scale = bytes_to_f32(rows[..., 0:4])
    codes = _unpack_codes(rows[..., 4:4 + lay.code_bytes], lay)
    if not use_qjl:
        return lay, scale, codes, None, None
    rnorm = bytes_to_f32(rows[..., lay.rnorm_offset:lay.rnorm_offset + 4])
    signs = unpack_bits(rows[..., lay.signs_offset:lay.signs_offset + lay.sign_bytes], 1, lay.m)
    return lay, scale, codes, rnorm, signs


def decode_rotated(rows: np.ndarray, rotation: np.ndarray, codebook: np.ndarray, use_qjl: bool = False,
                   qjl: np.ndarray | None = None, hi: int = 0) -> np.ndarray:
    """scale * c[codes] in the rotated domain, float64 [..., d]."""
    _, scale, codes, _, _ = row_fields(rows, rotation, codebook, use_qjl, qjl, hi=hi)
    return scale[..., None].astype(np.float64) * np.asarray(codebook, np.float64)[codes]


def decode(rows: np.ndarray, rotation: np.ndarray, codebook: np.ndarray, use_qjl: bool = False,
           qjl: np.ndarray | None = None, dtype=np.float32, hi: int = 0) -> np.ndarray:
    """TurboQuantDecode: rows -> x_hat = scale * R^T c[codes], [..., d]."""
    return inverse(decode_rotated(rows, rotation, codebook, use_qjl, qjl, hi), rotation).astype(dtype)


def qjl_inner(q_rot: np.ndarray, rnorm: np.ndarray, signs: np.ndarray, qjl: np.ndarray) -> np.ndarray:
    """The QJL correction rnorm * sqrt(pi/2)/m * <S q_rot, sgn> for rotated queries [..., d] against
    rows with rnorm [...] and sign bits [..., m] (broadcast as q_rot[..., None, :] vs rows)."""
    s = np.asarray(qjl, dtype=np.float64)
    sq = np.asarray(q_rot, dtype=np.float64) @ s.T  # [..., m]
    sgn = np.where(np.asarray(signs) > 0, 1.0, -1.0)
    return np.asarray(rnorm, np.float64) * np.sqrt(np.pi / 2) / s.shape[0] * np.einsum("...m,...m->...", sq, sgn)
