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
from .builder import DOMAIN, GraphBuilder
from .cache_io import find_cache_io, retype_cache
from .config import METADATA_KEY, TQConfig, metadata_json, plan_layer
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
    b = GraphBuilder(graph, cfg)
    plans = []
    n = len(ios)
    for io in ios:
        kvh, d = io.kv_heads_and_dim
        m = matches[io.layer]
        hq = m.get("q_heads") or hf.get("num_attention_heads") or hf.get("n_head")
        if not hq:
            raise RewriteError(f"layer {io.layer}: number of query heads unknown; pass num_attention_heads "
                               "(config.json beside the model)")
        plan = plan_layer(cfg, io.layer, n, head_dim=d, kv_heads=kvh, num_heads=int(hq), names=io.names)
        plans.append(plan)
        retype_cache(graph, io, plan.key_row_bytes, plan.value_row_bytes)
    seqlens = total = None
    if source == "decomposed":
        mask = next((v for v in graph.inputs if v.name == "attention_mask"), None)
        if mask is None:
            raise RewriteError("no attention_mask input: the rewritten attention needs it for sequence lengths")
        seqlens, total = b.seqlens_from_mask(mask)
    for io, plan in zip(ios, plans):
        rule.rewrite(b, io, plan, matches[io.layer], seqlens, total)
    model.opset_imports[DOMAIN] = 1
    RemoveUnusedNodesPass()(model)
    TopologicalSortPass()(model)
    RemoveUnusedOpsetsPass()(model)
    model.opset_imports[DOMAIN] = 1
    _check_cache_consumers(graph, ios)
    shared_ok = _past_shape_unused(graph, ios)
    model.metadata_props[METADATA_KEY] = metadata_json(cfg, plans, source, shared_ok)
    return model


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


def _check_cache_consumers(graph: ir.Graph, ios) -> None:
    for io in ios:
        for v in (io.past_key, io.past_value):
            bad = [u.node for u in v.uses() if u.node.op_type not in ("TurboQuantAttention", "Shape")]
            if bad:
                raise RewriteError(f"layer {io.layer}: {v.name} is still read by {[n.op_type for n in bad]} "
                                   "after the rewrite (the attention has other consumers of the cache)")


def _past_shape_unused(graph: ir.Graph, ios) -> bool:
    """Shared-buffer decoding binds past to a buffer of full capacity: only safe if nothing else in the
    graph reads the past's length (the exporters' mask / position logic does, when it survives)."""
    return all(u.node.op_type == "TurboQuantAttention" for io in ios for v in (io.past_key, io.past_value)
               for u in v.uses())


def check_model(model: ir.Model) -> onnx.ModelProto:
    """onnx.checker with full shape inference on the rewritten model; returns the proto."""
    proto = ir.to_proto(model)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def rewrite_file(src: str | Path, dst: str | Path, cfg: TQConfig, *, hf_config: dict | None = None) -> Path:
    src, dst = Path(src), Path(dst)
    model = ir.load(src)
    hf = hf_config if hf_config is not None else _hf_config(src.parent)
    rewrite_model(model, cfg, hf_config=hf)
    proto = check_model(model)
    dst.parent.mkdir(parents=True, exist_ok=True)
    large = proto.ByteSize() > 1_800_000_000
    onnx.save_model(proto, dst, save_as_external_data=large, location=dst.name + ".data" if large else None)
    return dst
