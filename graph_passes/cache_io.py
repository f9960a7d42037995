"""Anchor: find each layer's past/present K and V among the graph inputs and outputs."""
from __future__ import annotations

import re
from dataclasses import dataclass

import onnx_ir as ir

from .matching import RewriteError

# optimum / transformers / onnxruntime-genai naming (the names every source we support uses)
_PAST = re.compile(r"^past_key_values\.(\d+)\.(key|value)$")
_PRESENT = re.compile(r"^present\.(\d+)\.(key|value)$")


@dataclass
class CacheIO:
    layer: int
    past_key: ir.Value
    past_value: ir.Value
    present_key: ir.Value
    present_value: ir.Value

    @property
    def names(self) -> tuple[str, str, str, str]:
        return (self.past_key.name, self.past_value.name, self.present_key.name, self.present_value.name)

    @property
    def kv_heads_and_dim(self) -> tuple[int, int]:
        shape = self.past_key.shape
        if shape is None or len(shape) != 4 or not isinstance(shape[1], int) or not isinstance(shape[3], int):
            raise RewriteError(f"{self.past_key.name} shape {shape}: expected [batch, kv_heads, seq, head_dim] "
                               "with static kv_heads and head_dim")
        return shape[1], shape[3]


def find_cache_io(graph: ir.Graph) -> list[CacheIO]:
    past: dict[tuple[int, str], ir.Value] = {}
    present: dict[tuple[int, str], ir.Value] = {}
    for v in graph.inputs:
        if m := _PAST.match(v.name or ""):
            past[(int(m[1]), m[2])] = v
    for v in graph.outputs:
        if m := _PRESENT.match(v.name or ""):
            present[(int(m[1]), m[2])] = v
    if not past:
        raise RewriteError("no KV cache: expected graph inputs named past_key_values.{i}.key/.value "
                           f"(found inputs {[v.name for v in graph.inputs][:8]})")
    layers = sorted({i for i, _ in past})
    if layers != list(range(len(layers))):
        raise RewriteError(f"KV cache layers {layers}: expected 0..{len(layers) - 1}")
    out = []
    for i in layers:
        missing = [n for n, d in ((f"past_key_values.{i}.{k}", past) for k in ("key", "value")) if (i, n.rsplit(".", 1)[1]) not in d]
        missing += [f"present.{i}.{k}" for k in ("key", "value") if (i, k) not in present]
        if missing:
            raise RewriteError(f"layer {i}: missing cache I/O {missing}")
        out.append(CacheIO(i, past[(i, "key")], past[(i, "value")], present[(i, "key")], present[(i, "value")]))
    return out


def retype_cache(graph: ir.Graph, io: CacheIO, key_row_bytes: int, value_row_bytes: int) -> None:
    """Past/present K (and V unless it stays float) become uint8 rows [B, Hkv, S, row_bytes]."""
    for v, rb in ((io.past_key, key_row_bytes), (io.present_key, key_row_bytes),
                  (io.past_value, value_row_bytes), (io.present_value, value_row_bytes)):
        if rb == 0:
            continue
        dims = list(v.shape) if v.shape is not None else ["batch_size", None, None, None]
        v.type = ir.TensorType(ir.DataType.UINT8)
        v.shape = ir.Shape([dims[0], dims[1], dims[2], rb])
