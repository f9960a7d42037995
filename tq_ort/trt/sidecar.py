"""The JSON file written beside every engine (ENGINE.json): what it was built from and for.

Keys: format, tq_ort_version, tensorrt {module, version}, model {path, fingerprint, turboquant config},
plugins {path, sha256, creators} (null for a plugin-free model), profile {batch, sequence, past,
total: [min, opt, max]}, max_context, max_batch, fp16, compute_capability, build_seconds, io
{name: {shape, dtype, mode}}.
"""
from __future__ import annotations

import json
from pathlib import Path

from .runtime import file_sha256

FORMAT = "tq-ort-trt-engine/1"


def sidecar_path(engine: str | Path) -> Path:
    engine = Path(engine)
    return engine.with_name(engine.name + ".json")


def model_fingerprint(onnx_path: str | Path) -> str:
    """sha256 over the model file and its external-data file (if any), in that order."""
    onnx_path = Path(onnx_path)
    parts = [file_sha256(onnx_path)]
    data = onnx_path.with_name(onnx_path.name + ".data")
    if data.exists():
        parts.append(file_sha256(data))
    return "sha256:" + ("+".join(parts) if len(parts) > 1 else parts[0])


def write_sidecar(engine: str | Path, record: dict) -> Path:
    path = sidecar_path(engine)
    path.write_text(json.dumps({"format": FORMAT, **record}, indent=2) + "\n")
    return path


def read_sidecar(engine: str | Path) -> dict:
    path = sidecar_path(engine)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no sidecar beside the engine (tq-ort trt-build writes ENGINE.json; "
                                "rebuild the engine with tq-ort trt-build)")
    try:
        rec = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if rec.get("format") != FORMAT:
        raise ValueError(f"{path}: format {rec.get('format')!r}, expected {FORMAT!r}")
    return rec
