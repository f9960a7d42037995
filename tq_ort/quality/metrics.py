"""Per-position metrics of next-token distributions: log-softmax, KL, mean NLL per text."""
from __future__ import annotations

import numpy as np

from .data import EvalData


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32, copy=False)
    m = x.max(axis=-1, keepdims=True)
    z = x - m
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def kl_divergence(lp_ref: np.ndarray, lp: np.ndarray) -> np.ndarray:
    """KL(ref || other) per row, in nats."""
    p = np.exp(lp_ref)
    return np.maximum((p * (lp_ref - lp)).sum(axis=-1), 0.0)


def per_text(data: EvalData, nll: np.ndarray) -> dict:
    out = {}
    names = np.asarray(data.window_text)
    for t in dict.fromkeys(data.window_text):
        out[t] = float(nll[names == t].mean())
    out["all"] = float(nll.mean())
    return out
