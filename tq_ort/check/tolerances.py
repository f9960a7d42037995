"""Pass thresholds of `tq-ort check`, derived from the bit widths (docs/tensorrt.md, "tq-ort check").

The TurboQuant cache reconstructs a vector with relative squared error D(d, b) = E|x - x_hat|^2 / |x|^2,
which the Lloyd-Max codebook fixes in closed form (below). Its signal-to-noise ratio is
SNR_kv = -10 log10 D. Logits of a decoder whose cached keys/values carry that noise have, measured over
teacher-forced steps, a mean logits SNR close to SNR_kv of the worst-quantized cache tensor: on the
tiny llama, qwen2, gpt2 and gemma3 models (2 token sequences each, K/V bits 8/8, 4/4, 3/3, 2/2, 4/2)
the mean over the decode steps was SNR_kv - 5.4 dB .. SNR_kv + 4.3 dB and the worst single step
SNR_kv - 9.3 dB. So the rewritten model passes against its float original when the mean per-step
logits SNR (decode steps; the prefill step attends exactly) >= SNR_kv - MEAN_MARGIN_DB and every
step's SNR >= SNR_kv - STEP_MARGIN_DB. The same model on two runtimes (ORT CPU vs CUDA, ORT vs TensorRT) differs
only by rounding (fp16 inside the CUDA kernels): every step's logits SNR >= SAME_MODEL_SNR_DB[dtype],
and greedy tokens agree wherever the reference's top-2 gap exceeds TIE_FACTOR x the rms logits
difference of that step.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import special

from ..codec import codebook_f64

MEAN_MARGIN_DB = 8.0  # measured down to -5.4 dB; 8 dB = 6.3x the noise power of the cache
STEP_MARGIN_DB = 14.0  # single steps: measured down to -9.3 dB
# The other runtimes run the CUDA kernels (ORT CUDA EP, TensorRT plugins over tq_cuda_api), whose 4-bit
# decode path rounds the rotated query and the weights to fp16 (docs/cuda.md): tests/gpu/session_cuda.py
# measured CPU vs CUDA max |dlogit| / logit range 1.15e-2 on the tiny llama at 4 bits, about 33 dB.
SAME_MODEL_SNR_DB = {"float32": 25.0, "float16": 20.0}
# a greedy flip needs the two tokens' differences to add up to the reference's top-2 gap: beyond 8x the
# step's rms difference that is no longer rounding noise
TIE_FACTOR = 8.0


def distortion(d: int, bits: int) -> float:
    """E|x - x_hat|^2 for a unit vector in R^d quantized with the b-bit Lloyd-Max codebook (exact scale).

    One coordinate t has (t + 1) / 2 ~ Beta(a, a), a = (d - 1) / 2; per cell with centroid c the error
    is E[t^2] - 2 c E[t] + c^2 P over the cell, each a difference of regularized incomplete betas."""
    c = codebook_f64(d, bits)
    a = (d - 1) / 2.0
    x = (np.concatenate(([-1.0], (c[:-1] + c[1:]) / 2.0, [1.0])) + 1.0) / 2.0
    mass = np.diff(special.betainc(a, a, x))
    e_x = 0.5 * np.diff(special.betainc(a + 1.0, a, x))  # E[X; cell]
    e_x2 = (a + 1.0) / (2.0 * (2.0 * a + 1.0)) * np.diff(special.betainc(a + 2.0, a, x))  # E[X^2; cell]
    e_t, e_t2 = 2.0 * e_x - mass, 4.0 * e_x2 - 4.0 * e_x + mass
    return float(d * np.sum(e_t2 - 2.0 * c * e_t + c * c * mass))


def kv_snr_db(config: dict) -> tuple[float, str]:
    """(SNR_kv in dB, which cache tensor sets it) over every layer's keys and values (values kept in
    float, bits 0, do not count; QJL keys count their MSE code bits, the lower bound of their quality)."""
    worst, where = math.inf, "no compressed cache tensor"
    for layer in config["layers"]:
        for kind, bits in (("keys", layer["key_bits"]), ("values", layer["value_bits"])):
            if not bits:
                continue
            snr = -10.0 * math.log10(distortion(layer["head_dim"], bits))
            if snr < worst:
                worst, where = snr, f"layer {layer['layer']} {kind}: {bits} bits, head_dim {layer['head_dim']}"
    return worst, where


@dataclass(frozen=True)
class Tolerance:
    """What one comparison must meet (dB), and where the numbers come from (printed with the report)."""

    step_snr_db: float
    mean_snr_db: float | None  # None: no mean check (same-model comparisons check every step)
    tie_factor: float | None  # None: greedy agreement reported, not required
    why: str


def float_vs_rewritten(config: dict, mean_margin_db: float = MEAN_MARGIN_DB,
                       step_margin_db: float = STEP_MARGIN_DB) -> Tolerance:
    snr, where = kv_snr_db(config)
    if math.isinf(snr):
        return Tolerance(SAME_MODEL_SNR_DB["float32"], None, None, "no compressed cache: as the same model")
    return Tolerance(snr - step_margin_db, snr - mean_margin_db, None,
                     f"SNR_kv {snr:.1f} dB ({where}); mean >= SNR_kv - {mean_margin_db:g} dB, "
                     f"each step >= SNR_kv - {step_margin_db:g} dB")


def same_model(dtype: str) -> Tolerance:
    snr = SAME_MODEL_SNR_DB["float16" if dtype in ("float16", "fp16", "half") else "float32"]
    return Tolerance(snr, None, TIE_FACTOR, f"same model, {dtype}: each step >= {snr:g} dB, greedy tokens equal "
                     f"unless the top-2 gap < {TIE_FACTOR:g} x rms difference")
