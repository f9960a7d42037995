"""Static CoreML report for --target edge models (`tq-ort inspect --target coreml MODEL`).

CoreML cannot run here (Linux, no Apple runtime), so this is a static check: each op type of the
model against the op list of onnxruntime's CoreML execution provider (ML Program format), and the
partitions that list implies: maximal connected groups of eligible nodes become CoreML (Metal /
ANE) subgraphs, every other node runs on ORT's CPU EP. Op-type level only: the EP also rejects
nodes for dtypes (int64 tensors, bool), dynamic shapes or non-constant Slice/Split arguments,
which only a Mac can confirm -- the report marks the Slice/Split nodes whose arguments are not
constants, the one such rule it can check statically.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

# ai.onnx ops of the CoreML EP's ML Program builder list, from microsoft/onnxruntime
# tools/ci_build/github/apple/coreml_supported_mlprogram_ops.md (main at commit 04f568d869ec, read
# Dec 2026; ORT 1.30 has this list or a subset). Names only; see that file for per-op conditions.
COREML_SOURCE = ("microsoft/onnxruntime tools/ci_build/github/apple/coreml_supported_mlprogram_ops.md "
                 "@ 04f568d869ec (ML Program builders)")
COREML_MLPROGRAM_OPS = frozenset("""
Add ArgMax AveragePool Cast Clip Concat Conv ConvTranspose Cos DepthToSpace Ceil Div Elu Erf Exp GatherND Gemm
Gelu GlobalAveragePool GlobalMaxPool GridSample GroupNormalization HardSigmoid Identity InstanceNormalization
LayerNormalization LeakyRelu MatMul MaxPool Max Mul Pow PRelu Range Reciprocal ReduceSum ReduceMean ReduceMax
Relu Reshape Resize Round Shape Sin Slice Softplus Split Sub Sigmoid Softmax Sqrt Squeeze Tanh Tile Transpose
Unsqueeze
""".split())
_CONST_ARGS = {"Slice": (1, 2, 3, 4), "Split": (1,)}


def _is_const(graph, name: str, consts: set[str]) -> bool:
    return not name or name in consts


def coreml_report(model_path: str | Path) -> dict:
    """Op types with counts and CoreML eligibility, and the implied CoreML/CPU partitions."""
    import onnx

    m = onnx.load(str(model_path), load_external_data=False)
    g = m.graph
    consts = {i.name for i in g.initializer}
    consts |= {o for n in g.node if n.op_type == "Constant" for o in n.output}
    nodes = [n for n in g.node if n.op_type != "Constant"]  # constants become initializers, run nowhere
    eligible, reasons = [], {}
    for idx, n in enumerate(nodes):
        ok = n.domain in ("", "ai.onnx") and n.op_type in COREML_MLPROGRAM_OPS
        if ok and n.op_type in _CONST_ARGS:
            if not all(_is_const(g, n.input[j], consts) for j in _CONST_ARGS[n.op_type] if j < len(n.input)):
                ok = False
                reasons[idx] = f"{n.op_type} with run-time arguments"
        eligible.append(ok)
    # partitions: union of eligible nodes connected through a tensor
    parent = list(range(len(nodes)))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    producer = {o: i for i, n in enumerate(nodes) for o in n.output}
    for i, n in enumerate(nodes):
        if not eligible[i]:
            continue
        for name in n.input:
            j = producer.get(name)
            if j is not None and eligible[j]:
                parent[find(i)] = find(j)
    groups = Counter(find(i) for i in range(len(nodes)) if eligible[i])
    ops = Counter(n.op_type for n in nodes)
    by_op = {}
    for i, n in enumerate(nodes):
        r = by_op.setdefault(n.op_type, {"count": ops[n.op_type], "coreml": 0, "cpu": 0})
        r["coreml" if eligible[i] else "cpu"] += 1
    attention_ops = [n for i, n in enumerate(nodes) if n.op_type in ("MatMul", "Softmax")]
    return {
        "model": str(model_path),
        "source": COREML_SOURCE,
        "nodes": len(nodes),
        "coreml_nodes": sum(eligible),
        "cpu_nodes": len(nodes) - sum(eligible),
        "coreml_partitions": len(groups),
        "largest_partitions": sorted(groups.values(), reverse=True)[:8],
        "attention_matmul_softmax_on_coreml": sum(1 for i, n in enumerate(nodes) if eligible[i]
                                                   and n.op_type in ("MatMul", "Softmax")),
        "attention_matmul_softmax_total": len(attention_ops),
        "ops": dict(sorted(by_op.items())),
        "runtime_argument_fallbacks": Counter(reasons.values()),
    }


def format_report(r: dict) -> str:
    lines = [f"CoreML static report for {r['model']}",
             f"op list: {r['source']}",
             f"nodes: {r['nodes']}  on CoreML: {r['coreml_nodes']}  on CPU: {r['cpu_nodes']}  "
             f"CoreML partitions: {r['coreml_partitions']} (largest {r['largest_partitions']})",
             f"MatMul/Softmax eligible: {r['attention_matmul_softmax_on_coreml']} of "
             f"{r['attention_matmul_softmax_total']}",
             "", f"{'op':<18}{'count':>7}{'CoreML':>8}{'CPU':>6}"]
    for op, c in r["ops"].items():
        lines.append(f"{op:<18}{c['count']:>7}{c['coreml']:>8}{c['cpu']:>6}")
    for why, n in r["runtime_argument_fallbacks"].items():
        lines.append(f"note: {n} x {why} (the EP needs constant arguments): CPU")
    lines.append("Op-type level only: dtype (int64/bool) and dynamic-shape rules of the EP can move more nodes "
                 "to the CPU; confirm on a Mac (docs/edge.md).")
    return "\n".join(lines)


def report_text(model_path: str | Path, as_json: bool = False) -> str:
    r = coreml_report(model_path)
    return json.dumps(r, indent=1, default=dict) if as_json else format_report(r)
