"""The compressed row layout (docs/ops.md section 1.4; version 2 adds the split widths of 1.4.1), and
bit packing."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .codebook import SUPPORTED_BITS

LAYOUT_VERSION = 2  # 1: one width per row; 2: the first `hi` rotated coordinates at bits + 1


def _pad4(n: int) -> int:
    return (n + 3) & ~3


@dataclass(frozen=True)
class RowLayout:
    """Byte offsets of one compressed row: scale | codes | [rnorm | signs].

    hi > 0 (layout version 2, a fractional width bits + hi/d): the codes are two streams, rotated
    coordinates [0, hi) at bits + 1 bits, then [hi, d) at bits bits, each zero-padded to 4 bytes."""

    d: int
    bits: int
    use_qjl: bool = False
    m: int = 0  # QJL sketch length (0 when QJL is off)
    hi: int = 0  # coordinates at bits + 1 (0: version 1, one width)

    @property
    def version(self) -> int:
        return 2 if self.hi else 1

    @property
    def width(self) -> float:
        """Code bits per coordinate: bits + hi/d."""
        return self.bits + self.hi / self.d

    @property
    def hi_code_bytes(self) -> int:
        return _pad4((self.hi * (self.bits + 1) + 7) // 8) if self.hi else 0

    @property
    def lo_code_bytes(self) -> int:
        return _pad4(((self.d - self.hi) * self.bits + 7) // 8)

    @property
    def code_bytes(self) -> int:
        return self.hi_code_bytes + self.lo_code_bytes

    @property
    def sign_bytes(self) -> int:
        return _pad4((self.m + 7) // 8) if self.use_qjl else 0

    @property
    def codes_offset(self) -> int:
        return 4

    @property
    def rnorm_offset(self) -> int:
        return 4 + self.code_bytes

    @property
    def signs_offset(self) -> int:
        return 8 + self.code_bytes

    @property
    def row_bytes(self) -> int:
        return 4 + self.code_bytes + (4 + self.sign_bytes if self.use_qjl else 0)


def check_hi(d: int, bits: int, hi: int, supported: tuple[int, ...], name: str = "hi_channels") -> None:
    """hi rotated coordinates at bits + 1: 0 (one width), or a multiple of 8 in (0, d) with bits + 1
    a supported width."""
    if not isinstance(hi, (int, np.integer)) or isinstance(hi, bool):
        raise ValueError(f"{name}={hi!r}: expected an integer")
    if hi == 0:
        return
    if not 0 < hi < d or hi % 8:
        raise ValueError(f"{name}={hi}: expected 0 or a multiple of 8 in (0, d={d}) "
                         "(the rotated coordinates [0, hi) get bits + 1 bits)")
    if bits + 1 not in supported:
        raise ValueError(f"{name}={hi} with bits={bits}: bits + 1 = {bits + 1} is not a supported width "
                         f"(one of {supported}); split widths run from 1.x to 5.x bits")


def layout(d: int, bits: int, use_qjl: bool = False, m: int | None = None, hi: int = 0) -> RowLayout:
    if use_qjl:
        m = d if m is None else int(m)
        if m < 1:
            raise ValueError(f"QJL sketch length m={m}: expected >= 1")
    if hi:
        check_hi(int(d), int(bits), hi, SUPPORTED_BITS)
    return RowLayout(int(d), int(bits), bool(use_qjl), int(m) if use_qjl else 0, int(hi))


def row_bytes(d: int, bits: int, use_qjl: bool = False, m: int | None = None, hi: int = 0) -> int:
    """Bytes per compressed row (one token, one head)."""
    return layout(d, bits, use_qjl, m, hi).row_bytes


def pack_bits(codes: np.ndarray, bits: int, nbytes: int) -> np.ndarray:
    """Pack [..., n] codes (< 2^bits) LSB-first into [..., nbytes] uint8 (zero padded)."""
    codes = np.asarray(codes, dtype=np.uint8)
    lead, n = codes.shape[:-1], codes.shape[-1]
    stream = ((codes[..., None] >> np.arange(bits, dtype=np.uint8)) & 1).reshape(*lead, n * bits)
    packed = np.packbits(stream, axis=-1, bitorder="little")
    out = np.zeros((*lead, nbytes), dtype=np.uint8)
    out[..., :packed.shape[-1]] = packed
    return out


def unpack_bits(packed: np.ndarray, bits: int, n: int) -> np.ndarray:
    """Inverse of pack_bits: [..., nbytes] uint8 -> [..., n] codes."""
    packed = np.asarray(packed, dtype=np.uint8)
    lead = packed.shape[:-1]
    stream = np.unpackbits(packed, axis=-1, bitorder="little")[..., : n * bits]
    stream = stream.reshape(*lead, n, bits).astype(np.uint8)
    return (stream << np.arange(bits, dtype=np.uint8)).sum(axis=-1, dtype=np.uint8)


def f32_to_bytes(v: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(v, dtype="<f4")[..., None]).view(np.uint8)


def bytes_to_f32(b: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(b).view("<f4")[..., 0].astype(np.float32)
