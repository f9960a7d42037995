"""`tq-ort inspect`: configuration, bytes per token per layer, cache memory against float16."""
from __future__ import annotations

import json
from pathlib import Path


def load_config(model: Path) -> dict:
    """The turboquant.config of a rewritten model folder or file (no weights read), layout version checked."""
    from graph_passes import load_header, read_metadata

    path = model / "model.onnx" if model.is_dir() else model
    return read_metadata(load_header(path), str(path))


def memory(cfg: dict, context: int, batch: int = 1) -> dict:
    from graph_passes.widths import format_width

    rows = []
    for layer in cfg["layers"]:
        h = layer["kv_heads"]
        k = h * layer["key_row_bytes"]
        v = h * (layer["value_row_bytes"] or layer["head_dim"] * 4)  # keys-only: float32 values in the export
        d = layer["head_dim"]
        rows.append({"layer": layer["layer"],  # widths as given: split ones (key_hi > 0) are e.g. 3.5
                     "key_bits": format_width(layer["key_bits"] + int(layer["use_qjl"]), layer.get("key_hi", 0), d),
                     "value_bits": format_width(layer["value_bits"], layer.get("value_hi", 0), d), "qjl": layer["use_qjl"], "key_bytes_per_token": k,
                     "value_bytes_per_token": v, "fp16_bytes_per_token": 2 * h * layer["head_dim"] * 2})
    tq = sum(r["key_bytes_per_token"] + r["value_bytes_per_token"] for r in rows)
    fp16 = sum(r["fp16_bytes_per_token"] for r in rows)
    fixed = sum(ring_bytes(layer) for layer in cfg["layers"])
    return {"layers": rows, "bytes_per_token": tq, "fixed_bytes": fixed, "fp16_bytes_per_token": fp16,
            "context": context, "batch": batch, "cache_bytes": (tq * context + fixed) * batch,
            "fp16_cache_bytes": fp16 * context * batch, "compression": fp16 * context / (tq * context + fixed)}


def ring_bytes(layer: dict, itemsize: int | None = None) -> int:
    """Bytes per batch row of a layer's exact recent-window rings (K, and V when compressed): fixed.
    In the model's float dtype, or `itemsize` bytes per value."""
    R = layer.get("recent_window", 0)
    if not R:
        return 0
    rings = 1 + bool(layer["past_value_recent"])
    itemsize = itemsize or (2 if layer["recent_dtype"] == "float16" else 4)
    return rings * layer["kv_heads"] * R * layer["head_dim"] * itemsize


def inspect_model(model: Path, *, context: int = 4096, batch: int = 1, as_json: bool = False) -> str:
    cfg = load_config(model)
    mem = memory(cfg, context, batch)
    if as_json:
        return json.dumps({"config": cfg, "memory": mem}, indent=1)
    req = cfg["requested"]
    lines = [f"{model}: TurboQuant layout v{cfg['layout_version']}, source {cfg['source']}, seed {cfg['seed']}",
             f"requested: key_bits={req['key_bits']} value_bits={req['value_bits']} qjl={req['use_qjl']} "
             f"keys_only={req['keys_only']} protect_layers={req['protect_layers']}@{req['protect_bits']} "
             f"recent_window={req.get('recent_window', 0)}",
             *_layer_bits_lines(req, cfg, mem),
             f"shared-buffer decoding: {'yes' if cfg['shared_buffer_ok'] else 'no (graph reads the past length)'}",
             "",
             f"{'layer':>5} {'K bits':>6} {'V bits':>6} {'K B/tok':>8} {'V B/tok':>8} {'fp16 B/tok':>10}"]
    for r in mem["layers"]:
        lines.append(f"{r['layer']:>5} {str(r['key_bits']) + ('+qjl' if r['qjl'] else ''):>6} "
                     f"{r['value_bits'] or 'float':>6} {r['key_bytes_per_token']:>8} {r['value_bytes_per_token']:>8} "
                     f"{r['fp16_bytes_per_token']:>10}")
    mib = 2 ** 20
    lines += ["", f"bytes per token (all layers): {mem['bytes_per_token']} vs {mem['fp16_bytes_per_token']} in float16"
              + (f"; plus {mem['fixed_bytes']} bytes per sequence for the exact recent-window rings "
                 f"({req.get('recent_window')} tokens)" if mem["fixed_bytes"] else ""),
              f"cache at {context} tokens x batch {batch}: {mem['cache_bytes'] / mib:.2f} MiB vs "
              f"{mem['fp16_cache_bytes'] / mib:.2f} MiB float16 ({mem['compression']:.2f}x smaller)"]
    return "\n".join(lines)


def _layer_bits_lines(req: dict, cfg: dict, mem: dict) -> list[str]:
    """The per-layer allocation (requested layer_bits) and what it averages to, when the model has one."""
    if not req.get("layer_bits"):
        return []
    from graph_passes.layer_bits import format_layer_bits

    values = sum(2 * L["kv_heads"] * L["head_dim"] for L in cfg["layers"])
    src = req.get("layer_bits_source")
    return [f"layer_bits{' (' + src + ')' if src else ''}: {format_layer_bits(tuple(map(tuple, req['layer_bits'])))}",
            f"rows average {8 * mem['bytes_per_token'] / values:.3f} bits per value (scales included)"]
