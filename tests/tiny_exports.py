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
        import onnxruntime as ort
        from onnx import TensorProto, helper

        from tq_ort import session_options
    except Exception:
        return False
    f, u8, i32 = TensorProto.FLOAT, TensorProto.UINT8, TensorProto.INT32
    ins = [("q", f, [1, 1, 64]), ("k", f, [1, 1, 64]), ("v", f, [1, 1, 64]), ("pk", u8, [1, 1, 4, 36]),
           ("pv", u8, [1, 1, 4, 36]), ("sl", i32, [1]), ("t", i32, []), ("rot", f, [64]), ("kc", f, [16]),
           ("vc", f, [16])]
    node = helper.make_node("TurboQuantAttention", [n for n, _, _ in ins], ["o", "k2", "v2"], domain="turboquant",
                            num_heads=1, kv_num_heads=1, key_bits=4, value_bits=4)
    g = helper.make_graph([node], "probe", [helper.make_tensor_value_info(*i) for i in ins],
                          [helper.make_tensor_value_info("o", f, None)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("turboquant", 1)])
    try:
        ort.InferenceSession(m.SerializeToString(), session_options(), providers=["CPUExecutionProvider"])
        return True
    except Exception:
        return False


def rewritten_folder(parent: Path, family: str, *flags: str) -> Path:
    """A rewritten tiny `family` model folder under `parent` (model.onnx, the export's config and tokenizer
    files, and model.onnx.original.json naming the float export), made with `tq-ort rewrite FLAGS`."""
    from tq_ort.cli.main import main

    src = tiny_export(family)
    out = Path(parent) / f"{family}-tq"
    out.mkdir(parents=True)
    for f in src.parent.glob("*.json"):
        (out / f.name).write_bytes(f.read_bytes())
    assert main(["rewrite", str(src), "-o", str(out / "model.onnx"), *flags]) == 0
    return out
