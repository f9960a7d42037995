"""Compressed-cache allocation from a rewritten model's metadata, and its memory accounting."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

METADATA_KEY = "turboquant.config"


@dataclass(frozen=True)
class CacheSpec:
    """One cache tensor: name of its past input / present output, dtype and per-token row width."""

    layer: int
    past: str
    present: str
    kv_heads: int
    width: int  # bytes per row for uint8 rows, head_dim for float caches
    dtype: np.dtype
    ring: int = 0  # > 0: an exact recent-window ring of this many slots (fixed size, not per token)

    def shape(self, batch: int, seq: int) -> tuple[int, int, int, int]:
        return (batch, self.kv_heads, self.ring or seq, self.width)

    def bytes_per_token(self) -> int:
        return 0 if self.ring else self.kv_heads * self.width * self.dtype.itemsize

    def fixed_bytes(self) -> int:
        """Bytes per batch row that do not grow with the context (the rings)."""
        return self.kv_heads * self.ring * self.width * self.dtype.itemsize if self.ring else 0


def cache_specs(sess, head_dim: int | None = None) -> list[CacheSpec]:
    """Cache tensors of any decoder session, from its past inputs (head_dim fills a symbolic width,
    as onnxruntime-genai exports have)."""
    dtypes = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(uint8)": np.uint8,
              "tensor(bfloat16)": np.float16}
    specs = []
    for inp in sess.get_inputs():
        if not inp.name.startswith("past_key_values."):
            continue
        _, layer, kind = inp.name.split(".")
        heads, width = inp.shape[1], inp.shape[3]
        ring = 0
        if kind.endswith("_recent"):  # an exact recent-window ring: [B, Hkv, R, d], R static
            ring = inp.shape[2]
            if not isinstance(ring, int) or ring <= 0:
                raise ValueError(f"{inp.name} shape {inp.shape}: expected a static ring size [B, Hkv, R, d]")
        if not isinstance(width, int) and inp.type != "tensor(uint8)" and head_dim:
            width = head_dim
        if not isinstance(heads, int) or not isinstance(width, int):
            raise ValueError(f"{inp.name} shape {inp.shape}: expected static kv_heads and row width")
        specs.append(CacheSpec(int(layer), inp.name, f"present.{layer}.{kind}", heads, width,
                               np.dtype(dtypes[inp.type]), ring))
    if not specs:
        raise ValueError("model has no past_key_values.* inputs: not a decoder with a KV cache")
    return sorted(specs, key=lambda s: (s.layer, s.past))


def head_dim_hint(model_dir: Path) -> int | None:
    """head_dim from genai_config.json or config.json beside a model, if either is there."""
    g = model_dir / "genai_config.json"
    if g.exists():
        return json.loads(g.read_text())["model"]["decoder"].get("head_size")
    c = model_dir / "config.json"
    if c.exists():
        hf = json.loads(c.read_text())
        if hf.get("head_dim"):
            return int(hf["head_dim"])
        if hf.get("hidden_size") and hf.get("num_attention_heads"):
            return int(hf["hidden_size"]) // int(hf["num_attention_heads"])
    return None


def fp16_bytes_per_token(cfg: dict | None, specs: list[CacheSpec]) -> int:
    """What the same cache costs in float16: Hkv * head_dim * 2 bytes per K or V tensor."""
    if cfg is None:
        return sum(s.kv_heads * s.width * 2 for s in specs if not s.ring)
    return sum(2 * layer["kv_heads"] * layer["head_dim"] * 2 for layer in cfg["layers"])


def describe(cfg: dict | None, specs: list[CacheSpec], context: int, batch: int = 1) -> dict:
    tq = sum(s.bytes_per_token() for s in specs)
    fixed = sum(s.fixed_bytes() for s in specs)
    fp16 = fp16_bytes_per_token(cfg, specs)
    return {"bytes_per_token": tq, "fixed_bytes": fixed, "fp16_bytes_per_token": fp16, "context": context,
            "batch": batch, "cache_bytes": (tq * context + fixed) * batch, "fp16_cache_bytes": fp16 * context * batch,
            "compression": fp16 * context / (tq * context + fixed)}
