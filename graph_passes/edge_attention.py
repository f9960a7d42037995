"""--target edge: the attention of TurboQuantAttention (docs/ops.md 4) in standard ai.onnx ops.

`EdgeGraphBuilder.attention` has the signature and results of `GraphBuilder.attention`, so every
rule emits an edge model unchanged. Per layer it emits (docs/edge.md):

- encode the new K (and V) with `edge_codec.encode_rows` (codes bit-identical to the custom op),
  present = Concat(past rows, new rows) (concat mode: the cache grows by the step's rows);
- decode the past rows (scale bytes -> float, bit unpacking, Gather of the codebook);
- scores: the query rotated once (MatMul with the rotation), `scale_j * <R q, c[code_j]>` for the
  cached keys (MatMul), `<q, k>` for the step's own keys (exact float), causal + padding (+ sliding
  window) mask from seqlens_k, optional softcap, Softmax;
- values: cached ones accumulated in the rotated domain (MatMul with scale-weighted probabilities),
  rotated back once per output vector, plus the step's exact values; GQA groups by Reshape (each
  compressed row is read once per KV head, for all query heads of its group).

Semantics are the op's in concat mode: the new tokens sit at positions P .. P+S-1 (P = past
length) and batch rows have length P + S after the step, or a right-padded first prompt (P = 0,
queries at i >= L output zeros, keys at i >= L are not attended). Shared-buffer decoding (rows
written in place at seqlens positions) is not expressed: edge models run in concat mode.
"""
from __future__ import annotations

import numpy as np
import onnx_ir as ir

from . import edge_codec as ec
from .builder import GraphBuilder
from .config import LayerPlan

_NEG = float(np.finfo(np.float32).min)


