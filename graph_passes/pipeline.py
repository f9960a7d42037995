"""The rewrite pipeline: find the cache, match every layer, rewrite all or none, clean up, check."""
from __future__ import annotations

import json
from pathlib import Path

import onnx
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass, RemoveUnusedOpsetsPass, TopologicalSortPass

from . import rule_decomposed_attention as decomposed
from . import rule_gqa as gqa
from . import rule_onnx_attention as onnx_attention
from .atomic import DATA_SUFFIX, pause_point, sidecar_names, staged_file
from .builder import DOMAIN, GraphBuilder
from .cache_io import find_cache_io, retype_cache
from .config import METADATA_KEY, TQConfig, metadata_json, plan_layer
from .edge_attention import EdgeGraphBuilder
from .matching import RewriteError

RULES = {"GroupQueryAttention": gqa, "Attention": onnx_attention, "decomposed": decomposed}


def detect_source(graph: ir.Graph) -> str:
    ops = {(n.domain, n.op_type) for n in graph.all_nodes()}
    if ("com.microsoft", "GroupQueryAttention") in ops:
        return "GroupQueryAttention"
    if ("", "Attention") in ops:
        return "Attention"
    if any(d == DOMAIN for d, _ in ops):
        raise RewriteError("the model already has TurboQuant ops: it was rewritten before")
    return "decomposed"


def _hf_config(model_dir: Path | None) -> dict:
    if model_dir is not None and (model_dir / "config.json").exists():
        return json.loads((model_dir / "config.json").read_text())
    return {}


def windows_from_hf_config(hf: dict) -> dict[int, int]:
    """Sliding-window layers as recorded by transformers (layer_types / sliding_window)."""
    w = hf.get("sliding_window")
    types = hf.get("layer_types")
    if not w or not types:
        return {}
    return {i: int(w) for i, t in enumerate(types) if t == "sliding_attention"}


def rewrite_model(model: ir.Model, cfg: TQConfig, *, hf_config: dict | None = None) -> ir.Model:
    """Rewrite `model` in place so its KV cache is TurboQuant rows; returns it. All layers or none."""
    cfg.validate()
    hf = hf_config or {}
    if not cfg.windows and windows_from_hf_config(hf):
        cfg = TQConfig(**{**cfg.__dict__, "windows": windows_from_hf_config(hf)})
    graph = model.graph
    ios = find_cache_io(graph)
    source = detect_source(graph)
    rule = RULES[source]
    edge = cfg.target == "edge"
    if edge:
        _check_edge_source(model, source)
    matches, errors = _match_all(rule, ios, hf)
    if errors and source == "decomposed":
        # exporters compute scales from shapes at run time (gpt2: 1/sqrt(d) via Shape -> Sqrt):
        # with shapes inferred, matching.scalar() evaluates them
        from onnx_ir.passes.common import ShapeInferencePass

        ShapeInferencePass()(model)
        matches, errors = _match_all(rule, ios, hf)
    if errors:
        raise RewriteError(
            f"{source} graph: matched layers {sorted(matches)} of {len(ios)}; not rewritten (no change made):\n  "
            + "\n  ".join(errors.values()))
    if source == "decomposed":
        masks = {id(mask_root(m["mask"])) for m in matches.values() if m["mask"] is not None}
        if len(masks) > 1 and not cfg.windows:
            raise RewriteError("layers use different attention masks (sliding-window layers?) and no window sizes "
                               "are known: put the model's config.json beside it or pass windows")
    windows = dict(cfg.windows)
    for layer, m in matches.items():  # GroupQueryAttention carries its own local_window_size
        if m.get("window", -1) > 0:
            windows.setdefault(layer, m["window"])
    if windows != cfg.windows:
        cfg = TQConfig(**{**cfg.__dict__, "windows": windows})
    b = (EdgeGraphBuilder if edge else GraphBuilder)(graph, cfg)
    plans = []
    n = len(ios)
    for io in ios:
        m = matches[io.layer]
        kvh, d = (m["kv_heads"], m["head_dim"]) if "head_dim" in m else io.kv_heads_and_dim
        hq = m.get("q_heads") or hf.get("num_attention_heads") or hf.get("n_head")
        if not hq:
            raise RewriteError(f"layer {io.layer}: number of query heads unknown; pass num_attention_heads "
                               "(config.json beside the model)")
        plan = plan_layer(cfg, io.layer, n, head_dim=d, kv_heads=kvh, num_heads=int(hq), names=io.names,
                          float_dtype=_float_dtype(io))
        plans.append(plan)
        retype_cache(graph, io, plan.key_row_bytes, plan.value_row_bytes)
    seqlens = total = None
    if source != "GroupQueryAttention":  # GQA graphs bring their own seqlens_k / total_sequence_length
        mask = next((v for v in graph.inputs if v.name == "attention_mask"), None)
        if mask is None:
            raise RewriteError("no attention_mask input: the rewritten attention needs it for sequence lengths")
        seqlens, total = b.seqlens_from_mask(mask)
    for io, plan in zip(ios, plans):
        rule.rewrite(b, io, plan, matches[io.layer], seqlens, total)
    if not edge:
        model.opset_imports[DOMAIN] = 1
    RemoveUnusedNodesPass()(model)
    TopologicalSortPass()(model)
    RemoveUnusedOpsetsPass()(model)
    if not edge:
        model.opset_imports[DOMAIN] = 1
    _check_cache_consumers(graph, ios, set(b.nodes) if edge else None)
    shared_ok = not edge and _past_shape_unused(graph, ios)  # edge models run in concat mode
    model.metadata_props[METADATA_KEY] = metadata_json(cfg, plans, source, shared_ok)
    return model


