"""The exact recent window end to end: rewrite with recent_window, run in a DecoderSession, compare
logits with the original model. The op-level semantics are tested in test_cpu_ops_recent_window.py."""
from __future__ import annotations

import numpy as np
import pytest

from graph_passes import TQConfig, rewrite_file
from test_rewrite_parity import greedy_parity
from tiny_exports import library_has_attention, tiny_export

pytestmark = pytest.mark.skipif(not library_has_attention(), reason="custom-op library without TurboQuantAttention")

PROMPT, STEPS = 7, 24  # 31 tokens in all


@pytest.mark.parametrize("family,cfg", [
    ("llama", dict(key_bits=2, value_bits=2)),       # shared buffer, rows and rings
    ("gemma3", dict(key_bits=2, value_bits=2)),      # concat mode, sliding-window layers, head_dim 256
    ("qwen2", dict(key_bits=2, keys_only=True)),     # key ring only; values stay float
])
def test_a_window_covering_the_whole_history_matches_the_original(family, cfg, tmp_path):
    """With R >= every length, each cached token is read from the exact ring: the rewritten model
    computes the original's attention, so the 2-bit rows must not show in the logits at all."""
    src = tiny_export(family)
    exact = rewrite_file(src, tmp_path / "exact.onnx", TQConfig(**cfg, recent_window=64))
    lossy = rewrite_file(src, tmp_path / "lossy.onnx", TQConfig(**cfg))
    rel_exact, agree, _, sess = greedy_parity(src, exact, steps=STEPS, prompt_len=PROMPT)
    rel_lossy, _, _, _ = greedy_parity(src, lossy, steps=STEPS, prompt_len=PROMPT)
    assert sess.shared == (family != "gemma3")
    assert rel_exact.max() < 1e-4, (family, rel_exact.max())
    assert agree == STEPS
    assert rel_lossy.max() > 100 * max(rel_exact.max(), 1e-7), (family, rel_lossy.max())  # the test can fail


def test_a_short_ring_wraps_around_the_same_in_both_cache_modes(tmp_path):
    """R = 4 over 31 tokens: the ring wraps many times; shared-buffer (in place) and concat decoding
    must agree, and the error sits between the 2-bit cache and the exact one."""
    src = tiny_export("llama")
    dst = rewrite_file(src, tmp_path / "m.onnx", TQConfig(key_bits=2, value_bits=2, recent_window=4))
    rel_s, _, toks_s, s1 = greedy_parity(src, dst, steps=STEPS, prompt_len=PROMPT, shared=True)
    rel_c, _, toks_c, s2 = greedy_parity(src, dst, steps=STEPS, prompt_len=PROMPT, shared=False)
    assert s1.shared and not s2.shared
    assert toks_s == toks_c
    np.testing.assert_allclose(rel_s, rel_c, rtol=1e-4, atol=1e-6)
    lossy = rewrite_file(src, tmp_path / "lossy.onnx", TQConfig(key_bits=2, value_bits=2))
    rel_lossy, _, _, _ = greedy_parity(src, lossy, steps=STEPS, prompt_len=PROMPT)
    assert 0 < rel_s.mean() < rel_lossy.mean(), (rel_s.mean(), rel_lossy.mean())


def test_inspect_counts_the_rings_the_session_allocates(tmp_path):
    from tq_ort.inspect import load_config, memory
    from tq_ort.session import DecoderSession

    src = tiny_export("llama")
    dst = rewrite_file(src, tmp_path / "m.onnx", TQConfig(key_bits=4, value_bits=3, recent_window=16))
    for shared in (True, False):
        sess = DecoderSession(dst, max_length=100, shared_buffer=shared)
        sess.reset()
        rings = sum(s.fixed_bytes() for s in sess.specs)
        assert rings == 2 * 2 * 2 * 16 * 64 * 4  # layers x (K, V) x kv_heads x R x d x float32
        mem = memory(load_config(dst), 100)
        assert mem["fixed_bytes"] == rings
        if shared:
            assert mem["cache_bytes"] == sess.cache_bytes()
        else:  # concat mode: rows grow with the context, the rings are there from the start
            assert sess.cache_bytes() == rings


def test_bad_recent_window_and_genai_are_refused(tmp_path):
    from tq_ort.export import export_and_rewrite

    with pytest.raises(ValueError, match="recent_window=-1"):
        TQConfig(recent_window=-1).validate()
    with pytest.raises(ValueError, match="onnxruntime-genai"):
        export_and_rewrite(tmp_path, tmp_path / "out", TQConfig(recent_window=8), source="genai", progress=False)


def test_eval_variant_counts_the_rings(tmp_path):
    from tq_ort import quality

    v = quality.parse_variant("K4V4+recent16")
    assert v.label == "K4V4 recent16" and v.tq_config().recent_window == 16
    assert "recent_window" not in quality.parse_variant("K4V4").describe()  # old cached results keep their keys
    src = tiny_export("llama")
    plain = quality.bytes_of(quality.parse_variant("K4V4"), rewrite_file(src, tmp_path / "a.onnx", TQConfig()), 64)
    ring = quality.bytes_of(v, rewrite_file(src, tmp_path / "b.onnx", v.tq_config()), 64)
    # 16 float16 tokens over 64: (4.5 * 48 + 4.5 * 16 + 16 * 16) / 64 bits per value
    assert ring["bits_per_value"] == pytest.approx(plain["bits_per_value"] + 16 * 16 / 64)
    assert ring["compression"] < ring["compression_at"]["4096"] < ring["compression_at"]["32768"] < plain["compression"]
