"""Emitting the TurboQuantAttention node and its initializers into an onnx-ir graph."""
from __future__ import annotations

import numpy as np
import onnx_ir as ir

from tq_ort import codec

from .config import LayerPlan, TQConfig

DOMAIN = "turboquant"
T_INT32 = ir.DataType.INT32


class GraphBuilder:
    """Adds nodes and (deduplicated) initializers to one graph, in insertion order."""

    def __init__(self, graph: ir.Graph, cfg: TQConfig):
        self.graph = graph
        self.cfg = cfg
        self._consts: dict[str, ir.Value] = {}
        self.nodes: list[ir.Node] = []

    def initializer(self, name: str, array: np.ndarray) -> ir.Value:
        if name not in self._consts:
            v = ir.Value(name=name, type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
                         shape=ir.Shape(array.shape), const_value=ir.tensor(array, name=name))
            self.graph.register_initializer(v)
            self._consts[name] = v
        return self._consts[name]

    def node(self, op: str, inputs, attrs=None, domain: str = "", num_outputs: int = 1, name: str | None = None):
        n = ir.Node(domain, op, inputs, attributes=attrs or {}, num_outputs=num_outputs, name=name)
        self.graph.append(n)
        self.nodes.append(n)
        return n.outputs if num_outputs > 1 else n.outputs[0]

    # -- the codec's initializers -------------------------------------------------------------
    def rotation_array(self, plan: LayerPlan) -> np.ndarray:
        """The layer's rotation (signs [d] or dense [d, d]): seed + layer."""
        return codec.rotation(plan.head_dim, self.cfg.seed + plan.layer)

    def rotation(self, plan: LayerPlan) -> ir.Value:
        return self.initializer(f"tq.rotation.{plan.layer}", self.rotation_array(plan))

    def codebook(self, d: int, bits: int, hi: int = 0) -> ir.Value:
        """codebook(d, bits), or with hi > 0 (split widths) codebook(d, bits) then codebook(d, bits + 1)."""
        return self.initializer(f"tq.codebook.d{d}.b{bits}" + (f".hi{hi}" if hi else ""),
                                codec.split_codebook(d, bits, hi))

    def qjl(self, plan: LayerPlan) -> ir.Value:
        return self.initializer(f"tq.qjl.d{plan.head_dim}.m{plan.qjl_dim}",
                                codec.qjl_matrix(plan.qjl_dim, plan.head_dim, self.cfg.seed))

    def attention(self, plan: LayerPlan, *, query, key, value, past_key, past_value, seqlens_k, total_seq,
                  scale: float, cos=None, sin=None, do_rotary: bool = False, softcap: float = 0.0,
                  name: str | None = None):
        inputs = [query, key, value, past_key, past_value, seqlens_k, total_seq, self.rotation(plan),
                  self.codebook(plan.head_dim, plan.key_bits, plan.key_hi),
                  self.codebook(plan.head_dim, plan.value_bits, plan.value_hi) if plan.value_bits else None,
                  self.qjl(plan) if plan.use_qjl else None, cos, sin]
        rings = [(plan.past_key_recent, plan.present_key_recent),
                 (plan.past_value_recent, plan.present_value_recent)] if plan.recent_window else []
        rings = [r for r in rings if r[0]]
        ring_inputs = [self._ring_input(plan, name, past_key) for name, _ in rings]
        inputs += ring_inputs
        while inputs[-1] is None:
            inputs.pop()
        attrs = {
            "num_heads": ir.AttrInt64("num_heads", plan.num_heads),
            "kv_num_heads": ir.AttrInt64("kv_num_heads", plan.kv_heads),
            "scale": ir.AttrFloat32("scale", float(scale)),
            "key_bits": ir.AttrInt64("key_bits", plan.key_bits),
            "value_bits": ir.AttrInt64("value_bits", plan.value_bits),
            "use_qjl": ir.AttrInt64("use_qjl", int(plan.use_qjl)),
            "do_rotary": ir.AttrInt64("do_rotary", int(do_rotary)),
            "local_window_size": ir.AttrInt64("local_window_size", plan.window),
            "softcap": ir.AttrFloat32("softcap", float(softcap)),
        }
        for attr, hi in (("key_hi_channels", plan.key_hi), ("value_hi_channels", plan.value_hi)):
            if hi:  # split widths (docs/ops.md 1.4.1); absent = 0, as older models have it
                attrs[attr] = ir.AttrInt64(attr, hi)
        if plan.recent_window:
            attrs["recent_window"] = ir.AttrInt64("recent_window", plan.recent_window)
        outs = self.node("TurboQuantAttention", inputs, attrs, domain=DOMAIN, num_outputs=3 + len(rings),
                         name=name or f"tq/layer{plan.layer}/TurboQuantAttention")
        for (_, present_name), ring_in, out in zip(rings, ring_inputs, outs[3:]):
            out.name, out.type, out.shape = present_name, ring_in.type, ring_in.shape
            self.graph.outputs.append(out)
        return outs[:3]

    def _ring_input(self, plan: LayerPlan, name: str, past_key: ir.Value) -> ir.Value:
        """A graph input for an exact recent-window ring: the model's float dtype, [B, Hkv, R, d]."""
        batch = past_key.shape[0] if past_key.shape is not None else "batch_size"
        dtype = {"float32": ir.DataType.FLOAT, "float16": ir.DataType.FLOAT16}[plan.recent_dtype]
        v = ir.Value(name=name, type=ir.TensorType(dtype),
                     shape=ir.Shape([batch, plan.kv_heads, plan.recent_window, plan.head_dim]))
        self.graph.inputs.append(v)
        return v

    # -- layout plumbing ----------------------------------------------------------------------
    def bnsh_to_bsh(self, v: ir.Value, heads: int, d: int) -> ir.Value:
        t = self.node("Transpose", [v], {"perm": ir.AttrInt64s("perm", [0, 2, 1, 3])})
        return self.node("Reshape", [t, self.initializer(f"tq.shape.bs{heads * d}", np.array([0, 0, heads * d]))])

    def bsh_to_bnsh(self, v: ir.Value, heads: int, d: int) -> ir.Value:
        r = self.node("Reshape", [v, self.initializer(f"tq.shape.bs{heads}x{d}", np.array([0, 0, heads, d]))])
        return self.node("Transpose", [r], {"perm": ir.AttrInt64s("perm", [0, 2, 1, 3])})

    def seqlens_from_mask(self, mask: ir.Value) -> tuple[ir.Value, ir.Value]:
        """GQA's seqlens_k (int32 [B], valid length - 1) and total_sequence_length (int32 scalar)
        from a [B, T] attention_mask (ones then zeros: right padding or none)."""
        if "seqlens" in self._consts:
            return self._consts["seqlens"], self._consts["total"]
        m64 = mask if mask.dtype == ir.DataType.INT64 else self.node(
            "Cast", [mask], {"to": ir.AttrInt64("to", ir.DataType.INT64)})
        s = self.node("ReduceSum", [m64, self.initializer("tq.axes1", np.array([1]))],
                      {"keepdims": ir.AttrInt64("keepdims", 0)})
        s = self.node("Sub", [s, self.initializer("tq.one64", np.array(1, dtype=np.int64))])
        seqlens = self.node("Cast", [s], {"to": ir.AttrInt64("to", T_INT32)}, name="tq/seqlens_k")
        shp = self.node("Shape", [mask], {"start": ir.AttrInt64("start", 1), "end": ir.AttrInt64("end", 2)})
        shp = self.node("Squeeze", [shp, self.initializer("tq.axes0", np.array([0]))])
        total = self.node("Cast", [shp], {"to": ir.AttrInt64("to", T_INT32)}, name="tq/total_sequence_length")
        self._consts["seqlens"], self._consts["total"] = seqlens, total
        return seqlens, total
