"""Seeded random rotations: randomized Hadamard (d a power of two) or dense orthogonal."""
from __future__ import annotations

import numpy as np


def is_pow2(d: int) -> bool:
    return d >= 2 and (d & (d - 1)) == 0


def rotation(d: int, seed: int = 0, dense: bool = False) -> np.ndarray:
    """The rotation initializer: signs [d] for a randomized Hadamard, or an orthogonal [d, d]."""
    if d < 2:
        raise ValueError(f"head_dim d={d}: expected >= 2")
    rng = np.random.default_rng([int(seed), 0x70A7])
    if is_pow2(d) and not dense:
        return np.where(rng.random(d) < 0.5, -1.0, 1.0).astype(np.float32)
    g = rng.standard_normal((d, d))
    q, r = np.linalg.qr(g)
    q = q * np.sign(np.diag(r))[None, :]  # Haar-distributed: fix the column signs
    return q.astype(np.float32)


def qjl_matrix(m: int, d: int, seed: int = 0) -> np.ndarray:
    """The QJL sketch S: [m, d] with i.i.d. N(0, 1) entries (acts on rotated residuals)."""
    if m < 1 or d < 1:
        raise ValueError(f"qjl_matrix shape [{m}, {d}]: expected positive sizes")
    rng = np.random.default_rng([int(seed), 0x051A])
    return rng.standard_normal((m, d)).astype(np.float32)


def head_dim_of(rot: np.ndarray) -> int:
    rot = np.asarray(rot)
    if rot.ndim == 1 and is_pow2(rot.shape[0]):
        return int(rot.shape[0])
    if rot.ndim == 2 and rot.shape[0] == rot.shape[1]:
        return int(rot.shape[0])
    raise ValueError(
        f"rotation shape {rot.shape}: expected [d] signs (d a power of two) or a square [d, d] matrix")


def fwht(v: np.ndarray) -> np.ndarray:
    """Unnormalized Walsh-Hadamard transform along the last axis, Sylvester order, in float32.

    Stages h = 1, 2, 4, ... in that order; each (a, b) -> (a + b, a - b) is one rounded float32
    operation, the order every kernel uses, so results are bit-identical across runtimes.
    """
    v = np.array(v, dtype=np.float32, copy=True)
    d = v.shape[-1]
    lead = v.shape[:-1]
    h = 1
    while h < d:
        w = v.reshape(*lead, d // (2 * h), 2, h)
        a = w[..., 0, :].copy()
        b = w[..., 1, :]
        w[..., 0, :] = a + b
        w[..., 1, :] = a - b
        v = w.reshape(*lead, d)
        h *= 2
    return v


def inv_sqrt_d(rot: np.ndarray) -> np.float32:
    """The float32 factor that makes the Hadamard orthonormal (1 for dense rotations)."""
    rot = np.asarray(rot)
    return np.float32(1.0 / np.sqrt(rot.shape[0])) if rot.ndim == 1 else np.float32(1.0)


def forward_unscaled(x: np.ndarray, rot: np.ndarray) -> np.ndarray:
    """z = H (s * x) (Hadamard, before the 1/sqrt(d) factor) or z = R x (dense), exact float32."""
    x = np.asarray(x, dtype=np.float32)
    rot = np.asarray(rot, dtype=np.float32)
    if rot.ndim == 1:
        return fwht(x * rot)
    d = rot.shape[0]
    z = np.zeros(x.shape, dtype=np.float32)
    for j in range(d):  # axpy order of docs/ops.md 1.1: products and sums each rounded
        z = z + rot[:, j] * x[..., j:j + 1]
    return z


def forward(x: np.ndarray, rot: np.ndarray) -> np.ndarray:
    """y = R x in float64 (not on the exact path: queries, analysis)."""
    x = np.asarray(x, dtype=np.float64)
    rot = np.asarray(rot, dtype=np.float64)
    if rot.ndim == 1:
        return _fwht64(x * rot) / np.sqrt(rot.shape[0])
    return x @ rot.T


def inverse(y: np.ndarray, rot: np.ndarray) -> np.ndarray:
    """x = R^T y in float64."""
    y = np.asarray(y, dtype=np.float64)
    rot = np.asarray(rot, dtype=np.float64)
    if rot.ndim == 1:
        return _fwht64(y) * rot / np.sqrt(rot.shape[0])
    return y @ rot


def _fwht64(v: np.ndarray) -> np.ndarray:
    v = np.array(v, dtype=np.float64, copy=True)
    d = v.shape[-1]
    lead = v.shape[:-1]
    h = 1
    while h < d:
        w = v.reshape(*lead, d // (2 * h), 2, h)
        a = w[..., 0, :].copy()
        b = w[..., 1, :]
        w[..., 0, :] = a + b
        w[..., 1, :] = a - b
        v = w.reshape(*lead, d)
        h *= 2
    return v