class EdgeGraphBuilder(GraphBuilder):
    """A GraphBuilder whose attention is a subgraph of standard ops (no custom domain)."""

    def __init__(self, graph: ir.Graph, cfg):
        super().__init__(graph, cfg)
        self.e = ec.EdgeOps(self)
        self._masks: dict[int, tuple[ir.Value, ir.Value]] = {}
        # the model's float dtype, read before the pipeline retypes the cache to uint8 rows
        past = [v for v in graph.inputs if (v.name or "").startswith("past_key_values.")]
        self.float_dtype = next((v.dtype for v in past if v.dtype is not None), ir.DataType.FLOAT)

    # -- masks (built once per window size, shared by the layers) --------------------------------
    def _mask(self, past_key: ir.Value, query: ir.Value, seqlens: ir.Value, window: int) -> tuple[ir.Value, ir.Value]:
        """(additive mask [B, 1, 1, S, P+S]: 0 where attended, float32 min elsewhere; query_valid
        [B, 1, 1, S, 1] float). Additive so that the per-layer path is Add + Softmax (CoreML-eligible ops)."""
        if window in self._masks:
            return self._masks[window]
        e = self.e
        P = e.op("Squeeze", e.op("Shape", past_key, start=2, end=3), e.ints(0))
        S = e.op("Squeeze", e.op("Shape", query, start=1, end=2), e.ints(0))
        T = e.op("Add", P, S)
        one, zero = e.scalar(1), e.scalar(0)
        j = e.op("Range", zero, T, one)  # key positions [T]
        pos = e.op("Unsqueeze", e.op("Add", e.op("Range", zero, S, one), P), e.ints(-1))  # [S, 1]
        L = e.reshape(e.op("Add", e.cast(seqlens, ir.DataType.INT64), one), -1, 1, 1, 1, 1)  # [B,1,1,1,1]
        allowed = e.op("And", e.op("LessOrEqual", j, pos), e.op("Less", j, L))  # [B,1,1,S,T]
        if window > 0:
            allowed = e.op("And", allowed, e.op("Greater", j, e.op("Sub", pos, e.scalar(window))))
        qvalid = e.cast(e.op("Less", pos, L), ir.DataType.FLOAT)  # [B,1,1,S,1]
        bias = e.op("Where", allowed, e.f(0.0), e.f(_NEG))
        self._masks[window] = (bias, qvalid)
        return bias, qvalid

    def _rotmats(self, plan: LayerPlan) -> tuple[ir.Value, ir.Value]:
        fwd = ec.rotation_matrix_t(self.rotation_array(plan))
        return (self.initializer(f"tqe.rot_fwd.{plan.layer}", fwd),
                self.initializer(f"tqe.rot_inv.{plan.layer}", np.ascontiguousarray(fwd.T)))

    # -- the attention ------------------------------------------------------------------------------
    def attention(self, plan: LayerPlan, *, query, key, value, past_key, past_value, seqlens_k, total_seq,
                  scale: float, cos=None, sin=None, do_rotary: bool = False, softcap: float = 0.0,
                  name: str | None = None):
        from tq_ort import codec

        if do_rotary or plan.use_qjl or plan.recent_window:  # refused earlier (pipeline / TQConfig)
            raise AssertionError("edge attention: rotary / QJL / recent window are not expressed")
        e = self.e
        d, hq, hkv = plan.head_dim, plan.num_heads, plan.kv_heads
        G = hq // hkv
        F = ir.DataType.FLOAT
        rot = self.rotation_array(plan)
        q, k, v = (self._bnsh(x, h, d) for x, h in ((query, hq), (key, hkv), (value, hkv)))
        f32 = self.float_dtype == F
        qf, kf, vf = (x if f32 else e.cast(x, F) for x in (q, k, v))
        # cache write: encode the new rows, present = past ++ new
        new_k = ec.encode_rows(e, kf, rot, codec.codebook(d, plan.key_bits))
        present_k = e.op("Concat", past_key, new_k, axis=2)
        if plan.value_bits:
            present_v = e.op("Concat", past_value, ec.encode_rows(e, vf, rot, codec.codebook(d, plan.value_bits)),
                             axis=2)
        else:
            present_v = e.op("Concat", past_value, v, axis=2)
        fwd, inv = self._rotmats(plan)
        # rank 5 [B, Hkv, G, S, .]: query head g*G + r of token i at [.., g, r, i, :]; the KV side is
        # [B, Hkv, 1, ., .] and broadcasts over the group (each row decoded once per KV head)
        qg = e.reshape(qf, 0, hkv, G, -1, d)

        def kv5(x: ir.Value, transpose: bool) -> ir.Value:
            return e.op("Unsqueeze", e.op("Transpose", x, perm=[0, 1, 3, 2]) if transpose else x, e.ints(2))

        # scores over the cached keys, in the rotated domain: scale_j * <R q, c[code_j]>
        k_scale, k_cent = ec.decode_rotated(e, past_key, d, codec.codebook(d, plan.key_bits))
        s_past = e.op("Mul", e.op("MatMul", e.op("MatMul", qg, fwd), kv5(k_cent, True)), kv5(k_scale, True))
        s_new = e.op("MatMul", qg, kv5(kf, True))  # the step's own keys: exact
        s = e.op("Mul", e.op("Concat", s_past, s_new, axis=-1), e.f(float(scale)))  # [B, Hkv, G, S, P+S]
        if softcap:
            s = e.op("Mul", e.op("Tanh", e.op("Mul", s, e.f(1.0 / softcap))), e.f(float(softcap)))
        bias, qvalid = self._mask(past_key, query, seqlens_k, plan.window)
        p = e.op("Softmax", e.op("Add", s, bias), axis=-1)
        P = e.op("Shape", past_key, start=2, end=3)
        p_past = e.op("Slice", p, e.ints(0), P, e.ints(-1))
        p_new = e.op("Slice", p, P, e.ints(2 ** 62), e.ints(-1))
        if plan.value_bits:
            v_scale, v_cent = ec.decode_rotated(e, past_value, d, codec.codebook(d, plan.value_bits))
            o_rot = e.op("MatMul", e.op("Mul", p_past, kv5(v_scale, True)), kv5(v_cent, False))
            o = e.op("Add", e.op("MatMul", o_rot, inv), e.op("MatMul", p_new, kv5(vf, False)))
        else:
            pv = past_value if f32 else e.cast(past_value, F)
            o = e.op("MatMul", p, kv5(e.op("Concat", pv, vf, axis=2), False))
        o = e.op("Mul", o, qvalid)  # invalid (right-padding) queries output zeros
        o = e.op("Transpose", e.reshape(o, 0, hq, -1, d), perm=[0, 2, 1, 3])
        out = e.reshape(o, 0, 0, hq * d)
        if not f32:
            out = e.cast(out, self.float_dtype)
        return out, present_k, present_v

    def _bnsh(self, x: ir.Value, heads: int, d: int) -> ir.Value:
        """[B, S, H*d] -> [B, H, S, d] (undoing the rule's own BNSH -> BSH view when it is one)."""
        p = x.producer()
        if p is not None and p.op_type == "Reshape" and p.inputs[0].producer() is not None:
            t = p.inputs[0].producer()
            if t.op_type == "Transpose" and [int(a) for a in t.attributes["perm"].value] == [0, 2, 1, 3] \
                    and p in self.nodes:
                return t.inputs[0]
        return self.bsh_to_bnsh(x, heads, d)
