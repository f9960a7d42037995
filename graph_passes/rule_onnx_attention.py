"""Rule: ONNX `Attention` (opset 23, torch.onnx dynamo exports) -> TurboQuantAttention.

Pattern, per layer (docs/export-forms.md section 2):
    present.k = Concat(past.k, k_new, axis=-2)        present.v = Concat(past.v, v_new, axis=-2)
    Y = Attention(Q [B,Hq,S,d], [repeat](present.k), [repeat](present.v), mask)   (4-D, no past inputs)
    out = Reshape(Transpose(Y, [0,2,1,3]), [B,S,-1])
Check: 4-D inputs, no past_key/past_value inputs on the node, only output Y used,
qk_matmul_output_mode 0. The mask is the causal + padding mask the op recomputes from
seqlens_k (sliding windows come from config.json). Rewrite: as the decomposed rule.
"""
from __future__ import annotations

from . import rule_decomposed_attention as decomposed
from .matching import RewriteError, attr_int, value_shape

rewrite = decomposed.rewrite


def match(io, hf: dict) -> dict:
    i = io.layer
    _, k_new = decomposed._concat_new_input(io.present_key, io.past_key, "key", i)
    _, v_new = decomposed._concat_new_input(io.present_value, io.past_value, "value", i)
    att = [n for n in decomposed._after_repeat(io.present_key) if n.op_type == "Attention"]
    if len(att) != 1 or att[0].inputs[1] is None:
        raise RewriteError(f"layer {i}: {io.present_key.name} does not feed one ONNX Attention node")
    att = att[0]
    if att not in decomposed._after_repeat(io.present_value):
        raise RewriteError(f"layer {i}: {io.present_value.name} does not feed the same Attention node")
    extra = [j for j in (4, 5) if len(att.inputs) > j and att.inputs[j] is not None]
    if extra:
        raise RewriteError(f"layer {i}: Attention node {att.name} has past_key/past_value inputs: expected the "
                           "cache concatenated outside the node")
    if any(o.uses() for o in att.outputs[1:]):
        raise RewriteError(f"layer {i}: Attention node {att.name} has present/qk outputs in use")
    if attr_int(att, "qk_matmul_output_mode", 0) != 0:
        raise RewriteError(f"layer {i}: Attention qk_matmul_output_mode must be 0")
    q = att.inputs[0]
    qs = value_shape(q)
    if qs is not None and len(qs) != 4:
        raise RewriteError(f"layer {i}: Attention query shape {qs}: expected 4-D [B, Hq, S, d]")
    scale_attr = att.attributes.get("scale")
    d = io.kv_heads_and_dim[1]
    scale = float(scale_attr.value) if scale_attr is not None and scale_attr.value else d ** -0.5
    softcap = att.attributes.get("softcap")
    return dict(k_new=k_new, v_new=v_new, q=q, scale=scale, mask=att.inputs[3] if len(att.inputs) > 3 else None,
                out=att.outputs[0], q_heads=qs[1] if qs and isinstance(qs[1], int) else None,
                softcap=float(softcap.value) if softcap is not None else 0.0)
