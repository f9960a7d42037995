"""Baseline for the quality comparison: a per-token uniform int-b KV cache without rotation.

What a user would pick instead of TurboQuant at the same bytes: every new K/V row (one token, one
KV head, `d` values) is quantised asymmetrically with its own min/max,

    zero  = fp16(min(x))                    scale = fp16((max(x) - zero) / (2^b - 1))
    q     = clip(round((x - zero) / scale), 0, 2^b - 1)        x_hat = q * scale + zero

(`scale` = 0, a constant row, is stored as 1 so the row round-trips exactly), so a cache would hold
b-bit integers plus an fp16 scale and an fp16 zero point per token per head:
**bits per value = b + 32 / d** (d = 64: int8 8.5, int4 4.5, int3 3.5, int2 2.5 -- the same bytes
as TurboQuant rows of the same b, whose fp32 scale also costs 32 bits per row).

The rewrite works on optimum exports (docs/export-forms.md 1.2:
``present = Concat(past, new, axis=-2)``, the Concat output being the graph output). It inserts
the quantise-dequantise above with standard ONNX ops (ReduceMin, ReduceMax, Sub, Div, Round,
Clip, Mul, Add, Cast to float16 and back for the stored scale and zero point) on the *new* rows
and makes the graph output ``present.{i}.*`` = ``Concat(past, x_hat)``. The attention keeps
reading ``Concat(past, new)``: like TurboQuantAttention, the tokens of the current step attend to
their own K/V exactly and every earlier token through what the cache holds. So the cache carried
from step to step holds exactly the values an int-b cache would hold. It is still stored as
float32 tensors (a simulation of the storage, not of the kernels); its bytes are computed
analytically (`baseline_bits_per_value`) and recorded in the metadata key
``tq_ort.uniform_baseline``.

With ``recent_window = R > 0`` (the KIVI-style counterpart of TurboQuant's exact recent window) the
new rows are stored exact and a row is quantised when it leaves the last R positions: each step
quantises the stored rows in ``[max(P - R, 0), max(T - R, 0))`` (P = past length, T = P + new) and
keeps the rest, so the cache holds exactly what TurboQuant's rows + ring would expose. Bytes: the
b-bit rows for every token plus R float16 tokens, as for TurboQuant.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
from onnx_ir.passes.common import TopologicalSortPass

from .cache_io import find_cache_io
from .matching import RewriteError

METADATA_KEY = "tq_ort.uniform_baseline"
SUPPORTED_BITS = (2, 3, 4, 8)


def baseline_bits_per_value(bits: int, head_dim: int) -> float:
    """b-bit integers + an fp16 scale and an fp16 zero point per row of head_dim values."""
    return bits + 32.0 / head_dim


def baseline_row_bytes(bits: int, head_dim: int) -> float:
    return bits * head_dim / 8 + 4


class _Emitter:
    def __init__(self, graph: ir.Graph):
        self.graph = graph
        self.consts: dict[str, ir.Value] = {}

    def const(self, name: str, arr: np.ndarray) -> ir.Value:
        if name not in self.consts:
            v = ir.Value(name=name, type=ir.TensorType(ir.DataType.from_numpy(arr.dtype)), shape=ir.Shape(arr.shape),
                         const_value=ir.tensor(arr, name=name))
            self.graph.register_initializer(v)
            self.consts[name] = v
        return self.consts[name]

    def node(self, op: str, inputs, attrs=None, name: str | None = None) -> ir.Value:
        n = ir.Node("", op, inputs, attributes=attrs or {}, name=name)
        self.graph.append(n)
        return n.outputs[0]


def _qdq(e: _Emitter, x: ir.Value, bits: int, tag: str) -> ir.Value:
    """Per-row (last axis) asymmetric min/max quantise-dequantise with fp16 scale and zero point."""
    levels = float(2 ** bits - 1)
    f32 = ir.DataType.FLOAT
    axes = e.const("tqb.axes_last", np.array([-1], dtype=np.int64))
    to16 = {"to": ir.AttrInt64("to", ir.DataType.FLOAT16)}
    to32 = {"to": ir.AttrInt64("to", f32)}
    keep = {"keepdims": ir.AttrInt64("keepdims", 1)}
    if x.dtype is not None and x.dtype != f32:
        x = e.node("Cast", [x], to32)
    mn = e.node("ReduceMin", [x, axes], keep, name=f"{tag}/ReduceMin")
    mx = e.node("ReduceMax", [x, axes], keep, name=f"{tag}/ReduceMax")
    zero = e.node("Cast", [e.node("Cast", [mn], to16)], to32, name=f"{tag}/zero_fp16")
    scale = e.node("Div", [e.node("Sub", [mx, zero]), e.const(f"tqb.levels{bits}", np.array(levels, np.float32))])
    scale = e.node("Cast", [e.node("Cast", [scale], to16)], to32, name=f"{tag}/scale_fp16")
    is0 = e.node("Equal", [scale, e.const("tqb.zero", np.array(0.0, np.float32))])
    safe = e.node("Where", [is0, e.const("tqb.one", np.array(1.0, np.float32)), scale])
    q = e.node("Round", [e.node("Div", [e.node("Sub", [x, zero]), safe])])
    q = e.node("Clip", [q, e.const("tqb.zero", np.array(0.0, np.float32)),
                        e.const(f"tqb.levels{bits}", np.array(levels, np.float32))], name=f"{tag}/codes")
    return e.node("Add", [e.node("Mul", [q, safe]), zero], name=f"{tag}/dequant")


def _windowed(e: _Emitter, cat: ir.Value, past: ir.Value, bits: int, window: int, tag: str) -> ir.Value:
    """Concat(past, new) with the rows leaving the last `window` positions quantised (see module doc)."""
    i64 = np.int64
    axis = e.const("tqb.axis2", np.array([2], i64))
    zero = e.const("tqb.zero64", np.array([0], i64))
    R = e.const(f"tqb.window{window}", np.array([window], i64))
    shape = {"start": ir.AttrInt64("start", 2), "end": ir.AttrInt64("end", 3)}
    P = e.node("Shape", [past], shape)
    T = e.node("Shape", [cat], shape)
    lo = e.node("Max", [e.node("Sub", [P, R]), zero])
    hi = e.node("Max", [e.node("Sub", [T, R]), zero])
    head = e.node("Slice", [cat, zero, lo, axis])
    leaving = e.node("Slice", [cat, lo, hi, axis])
    tail = e.node("Slice", [cat, hi, T, axis])
    q = _qdq(e, leaving, bits, tag)
    if cat.dtype is not None and cat.dtype != ir.DataType.FLOAT:
        q = e.node("Cast", [q], {"to": ir.AttrInt64("to", cat.dtype)})
    return e.node("Concat", [head, q, tail], {"axis": ir.AttrInt64("axis", -2)}, name=f"{tag}/Concat_cache")


def rewrite_uniform_model(model: ir.Model, bits: int, hf_config: dict | None = None,
                          recent_window: int = 0) -> ir.Model:
    """In place: every layer's present K/V = Concat(past, QDQ_b(new)) (with a window: rows quantised
    when they leave the last `recent_window` positions); the attention is unchanged."""
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"bits={bits}: expected one of {SUPPORTED_BITS}")
    if not isinstance(recent_window, int) or recent_window < 0:
        raise ValueError(f"recent_window={recent_window}: expected an integer >= 0")
    graph = model.graph
    if any(n.domain == "turboquant" for n in graph.all_nodes()):
        raise RewriteError("the model already has TurboQuant ops: rewrite the unrewritten export")
    if METADATA_KEY in model.metadata_props:
        raise RewriteError("the model already has a uniform-baseline cache")
    e = _Emitter(graph)
    layers = []
    for io in find_cache_io(graph):
        kvh, d = io.kv_heads_and_dim
        for kind, present, past in (("key", io.present_key, io.past_key), ("value", io.present_value, io.past_value)):
            cat = present.producer()
            if cat is None or cat.op_type != "Concat" or len(cat.inputs) != 2 or cat.inputs[0] is not past:
                raise RewriteError(f"layer {io.layer}: {present.name} is not Concat({past.name}, new): the uniform "
                                   "baseline rewrites optimum exports (docs/export-forms.md 1.2)")
            axis = cat.attributes["axis"].value
            if axis not in (2, -2):
                raise RewriteError(f"layer {io.layer}: {present.name} Concat axis {axis}: expected -2")
            tag = f"tqb/layer{io.layer}/{kind}"
            if recent_window:
                _swap_output(graph, present, _windowed(e, present, past, bits, recent_window, tag),
                             f"{tag}/present_exact")
                continue
            xq = _qdq(e, cat.inputs[1], bits, tag)
            if present.dtype is not None and present.dtype != ir.DataType.FLOAT:
                xq = e.node("Cast", [xq], {"to": ir.AttrInt64("to", present.dtype)})
            new_out = ir.Node("", "Concat", [past, xq], attributes={"axis": ir.AttrInt64("axis", -2)},
                              name=f"{tag}/Concat_cache")
            graph.append(new_out)
            _swap_output(graph, present, new_out.outputs[0], f"{tag}/present_exact")
        layers.append({"layer": io.layer, "kv_heads": kvh, "head_dim": d,
                       "row_bytes": baseline_row_bytes(bits, d),
                       "bits_per_value": baseline_bits_per_value(bits, d)})
    TopologicalSortPass()(model)
    bpt = sum(2 * L["kv_heads"] * L["row_bytes"] for L in layers)
    fp16 = sum(2 * L["kv_heads"] * L["head_dim"] * 2 for L in layers)
    model.metadata_props[METADATA_KEY] = json.dumps({
        "bits": bits, "recent_window": recent_window,
        "ring_bytes": sum(2 * L["kv_heads"] * recent_window * L["head_dim"] * 2 for L in layers), "scheme": "per-token asymmetric min/max, fp16 scale + fp16 zero point per row, no rotation",
        "storage": "simulated: the cache tensors stay float32 holding the dequantised values; bytes are analytic",
        "bytes_per_token": bpt, "fp16_bytes_per_token": fp16, "compression": fp16 / bpt,
        "model_type": (hf_config or {}).get("model_type"), "layers": layers})
    return model


def _swap_output(graph: ir.Graph, old: ir.Value, new: ir.Value, internal_name: str) -> None:
    idx = [j for j, o in enumerate(graph.outputs) if o is old][0]
    name, shape, typ = old.name, old.shape, old.type
    old.name = internal_name
    new.name, new.shape, new.type = name, shape, typ
    graph.outputs[idx] = new


def rewrite_uniform_baseline(src: str | Path, dst: str | Path, bits: int, hf_config: dict | None = None,
                             recent_window: int = 0) -> Path:
    """Rewrite the optimum export at src into dst with a per-token uniform int-`bits` cache; checked."""
    src, dst = Path(src), Path(dst)
    if not src.exists():
        raise FileNotFoundError(f"{src}: no such model")
    if hf_config is None and (src.parent / "config.json").exists():
        hf_config = json.loads((src.parent / "config.json").read_text())
    model = ir.load(src)
    rewrite_uniform_model(model, bits, hf_config, recent_window)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    weight_bytes = sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)
    ir.save(model, tmp, external_data=dst.name + ".data" if weight_bytes > 1_800_000_000 else None)
    try:
        onnx.checker.check_model(str(tmp), full_check=True)
    except Exception:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(dst)
    return dst


def read_baseline_metadata(model_or_path) -> dict | None:
    """The uniform-baseline record of a model (onnx/onnx-ir model, or a path), else None."""
    if isinstance(model_or_path, (str, Path)):
        m = onnx.load(str(model_or_path), load_external_data=False)
        props = {p.key: p.value for p in m.metadata_props}
    else:
        props = model_or_path.metadata_props
        if not isinstance(props, dict):
            props = {p.key: p.value for p in props}
    raw = props.get(METADATA_KEY)
    return json.loads(raw) if raw else None
