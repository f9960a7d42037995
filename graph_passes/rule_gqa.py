"""Rule: com.microsoft.GroupQueryAttention (onnxruntime-genai model builder) -> TurboQuantAttention.

Pattern, per layer (docs/export-forms.md section 3):
    Y, present.k, present.v = GroupQueryAttention(qkv | q, [k], [v], past.k, past.v, seqlens_k,
                                                  total_sequence_length, [cos_cache, sin_cache])
The interfaces are the same by design: TurboQuantAttention keeps every input and attribute and adds
the codec's initializers. Check: non-interleaved rotary, no attention bias / position ids / head
sink / quantized cache. Packed QKV is split into q, k, v (Split on the last axis).
"""
from __future__ import annotations

import numpy as np
import onnx_ir as ir

from .matching import RewriteError, attr_int, const_array

_UNSUPPORTED_INPUTS = {9: "position_ids", 10: "attention_bias", 11: "head_sink"}


def match(io, hf: dict) -> dict:
    i = io.layer
    uses = [u.node for u in io.past_key.uses() if u.node.op_type == "GroupQueryAttention"]
    if len(uses) != 1:
        raise RewriteError(f"layer {i}: {io.past_key.name} is not read by one GroupQueryAttention node")
    n = uses[0]
    if n.inputs[3] is not io.past_key or n.inputs[4] is not io.past_value:
        raise RewriteError(f"layer {i}: GroupQueryAttention {n.name} does not take {io.past_key.name}, "
                           f"{io.past_value.name} as past_key, past_value")
    if n.outputs[1] is not io.present_key or n.outputs[2] is not io.present_value:
        raise RewriteError(f"layer {i}: GroupQueryAttention {n.name} does not produce {io.present_key.name}, "
                           f"{io.present_value.name}")
    for j, name in _UNSUPPORTED_INPUTS.items():
        if len(n.inputs) > j and n.inputs[j] is not None:
            raise RewriteError(f"layer {i}: GroupQueryAttention input {name} is not supported")
    for a in ("k_quant_type", "v_quant_type", "kv_cache_bit_width", "qk_output", "smooth_softmax"):
        if a in n.attributes and n.attributes[a].value not in (0, "NONE", -1):
            raise RewriteError(f"layer {i}: GroupQueryAttention attribute {a}={n.attributes[a].value} unsupported")
    if attr_int(n, "rotary_interleaved", 0):
        raise RewriteError(f"layer {i}: interleaved rotary is not supported")
    hq, hkv = attr_int(n, "num_heads"), attr_int(n, "kv_num_heads")
    do_rotary = bool(attr_int(n, "do_rotary", 0))
    cos = n.inputs[7] if len(n.inputs) > 7 else None
    d = _head_dim(io, n, hf, do_rotary, cos)
    scale_a = n.attributes.get("scale")
    return dict(node=n, num_heads=hq, kv_heads=hkv, head_dim=d, q_heads=hq, mask=None,
                scale=float(scale_a.value) if scale_a is not None and scale_a.value else d ** -0.5,
                softcap=float(n.attributes["softcap"].value) if "softcap" in n.attributes else 0.0,
                window=attr_int(n, "local_window_size", -1), do_rotary=do_rotary)


def _head_dim(io, n, hf: dict, do_rotary: bool, cos) -> int:
    shape = io.past_key.shape
    if shape is not None and len(shape) == 4 and isinstance(shape[3], int):
        return shape[3]
    if hf.get("head_dim"):
        return int(hf["head_dim"])
    c = const_array(cos) if do_rotary else None
    if c is not None:
        return int(c.shape[-1]) * 2
    if hf.get("hidden_size") and hf.get("num_attention_heads"):
        return int(hf["hidden_size"]) // int(hf["num_attention_heads"])
    raise RewriteError(f"layer {io.layer}: head_dim unknown (past cache dim is symbolic); "
                       "put config.json / genai_config.json beside the model")


def rewrite(b, io, plan, m: dict, seqlens, total) -> None:
    n = m["node"]
    d, hq, hkv = plan.head_dim, plan.num_heads, plan.kv_heads
    q, k, v = n.inputs[0], n.inputs[1], n.inputs[2]
    if k is None:  # packed QKV
        split = b.initializer(f"tq.split.{hq}.{hkv}.{d}", np.array([hq * d, hkv * d, hkv * d], dtype=np.int64))
        q, k, v = b.node("Split", [q, split], {"axis": ir.AttrInt64("axis", -1)}, num_outputs=3)
    cos = n.inputs[7] if m["do_rotary"] else None
    sin = n.inputs[8] if m["do_rotary"] else None
    out, pk, pv = b.attention(plan, query=q, key=k, value=v, past_key=io.past_key, past_value=io.past_value,
                              seqlens_k=n.inputs[5], total_seq=n.inputs[6], scale=m["scale"], cos=cos, sin=sin,
                              do_rotary=m["do_rotary"], softcap=m["softcap"])
    n.outputs[0].replace_all_uses_with(out)
    from .rule_decomposed_attention import _replace_output

    _replace_output(b.graph, io.present_key, pk)
    _replace_output(b.graph, io.present_value, pv)  # the GQA node is now dead; the pipeline drops it