def _float_dtype(io) -> str:
    """The cache's float dtype (before retyping): the exact recent-window rings keep it."""
    dt = io.past_value.dtype or io.past_key.dtype
    names = {ir.DataType.FLOAT: "float32", ir.DataType.FLOAT16: "float16"}
    if dt is not None and dt not in names:
        raise RewriteError(f"layer {io.layer}: {io.past_key.name} dtype {dt}: expected float32 or float16")
    return names.get(dt, "float32")


EDGE_MIN_OPSET = 15  # Shape(start, end), Range, CumSum, GreaterOrEqual / LessOrEqual


def _check_edge_source(model: ir.Model, source: str) -> None:
    """--target edge: refuse what the standard-op path cannot express, before anything changes."""
    if source == "GroupQueryAttention":
        raise RewriteError("--target edge: onnxruntime-genai (GroupQueryAttention) graphs are not supported: they "
                           "use ORT contrib ops (com.microsoft) besides the attention and keep RoPE inside it; "
                           "export with optimum or torch.onnx (tq-ort export --source optimum|dynamo)")
    opset = model.opset_imports.get("", 0)
    if opset < EDGE_MIN_OPSET:
        raise RewriteError(f"--target edge: the model's ai.onnx opset is {opset}; expected >= {EDGE_MIN_OPSET} "
                           "(re-export with a newer opset)")
    contrib = sorted({f"{n.domain}.{n.op_type}" for n in model.graph.all_nodes() if n.domain not in ("", "ai.onnx")})
    if contrib:
        raise RewriteError(f"--target edge: the model has non-standard ops {contrib[:6]}: an edge model may only "
                           "use ai.onnx ops")


def _match_all(rule, ios, hf) -> tuple[dict, dict]:
    matches, errors = {}, {}
    for io in ios:
        try:
            matches[io.layer] = rule.match(io, hf)
        except RewriteError as e:
            errors[io.layer] = str(e)
    return matches, errors


def mask_root(v):
    """The shared mask a layer's additive mask derives from (through Where / Slice / Cast)."""
    while (p := v.producer()) is not None and p.op_type in ("Where", "Slice", "Cast", "Unsqueeze"):
        v = p.inputs[0]
    return v


def _check_cache_consumers(graph: ir.Graph, ios, edge_nodes: set | None = None) -> None:
    """Only the attention (or, for edge models, the nodes the edge builder emitted) reads the cache."""
    for io in ios:
        for v in (io.past_key, io.past_value):
            bad = [u.node for u in v.uses() if u.node.op_type != "Shape" and (
                u.node not in edge_nodes if edge_nodes is not None else u.node.op_type != "TurboQuantAttention")]
            if bad:
                raise RewriteError(f"layer {io.layer}: {v.name} is still read by {[n.op_type for n in bad]} "
                                   "after the rewrite (the attention has other consumers of the cache)")


def _past_shape_unused(graph: ir.Graph, ios) -> bool:
    """Shared-buffer decoding binds past to a buffer of full capacity: only safe if nothing else in the
    graph reads the past's length (the exporters' mask / position logic does, when it survives)."""
    for io in ios:
        for v in (io.past_key, io.past_value):
            for u in v.uses():
                n = u.node
                if n.op_type == "TurboQuantAttention":
                    continue
                start = n.attributes["start"].value if "start" in n.attributes else 0
                end = n.attributes["end"].value if "end" in n.attributes else None
                if not (n.op_type == "Shape" and end is not None and 0 <= start and end <= 2):
                    return False  # reads the sequence axis (or something else)
    return True


def check_model(path: str | Path) -> None:
    """onnx.checker with full shape inference on a saved model (external data resolved by path)."""
    onnx.checker.check_model(str(path), full_check=True)


def rewrite_file(src: str | Path, dst: str | Path, cfg: TQConfig, *, hf_config: dict | None = None,
                 sidecars: dict[str, str] | None = None) -> Path:
    """Rewrite the model at src into dst (weights inline below 1.8 GB, else in dst.data); checked.

    Atomic (graph_passes.atomic): the model is written and checked in a staging folder beside dst, then
    renamed into place, so an interrupt leaves the old dst or none; a refused rewrite writes nothing.
    `sidecars` maps a suffix to text written beside it in the same step (dst.name + suffix, e.g.
    ".original.json")."""
    src, dst = Path(src), Path(dst)
    if not src.exists():
        raise FileNotFoundError(f"{src}: no such model")
    extra = set(sidecars or ()) - {n[len(dst.name):] for n in sidecar_names(dst.name)[1:]}
    if extra:
        raise ValueError(f"sidecars {sorted(extra)}: expected suffixes of {sidecar_names(dst.name)[1:]}")
    model = ir.load(src)
    hf = hf_config if hf_config is not None else _hf_config(src.parent)
    rewrite_model(model, cfg, hf_config=hf)
    weight_bytes = sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)
    data = dst.name + DATA_SUFFIX
    external = any(isinstance(v.const_value, ir.ExternalTensor) for v in model.graph.initializers.values())
    with staged_file(dst, stage="rewrite") as tmp:
        ir.save(model, tmp, external_data=data if external or weight_bytes > 1_800_000_000 else None)
        for suffix, text in (sidecars or {}).items():
            tmp.with_name(dst.name + suffix).write_text(text)
        pause_point("rewrite-staged")
        try:
            check_model(tmp)
        except onnx.checker.ValidationError as e:
            # onnxruntime-genai graphs use ORT contrib ops in the default domain
            # (SimplifiedLayerNormalization) and fail the checker before we touch them: hold a
            # rewritten model to the standard its source met, no lower
            try:
                check_model(src)
            except onnx.checker.ValidationError as src_err:
                if str(src_err).splitlines()[0] != str(e).splitlines()[0]:
                    raise
            else:
                raise
    return dst
