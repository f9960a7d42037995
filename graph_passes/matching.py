"""Small graph-walking helpers shared by the rules (onnx-ir values and nodes)."""
from __future__ import annotations

import numpy as np
import onnx_ir as ir


class RewriteError(ValueError):
    """A graph the passes do not fully understand; the message says what matched and what not."""


def const_array(v: ir.Value | None) -> np.ndarray | None:
    """The constant behind a value (initializer or Constant node), else None."""
    if v is None:
        return None
    if v.const_value is not None:
        return v.const_value.numpy()
    p = v.producer()
    if p is not None and p.op_type == "Constant" and p.domain == "":
        attr = p.attributes.get("value")
        if attr is not None:
            return attr.value.numpy()
        for key in ("value_float", "value_int"):
            if key in p.attributes:
                return np.asarray(p.attributes[key].value)
    return None


def scalar(v: ir.Value | None) -> float | None:
    arr = const_array(v)
    if arr is None:
        arr = _eval_small(v, 8)
    if arr is None or arr.size != 1:
        return None
    return float(arr.reshape(()))


_UNARY = {"Sqrt": np.sqrt, "Reciprocal": lambda a: 1.0 / a, "Identity": lambda a: a}
_BINARY = {"Div": np.divide, "Mul": np.multiply, "Add": np.add, "Sub": np.subtract, "Pow": np.power}


def _eval_small(v: ir.Value | None, depth: int) -> np.ndarray | None:
    """Evaluate tiny scalar subgraphs that exporters leave unfolded, e.g. gpt2's attention scale
    1/sqrt(Shape(q)[-1]) (needs static shapes: run shape inference first). None if not constant."""
    if v is None or depth < 0:
        return None
    arr = const_array(v)
    if arr is not None:
        return arr
    p = v.producer()
    if p is None:
        return None
    if p.op_type in ("Gather", "Slice") and p.inputs[0].producer() is not None \
            and p.inputs[0].producer().op_type == "Shape":
        return _index_shape(p, depth)
    if p.op_type == "Shape":
        shape = p.inputs[0].shape
        ok = shape is not None and all(isinstance(d, int) for d in shape) and not p.attributes
        return np.array(list(shape), dtype=np.int64) if ok else None
    ins = [_eval_small(i, depth - 1) for i in p.inputs]
    if any(a is None for a in ins):
        return None
    if p.op_type in _UNARY:
        return _UNARY[p.op_type](ins[0].astype(np.float64))
    if p.op_type in _BINARY:
        return _BINARY[p.op_type](ins[0].astype(np.float64), ins[1].astype(np.float64))
    if p.op_type == "Cast":
        return ins[0].astype(np.float64)
    return None


def _index_shape(p: ir.Node, depth: int) -> np.ndarray | None:
    """Gather / Slice of Shape(x) where the selected dims of x are static."""
    shape_node = p.inputs[0].producer()
    shape = shape_node.inputs[0].shape
    if shape is None or shape_node.attributes:
        return None
    dims = np.array([d if isinstance(d, int) else -1 for d in shape], dtype=np.int64)
    args = [_eval_small(i, depth - 1) for i in p.inputs[1:]]
    if any(a is None for a in args):
        return None
    if p.op_type == "Gather":
        sel = dims[args[0]]
    else:
        starts, ends = int(args[0].reshape(-1)[0]), int(args[1].reshape(-1)[0])
        step = int(args[3].reshape(-1)[0]) if len(args) > 3 else 1
        sel = dims[slice(starts, min(ends, len(dims)) if ends > 0 else ends, step)]
    return None if np.any(sel < 0) else sel


def attr_int(node: ir.Node, name: str, default: int | None = None) -> int | None:
    a = node.attributes.get(name)
    return default if a is None else int(a.value)


def attr_ints(node: ir.Node, name: str) -> list[int] | None:
    a = node.attributes.get(name)
    return None if a is None else [int(x) for x in a.value]


def consumers(v: ir.Value) -> list[ir.Node]:
    return [u.node if hasattr(u, "node") else u[0] for u in v.uses()]


def sole_consumer(v: ir.Value, op_type: str | None = None) -> ir.Node | None:
    cs = consumers(v)
    if len(cs) != 1 or (op_type and cs[0].op_type != op_type):
        return None
    return cs[0]


def peel_scalars_up(v: ir.Value) -> tuple[ir.Value, float, bool]:
    """Walk up through Mul/Div by a scalar constant: (source value, product of factors, all constant)."""
    factor = 1.0
    while (p := v.producer()) is not None and p.op_type in ("Mul", "Div"):
        a, b = p.inputs[0], p.inputs[1]
        sb, sa = scalar(b), scalar(a)
        if sb is not None:
            factor *= sb if p.op_type == "Mul" else 1.0 / sb
            v = a
        elif sa is not None and p.op_type == "Mul":
            factor *= sa
            v = b
        else:
            return v, factor, False
    return v, factor, True


def follow_down(v: ir.Value, ops: tuple[str, ...]) -> tuple[ir.Value, list[ir.Node]]:
    """From v, follow sole consumers whose op is in `ops`; return the last value and the path."""
    path = []
    while (n := sole_consumer(v)) is not None and n.op_type in ops and n.inputs[0] is v:
        path.append(n)
        v = n.outputs[0]
    return v, path


def value_shape(v: ir.Value) -> list[int | str | None] | None:
    if v.shape is None:
        return None
    return [d if isinstance(d, int) else (d.value if hasattr(d, "value") else None) for d in v.shape]
