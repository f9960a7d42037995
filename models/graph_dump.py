"""Print an ONNX decoder's I/O and a compact op listing (the form used in docs/export-forms.md).

    python -m models.graph_dump model.onnx                      # I/O, opsets, op histogram
    python -m models.graph_dump model.onnx /layers.0/attn/      # + nodes whose name contains it
    python -m models.graph_dump model.onnx /layers.0/ --shapes  # ... showing Shape/Gather plumbing
"""
from __future__ import annotations

import sys
from collections import Counter

_PLUMBING = {"Shape", "Gather", "Unsqueeze"}


def io_summary(model) -> dict:
    """``{"inputs": [(name, dtype, dims)], "outputs": [...]}`` with dims as ints or dim_param strings."""
    import onnx

    def vi(v):
        t = v.type.tensor_type
        dims = [d.dim_param if d.dim_param else (d.dim_value if d.HasField("dim_value") else None)
                for d in t.shape.dim]
        return (v.name, onnx.TensorProto.DataType.Name(t.elem_type), dims)

    return {"inputs": [vi(v) for v in model.graph.input],
            "outputs": [vi(v) for v in model.graph.output]}


def listing(model, substring: str | None, *, plumbing: bool = False) -> list[str]:
    from onnx import TensorProto, helper, numpy_helper

    consts = {}
    for n in model.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    t = numpy_helper.to_array(a.t)
                    consts[n.output[0]] = t.tolist() if t.size <= 8 else f"<{t.dtype}{list(t.shape)}>"
    inits = {}
    for i in model.graph.initializer:
        size = 1
        for d in i.dims:
            size *= d
        if size <= 8 and i.data_location != 1:
            t = numpy_helper.to_array(i)
            consts[i.name] = t.tolist()
        else:
            inits[i.name] = list(i.dims)
    short: dict[str, str] = {}
    lines = []

    def nm(x):
        if x in consts:
            return f"c{consts[x]}"
        if x in inits:
            return f"W{inits[x]}"
        return short.get(x, x)

    graph_outputs = {g.name for g in model.graph.output}
    k = 0
    for n in model.graph.node:
        if n.op_type == "Constant":
            continue
        if substring is not None and substring not in n.name and substring not in n.input:
            continue
        for o in n.output:
            short[o] = o if (o in graph_outputs or not o) else f"%{k}"
            k += 1
        if not plumbing and n.op_type in _PLUMBING and n.domain == "":
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        attrs = {kk: (v.decode() if isinstance(v, bytes) else v) for kk, v in attrs.items()
                 if not isinstance(v, TensorProto) and not hasattr(v, "node")}
        dom = f"{n.domain}." if n.domain else ""
        outs = ",".join(short[o] or "_" for o in n.output)
        lines.append(f"{outs:8s} = {dom}{n.op_type}({', '.join(nm(x) for x in n.input)})"
                     f"{' ' + str(attrs) if attrs else ''}   [{n.name}]")
    return lines


def main(argv=None) -> int:
    import onnx

    argv = list(sys.argv[1:] if argv is None else argv)
    plumbing = "--shapes" in argv
    argv = [a for a in argv if a != "--shapes"]
    m = onnx.load(argv[0], load_external_data=False)
    print("opsets", [(o.domain, o.version) for o in m.opset_import], "ir", m.ir_version,
          "producer", m.producer_name, m.producer_version)
    s = io_summary(m)
    print("inputs:")
    for r in s["inputs"]:
        print("  ", *r)
    print("outputs:")
    for r in s["outputs"]:
        print("  ", *r)
    print("metadata:", {p.key: p.value[:80] for p in m.metadata_props})
    print("ops:", Counter((n.domain + "." if n.domain else "") + n.op_type
                          for n in m.graph.node).most_common())
    for f in m.functions:
        print("function:", f.domain, f.name, Counter(n.op_type for n in f.node).most_common())
    if len(argv) > 1:
        print("\n".join(listing(m, argv[1], plumbing=plumbing)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
