"""The compressed row layout, version 1 (docs/ops.md section 1.4), and bit packing."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LAYOUT_VERSION = 1


def _pad4(n: int) -> int:
    return (n + 3) & ~3


@dataclass(frozen=True)
class RowLayout:
    """Byte offsets of one compressed row: scale | codes | [rnorm | signs]."""

    d: int
    bits: int
    use_qjl: bool = False
    m: int = 0  # QJL sketch length (0 when QJL is off)

    @property
    def code_bytes(self) -> int:
        return _pad4((self.d * self.bits + 7) // 8)

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


def layout(d: int, bits: int, use_qjl: bool = False, m: int | None = None) -> RowLayout:
    if use_qjl:
        m = d if m is None else int(m)
        if m < 1:
            raise ValueError(f"QJL sketch length m={m}: expected >= 1")
    return RowLayout(int(d), int(bits), bool(use_qjl), int(m) if use_qjl else 0)


def row_bytes(d: int, bits: int, use_qjl: bool = False, m: int | None = None) -> int:
    """Bytes per compressed row (one token, one head)."""
    return layout(d, bits, use_qjl, m).row_bytes


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
