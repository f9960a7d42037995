"""onnxruntime-genai drives a rewritten model with its own generator: genai_config.json names the
custom-op library, the caches are uint8 rows in shared buffers."""
from __future__ import annotations

import json
import shutil

import pytest

from tiny_exports import library_has_attention, tiny_export

pytest.importorskip("onnxruntime_genai")
pytestmark = pytest.mark.skipif(not library_has_attention(), reason="custom-op library without TurboQuantAttention")


def test_genai_generator_runs_the_rewritten_model(tmp_path):
    from graph_passes import TQConfig, read_metadata, rewrite_file
    from tq_ort.genai import generate, write_genai_config
    from tq_ort.library import library_path

    src = tiny_export("llama", "genai")
    out = tmp_path / "tq"
    out.mkdir()
    rewrite_file(src, out / "model.onnx", TQConfig(key_bits=8, value_bits=8))
    for f in src.parent.glob("*.json"):
        if f.name != "genai_config.json":
            shutil.copy(f, out / f.name)
    cfg = json.loads(write_genai_config(src.parent, out).read_text())
    assert cfg["model"]["decoder"]["session_options"]["custom_ops_library"] == library_path()
    assert cfg["search"]["past_present_share_buffer"] is True
    import onnx

    meta = read_metadata(onnx.load(out / "model.onnx", load_external_data=False))
    assert meta["source"] == "GroupQueryAttention"
    prompt = [256, 72, 101, 108, 108, 111, 32, 119]
    original = generate(src.parent, prompt, 16)
    rewritten = generate(out, prompt, 16)
    assert len(rewritten) == 16
    agree = sum(a == b for a, b in zip(original, rewritten))
    assert agree >= 14, (original, rewritten)
