"""Tiny-model exports shared by the test modules: built once per test run, cached on disk.

Set TQ_ORT_TEST_CACHE to keep them across runs (CI starts empty and builds them once).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

_ROOT = Path(os.environ.get("TQ_ORT_TEST_CACHE") or Path(tempfile.gettempdir()) / f"tq-ort-tests-{os.getuid()}")


def tiny_export(family: str, source: str = "optimum") -> Path:
    """model.onnx of the tiny `family` exported by `source` (config.json beside it)."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from models import export, tiny

    out = _ROOT / f"{family}-{source}"
    onnx_path = out / "model.onnx"
    if onnx_path.exists():
        return onnx_path
    hf = _ROOT / f"{family}-hf"
    if not (hf / "config.json").exists():
        tiny.make_tiny(family, hf)
    if source == "optimum":
        pytest.importorskip("optimum.exporters.onnx")
        path = export.export_optimum(hf, out)
    elif source == "dynamo":
        path = export.export_dynamo(hf, out)
    else:
        ok, why = export.genai_builder_available()
        if not ok:
            pytest.skip(f"onnxruntime-genai model builder unavailable: {why}")
        path = export.export_genai(hf, out)
    for name in ("config.json",):
        if not (out / name).exists():
            (out / name).write_bytes((hf / name).read_bytes())
    return Path(path)


def library_has_attention() -> bool:
    """Whether the built custom-op library registers TurboQuantAttention on the CPU EP."""
    try:
        import onnx
        import onnxruntime as ort
        from onnx import TensorProto, helper

        from tq_ort import session_options
    except Exception:
        return False
    node = helper.make_node("TurboQuantDecode", ["r", "rot", "cb"], ["y"], domain="turboquant")
    g = helper.make_graph([node], "probe", [helper.make_tensor_value_info("r", TensorProto.UINT8, [1, 36]),
                                              helper.make_tensor_value_info("rot", TensorProto.FLOAT, [64]),
                                              helper.make_tensor_value_info("cb", TensorProto.FLOAT, [16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("turboquant", 1)])
    try:
        ort.InferenceSession(m.SerializeToString(), session_options(), providers=["CPUExecutionProvider"])
        return True
    except Exception:
        return False
