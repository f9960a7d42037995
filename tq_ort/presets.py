"""Named compression presets (`tq-ort export --preset NAME`), chosen from the quality measurements.

`PRESETS[name]` = the TQConfig keyword arguments, plus `"measured"`: the numbers the choice rests on
(drop it with `preset_config(name)`). tests/test_presets.py checks every number against the results
file it names, so the two cannot drift apart.

How they were measured (docs/quality.md): through ONNX Runtime and the TurboQuantAttention CPU op,
one token per decode step, perplexity of the rewritten model against the unrewritten float32 model
on PTB test + Alice + English Wikipedia, greedy agreement over 4 prompts x 256 tokens. SmolLM2-135M:
3 windows of 2048 tokens (`benchmarks/quality/sweep.py --tag recent --context 2048 ...`). Weights
are dequantised GGUF: a relative comparison of caches on the same weights.

Why these four:
- The exact recent window is the lever: the last R tokens are read from a float ring (a fixed
  cost of R tokens), everything older from the rows. On SmolLM2 it takes K4V3 from +7.8% to +0.4%
  perplexity (R=64) and K4V4 from +5.9% to +0.3%, for a few percent of the cache at 2K context and
  less beyond. Without it no configuration reached >= 3.5x at <= 1% (K4V4: 3.56x, +5.9%).
- Keys carry the loss (K4V8 +4.7% vs K8V4 +0.7% at 512 tokens), so 4-bit keys everywhere.
- QJL and protecting layers 0,1,-2,-1 at 8 bits were not worth their bytes (docs/quality.md).
- Split widths (docs/ops.md 1.4.1, `--tag split`): at the bytes of K4V2 / K3V3 + 64 exact (4.00x at
  2K, 4.53x at 32K, both +2.1%), K3.5V2.5 + 64 exact gives +0.84%: the extra key bit on half the
  coordinates buys more than a whole value bit. That is `compact`, the only preset that needs the CPU
  execution provider (the CUDA kernels and TensorRT plugins do not read split widths yet; on CUDA
  use `max-compression`).
- Compression counts the rings in float16 and is quoted at the measured 2048-token context; at
  longer contexts it rises towards the rows-only ratio (4.0x for K4V3).
"""
from __future__ import annotations

RECENT = "benchmarks/quality/results/recent-smollm2-135m-instruct-2026-11-24.json"
SPLIT = "benchmarks/quality/results/split-smollm2-135m-instruct-2026-12-08.json"

PRESETS: dict[str, dict] = {
    "quality": {
        "key_bits": 4, "value_bits": 4, "recent_window": 64,
        "measured": {
            "results": RECENT, "label": "K4V4 recent64",
            "compression": 3.20, "ppl_delta_pct": 0.27, "kl": 0.0063, "greedy_agreement": 0.994,
            "summary": "SmolLM2-135M at 2K context: 3.20x smaller than float16 (3.37x at 4K), perplexity +0.27%, "
                       "KL 0.006, greedy agreement 99.4%",
        },
    },
    "balanced": {
        "key_bits": 4, "value_bits": 3, "recent_window": 64,
        "measured": {
            "results": RECENT, "label": "K4V3 recent64",
            "compression": 3.56, "ppl_delta_pct": 0.43, "kl": 0.0114, "greedy_agreement": 0.987,
            "summary": "SmolLM2-135M at 2K context: 3.56x (3.76x at 4K), perplexity +0.43%, KL 0.011, greedy "
                       "agreement 98.7% (the same rows without the window: +7.8%)",
        },
    },
    "max-compression": {
        "key_bits": 4, "value_bits": 2, "recent_window": 64,
        "measured": {
            "results": RECENT, "label": "K4V2 recent64",
            "compression": 4.00, "ppl_delta_pct": 2.07, "kl": 0.0414, "greedy_agreement": 0.979,
            "summary": "SmolLM2-135M at 2K context: 4.00x (4.27x at 4K), perplexity +2.1%, KL 0.041, greedy "
                       "agreement 97.9% (K3V3 recent64: the same bytes, +2.1%; 3-bit keys fail on Gemma-3)",
        },
    },
    "compact": {
        "key_bits": 3.5, "value_bits": 2.5, "recent_window": 64,
        "measured": {
            "results": SPLIT, "label": "K3.5V2.5 recent64",
            "compression": 4.00, "ppl_delta_pct": 0.84, "kl": 0.0308, "greedy_agreement": 0.989,
            "summary": "SmolLM2-135M at 2K context: 4.00x (4.53x at 32K), perplexity +0.84% (ptb +0.66%, alice +1.37%, "
                       "wiki +0.49%), KL 0.031, greedy agreement 98.9%; split widths: CPU EP only for now",
        },
    },
}


def preset_config(name: str) -> dict:
    """TQConfig keyword arguments of preset `name`."""
    if name not in PRESETS:
        raise ValueError(f"preset {name!r}: expected one of {', '.join(PRESETS)}")
    return {k: v for k, v in PRESETS[name].items() if k != "measured"}
