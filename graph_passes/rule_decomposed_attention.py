"""Rule: decomposed MatMul/Softmax attention (optimum / TorchScript exports) -> TurboQuantAttention.

Pattern, per layer (docs/export-forms.md section 1):
    present.k = Concat(past.k, k_new, axis=-2)        present.v = Concat(past.v, v_new, axis=-2)
    k_all = [Unsqueeze -> Expand -> Reshape](present.k)  (GQA repeat_kv, optional)
    scores = MatMul([Mul c](q), [Mul c](Transpose(k_all, [0,1,3,2])))  -> [Mul/Div c]* -> [Add mask]
    probs = Softmax(scores, -1) [-> Where(IsNaN) fix-up] [Cast]*
    out = MatMul(probs, [repeat](present.v))  -> Transpose([0,2,1,3]) -> Reshape([B,S,-1])
Check: constant scalar scales, Softmax over the last axis, the same past/present on both sides.
Rewrite: one TurboQuantAttention on [B, S, H*d] views; the repeat, masks and concat die.
"""
from __future__ import annotations

import onnx_ir as ir

from .builder import GraphBuilder
from .cache_io import CacheIO
from .config import LayerPlan
from .matching import RewriteError, attr_int, attr_ints, consumers, peel_scalars_up, scalar, sole_consumer, value_shape

_REPEAT = ("Unsqueeze", "Expand", "Reshape")
_PASS_THROUGH = ("Cast",)


def _concat_new_input(io_value: ir.Value, past: ir.Value, what: str, layer: int) -> tuple[ir.Node, ir.Value]:
    node = io_value.producer()
    if node is None or node.op_type != "Concat" or len(node.inputs) != 2 or node.inputs[0] is not past:
        raise RewriteError(f"layer {layer}: {io_value.name} is not Concat({past.name}, new {what}); "
                           f"found {node.op_type if node else 'a graph input'}")
    axis = attr_int(node, "axis")
    if axis not in (2, -2):
        raise RewriteError(f"layer {layer}: {io_value.name} Concat axis {axis}: expected 2 / -2 (sequence)")
    return node, node.inputs[1]


def _after_repeat(v: ir.Value) -> list[ir.Node]:
    """Consumers of v after an optional repeat_kv chain (Unsqueeze -> Expand -> Reshape)."""
    out = []
    for n in consumers(v):
        if n.op_type == "Unsqueeze":
            e = sole_consumer(n.outputs[0], "Expand")
            r = e and sole_consumer(e.outputs[0], "Reshape")
            if r is not None:
                out.extend(consumers(r.outputs[0]))
                continue
        out.append(n)
    return out


