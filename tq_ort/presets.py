"""Named compression presets (for a `--preset` flag), chosen from the quality sweep (docs/quality.md).

`PRESETS[name]` = the TQConfig keyword arguments, plus `"measured"`: the numbers the choice rests
on (not a TQConfig argument; drop it with `preset_config(name)`). Measured with
`python benchmarks/quality/sweep.py` (and `--model gemma3-270m`) through ONNX Runtime and the
TurboQuantAttention CPU op, one token per decode step: perplexity over 4088 (SmolLM2) / 4092
(Gemma) scored tokens of PTB test + Alice + English Wikipedia, windows of 512 / 1024 tokens,
against the unrewritten float32 model; greedy agreement over 4 prompts x 256 tokens.
Weights are dequantised GGUF (Q4_1 / Q4_K_M): a relative comparison of caches on the same weights.

Why these three (SmolLM2-135M, head_dim 64; Gemma-3-270M, head_dim 256):
- keys carry the loss: 4-bit keys cost +4.7% perplexity on SmolLM2 with 8-bit values (K4V8), 4-bit
  values cost +0.7% with 8-bit keys (K8V4). So `quality` keeps keys at 8 bits.
- no configuration reaches >= 3.5x at <= 1% on SmolLM2; the closest at >= 3.5x is K4V4
  (3.56x, +5.5%), the most compressed at <= 1% is K8V4 (2.46x, +0.7%). See docs/quality.md.
- QJL (b-1 code bits + 1 sign bit) and protecting layers 0,1,-2,-1 are not worth their bytes on
  these models (QJL: +33% at K4V4; protection: +4.1% at 3.18x vs +5.5% at 3.56x unprotected),
  so no preset uses them.
- against a per-token uniform int4 cache at the same bytes, K4V4 is better on both models
  (SmolLM2 +5.5% vs +8.2%; Gemma +20% vs +487%).
"""
from __future__ import annotations

PRESETS: dict[str, dict] = {
    "quality": {
        "key_bits": 8, "value_bits": 4,
        "measured": {
            "smollm2-135m": {"compression": 2.46, "bits_per_value": 6.5, "ppl_delta_pct": 0.68, "kl": 0.0078,
                             "top1": 0.947, "greedy_agreement": 0.992},
            "summary": "2.46x smaller than float16, perplexity +0.68%, KL 0.008, greedy agreement 99.2% "
                       "(the most compressed configuration within 1%)",
        },
    },
    "balanced": {
        "key_bits": 4, "value_bits": 4,
        "measured": {
            "smollm2-135m": {"compression": 3.56, "bits_per_value": 4.5, "ppl_delta_pct": 5.46, "kl": 0.0545,
                             "top1": 0.860, "greedy_agreement": 0.977},
            "gemma-3-270m": {"compression": 3.88, "bits_per_value": 4.125, "ppl_delta_pct": 20.38, "kl": 0.1918,
                             "top1": 0.728, "greedy_agreement": 0.970},
            "summary": "3.56x, perplexity +5.5%, KL 0.055, greedy agreement 97.7% (uniform int4 at the same "
                       "bytes: +8.2%); Gemma-3-270M 3.88x, +20%",
        },
    },
    "max-compression": {
        "key_bits": 4, "value_bits": 2,
        "measured": {
            "smollm2-135m": {"compression": 4.57, "bits_per_value": 3.5, "ppl_delta_pct": 20.45, "kl": 0.2062,
                             "top1": 0.745, "greedy_agreement": 0.961},
            "gemma-3-270m": {"compression": 5.12, "bits_per_value": 3.125, "ppl_delta_pct": 48.29, "kl": 0.3896,
                             "top1": 0.653, "greedy_agreement": 0.962},
            "summary": "4.57x, perplexity +20%, KL 0.21, greedy agreement 96.1% (uniform int3 at the same "
                       "bytes: +70%; 3-bit keys are worse: K3V3 +21% here, +137% on Gemma)",
        },
    },
}


def preset_config(name: str) -> dict:
    """TQConfig keyword arguments of preset `name`."""
    if name not in PRESETS:
        raise ValueError(f"preset {name!r}: expected one of {', '.join(PRESETS)}")
    return {k: v for k, v in PRESETS[name].items() if k != "measured"}
