"""Building blocks of the fuzz strategies: head dims, codecs, vectors, hostile values."""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from tq_ort import codec

BITS = (1, 2, 3, 4, 5, 6, 8)
POW2_DIMS = (2, 4, 8, 16, 32, 64, 128)
DENSE_DIMS = (2, 3, 5, 6, 7, 12, 20, 36, 48)  # dense rotations: d not a multiple of 8 or 16 (kernel tails)
# Integer attribute values that break naive code: zero, negatives, int32/int64 limits, values whose
# low 32 bits look valid (2^32 + 4 truncates to 4), powers of two whose products wrap.
HOSTILE_INTS = (0, -1, -2, 5, 7, 16, 2**31 - 1, 2**31, 2**32 + 1, 2**32 + 4, 2**40, 2**61, 2**62, 2**63 - 1,
                -(2**31), -(2**63))
HOSTILE_FLOATS = (float("nan"), float("inf"), -float("inf"), -1.0, 0.0, 1e-38, 1e38, -1e38)
WRONG_DTYPES = (np.float64, np.int32, np.int64, np.uint8, np.int8)


def rng_of(draw) -> np.random.Generator:
    """The case's array data come from one drawn seed (hypothesis shrinks the structure, not the floats)."""
    return np.random.default_rng(draw(st.integers(0, 2**32 - 1)))


def head_dim(draw) -> tuple[int, bool]:
    """(d, dense): a Hadamard d (power of two) or a dense one of any size >= 2."""
    if draw(st.booleans()):
        return draw(st.sampled_from(DENSE_DIMS)), True
    return draw(st.sampled_from(POW2_DIMS)), False


def rotation(d: int, dense: bool, rng: np.random.Generator) -> np.ndarray:
    return codec.rotation(d, int(rng.integers(1 << 16)), dense=dense)


def qjl(m: int, d: int, rng: np.random.Generator) -> np.ndarray:
    return codec.qjl_matrix(m, d, int(rng.integers(1 << 16)))


def vectors(draw, rng: np.random.Generator, shape: tuple, dtype) -> np.ndarray:
    """Finite vectors [..., d] of one drawn kind: normal at some scale, zeros, one-hot, constant."""
    kind = draw(st.sampled_from(("normal", "normal", "zeros", "onehot", "const", "tiny", "large")))
    d = shape[-1]
    if kind == "zeros":
        x = np.zeros(shape)
    elif kind == "onehot":
        x = np.zeros(shape)
        if x.size:
            x.reshape(-1, d)[:, rng.integers(d)] = rng.choice([-3.0, 2.5])
    elif kind == "const":
        x = np.full(shape, float(rng.choice([-1.0, 0.5, 7.0])))
    else:
        scale = {"normal": 1.5, "tiny": 1e-6, "large": 1e3 if np.dtype(dtype) == np.float16 else 1e12}[kind]
        x = rng.standard_normal(shape) * scale
    return x.astype(dtype)


def inject_nonfinite(draw, rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    """A copy of x (float) with NaN, +Inf or -Inf at one random position (unchanged if empty)."""
    x = np.array(x, copy=True)
    if x.size:
        x.reshape(-1)[rng.integers(x.size)] = draw(st.sampled_from((np.nan, np.inf, -np.inf)))
    return x


def bad_rotation(draw, d: int) -> np.ndarray:
    """A rotation the ops must reject (or accept for another d): wrong rank, shape, size, dtype."""
    return draw(st.sampled_from((
        np.ones(d + 1 if d % 2 == 0 else d, np.float32) if d > 2 else np.ones(3, np.float32),  # not a power of two
        np.ones((d, d + 1), np.float32), np.ones((d, d, 1), np.float32), np.ones(0, np.float32),
        np.ones((0, 0), np.float32), np.float32(1.0) * np.ones((), np.float32), np.ones(1, np.float32),
        np.ones((1, 1), np.float32), np.ones(2 * d if d < 64 else d // 2, np.float32),
        np.ones(d, np.float16), np.ones(d, np.float64), np.full(d, np.nan, np.float32),
    )))


def bad_codebook(draw, bits: int, cb: np.ndarray) -> np.ndarray:
    K = 1 << bits
    return draw(st.sampled_from((
        cb[:-1].copy(), np.concatenate([cb, cb[-1:] + 1]), np.zeros(0, np.float32), cb[::-1].copy(),
        np.where(np.arange(K) == K // 2, np.nan, cb).astype(np.float32), cb.astype(np.float64),
        np.linspace(-1, 1, 32).astype(np.float32), np.linspace(-1, 1, 1 << 9).astype(np.float32),
        cb.reshape(1, -1), np.full(K, np.inf, np.float32), np.ones(1, np.float32),
    )))


def bad_qjl(draw, m: int, d: int) -> np.ndarray | None:
    return draw(st.sampled_from((
        None, np.ones((m, d + 1), np.float32), np.ones((0, d), np.float32), np.ones(d, np.float32),
        np.ones((m, d), np.float16), np.ones((m, 0), np.float32), np.full((m, d), np.inf, np.float32),
    )))


def hostile_int(draw) -> int:
    return draw(st.sampled_from(HOSTILE_INTS))