def match(io: CacheIO, plan_heads: dict) -> dict:
    """Find one layer's attention; returns the pieces the rewrite needs or raises RewriteError."""
    i = io.layer
    _, k_new = _concat_new_input(io.present_key, io.past_key, "key", i)
    _, v_new = _concat_new_input(io.present_value, io.past_value, "value", i)
    # keys: Concat -> [repeat] -> Transpose(0,1,3,2) -> [Mul c]* -> MatMul (input 1)
    tr = [n for n in _after_repeat(io.present_key) if n.op_type == "Transpose" and attr_ints(n, "perm") == [0, 1, 3, 2]]
    if len(tr) != 1:
        raise RewriteError(f"layer {i}: {io.present_key.name} does not reach one Transpose(perm=[0,1,3,2]) of the keys")
    k_t = tr[0].outputs[0]
    k_factor = 1.0
    while (n := sole_consumer(k_t)) is not None and n.op_type in ("Mul", "Div") and scalar(n.inputs[1]) is not None:
        s = scalar(n.inputs[1])
        k_factor *= s if n.op_type == "Mul" else 1.0 / s
        k_t = n.outputs[0]
    qk = sole_consumer(k_t, "MatMul")
    if qk is None or qk.inputs[1] is not k_t:
        raise RewriteError(f"layer {i}: transposed keys do not feed a MatMul as its second input")
    q, q_factor, ok = peel_scalars_up(qk.inputs[0])
    if not ok:
        raise RewriteError(f"layer {i}: the query scale is not a constant (fold constants first)")
    # scores -> [Mul/Div c]* -> [Add mask] -> Softmax(-1)
    v, s_factor = qk.outputs[0], 1.0
    mask = None
    while (n := sole_consumer(v)) is not None and n.op_type in ("Mul", "Div", "Add") + _PASS_THROUGH:
        if n.op_type in ("Mul", "Div"):
            c = scalar(n.inputs[1])
            if c is None:
                raise RewriteError(f"layer {i}: score {n.op_type} by a non-constant")
            s_factor *= c if n.op_type == "Mul" else 1.0 / c
        elif n.op_type == "Add":
            mask = n.inputs[1] if n.inputs[0] is v else n.inputs[0]
        v = n.outputs[0]
    sm = sole_consumer(v, "Softmax")
    if sm is None or attr_int(sm, "axis", -1) not in (-1, 3):
        raise RewriteError(f"layer {i}: scores do not reach Softmax(axis=-1)")
    probs = sm.outputs[0]
    pv = [n for n in _after_repeat(io.present_value) if n.op_type == "MatMul" and n.inputs[1] is not None]
    if len(pv) != 1:
        raise RewriteError(f"layer {i}: {io.present_value.name} does not feed one MatMul(probs, values)")
    pv = pv[0]
    # probs may pass through the NaN fix-up (IsNaN + Where) and Casts; check pv's first input comes from sm
    src, seen = pv.inputs[0], 0
    while src is not probs and (p := src.producer()) is not None and seen < 4:
        src = p.inputs[2] if p.op_type == "Where" else p.inputs[0]
        seen += 1
    if src is not probs:
        raise RewriteError(f"layer {i}: MatMul(probs, values) does not read the Softmax of this layer")
    qshape = value_shape(q)
    return dict(k_new=k_new, v_new=v_new, q=q, scale=q_factor * k_factor * s_factor, mask=mask,
                out=pv.outputs[0], q_heads=qshape[1] if qshape and isinstance(qshape[1], int) else None)


def rewrite(b: GraphBuilder, io: CacheIO, plan: LayerPlan, m: dict, seqlens: ir.Value, total: ir.Value) -> None:
    d, hq, hkv = plan.head_dim, plan.num_heads, plan.kv_heads
    q3 = b.bnsh_to_bsh(m["q"], hq, d)
    k3 = b.bnsh_to_bsh(m["k_new"], hkv, d)
    v3 = b.bnsh_to_bsh(m["v_new"], hkv, d)
    out, pk, pv = b.attention(plan, query=q3, key=k3, value=v3, past_key=io.past_key, past_value=io.past_value,
                              seqlens_k=seqlens, total_seq=total, scale=m["scale"], softcap=m.get("softcap", 0.0))
    # out [B, S, Hq*d]: reuse the exporter's own Transpose -> Reshape([B, S, -1]) when it follows
    old = m["out"]
    t = sole_consumer(old, "Transpose")
    r = t and attr_ints(t, "perm") == [0, 2, 1, 3] and sole_consumer(t.outputs[0], "Reshape")
    if r:
        r.outputs[0].replace_all_uses_with(out)
    else:
        old.replace_all_uses_with(b.bsh_to_bnsh(out, hq, d))
    _replace_output(b.graph, io.present_key, pk)
    _replace_output(b.graph, io.present_value, pv)


def _replace_output(graph: ir.Graph, old: ir.Value, new: ir.Value) -> None:
    idx = [j for j, o in enumerate(graph.outputs) if o is old][0]
    name, shape, typ = old.name, old.shape, old.type
    old.name = None
    new.name, new.shape, new.type = name, shape, typ
    graph.outputs[idx] = new
