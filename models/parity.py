"""Run an exported decoder in onnxruntime step by step and compare with the HF torch model.

Handles the three export forms (optimum, dynamo, genai builder): inputs are fed by name when the
graph has them (``position_ids`` is absent from gemma3/optimum and from genai graphs), the past
starts with 0 rows, each step's ``present.*`` becomes the next ``past_key_values.*``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def cache_shape_from_config(model_dir) -> tuple[int, int, int]:
    """(layers, kv_heads, head_dim) from an HF ``config.json`` (gpt2 keys understood)."""
    c = json.loads((Path(model_dir) / "config.json").read_text())
    c = c.get("text_config", c)
    layers = c.get("num_hidden_layers", c.get("n_layer"))
    heads = c.get("num_attention_heads", c.get("n_head"))
    kv = c.get("num_key_value_heads") or heads
    hidden = c.get("hidden_size", c.get("n_embd"))
    hd = c.get("head_dim") or hidden // heads
    return layers, kv, hd


def onnx_step_logits(onnx_path, input_ids: np.ndarray, chunks, *, kv_heads: int, head_dim: int,
                     providers=("CPUExecutionProvider",), session=None) -> np.ndarray:
    """Logits [B, sum(chunks), V] from running ``input_ids`` in chunks (first = prefill).

    ``chunks`` e.g. ``(7, 1, 1, 1)``: a 7-token prefill then three 1-token decode steps. No padding.
    """
    import onnxruntime as ort

    sess = session or ort.InferenceSession(str(onnx_path), providers=list(providers))
    in_names = {i.name for i in sess.get_inputs()}
    out_names = [o.name for o in sess.get_outputs()]
    b = input_ids.shape[0]
    past = {n: np.zeros((b, kv_heads, 0, head_dim), np.float32)
            for n in in_names if n.startswith("past_key_values.")}
    start, logits = 0, []
    for n in chunks:
        end = start + n
        feed = {"input_ids": input_ids[:, start:end].astype(np.int64),
                "attention_mask": np.ones((b, end), np.int64)}
        if "position_ids" in in_names:
            feed["position_ids"] = np.tile(np.arange(start, end, dtype=np.int64), (b, 1))
        feed.update(past)
        res = dict(zip(out_names, sess.run(None, feed)))
        logits.append(res["logits"])
        past = {k.replace("present.", "past_key_values.", 1): v for k, v in res.items()
                if k.startswith("present.")}
        start = end
    return np.concatenate(logits, axis=1)


def torch_logits(model_dir, input_ids: np.ndarray, *, model=None) -> np.ndarray:
    import torch
    from transformers import AutoModelForCausalLM

    m = model or AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    with torch.no_grad():
        t = torch.from_numpy(input_ids.astype(np.int64))
        return m(t, attention_mask=torch.ones_like(t)).logits.float().numpy()


def compare(model_dir, onnx_path, *, batch: int = 2, chunks=(7, 1, 1, 1), seed: int = 0,
            vocab_limit: int = 256) -> float:
    """Max |logits_onnx - logits_torch| over a prefill + decode run."""
    _, kv, hd = cache_shape_from_config(model_dir)
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab_limit, size=(batch, sum(chunks)))
    ref = torch_logits(model_dir, ids)
    got = onnx_step_logits(onnx_path, ids, chunks, kv_heads=kv, head_dim=hd)
    return float(np.abs(got - ref).max())


def genai_step_logits(genai_dir, input_ids: np.ndarray, chunks, *, max_length: int | None = None):
    """Last-position logits [len(chunks), V] from onnxruntime-genai's Generator (batch 1).

    The generator uses its own cache handling (shared buffer, windowed caches for sliding layers),
    so this checks a genai-builder model the way onnxruntime-genai runs it.
    """
    import onnxruntime_genai as og

    assert input_ids.shape[0] == 1, "genai_step_logits: batch 1"
    model = og.Model(str(genai_dir))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=max_length or max(sum(chunks) + 1, 64), do_sample=False)
    gen = og.Generator(model, params)
    start, out = 0, []
    for n in chunks:
        gen.append_tokens(input_ids[0, start:start + n].astype(np.int32).tolist())
        out.append(np.asarray(gen.get_logits(), dtype=np.float32).reshape(-1))
        start += n
    return np.stack(out)


def compare_genai(model_dir, genai_dir, *, chunks=(7, 1, 1, 1), seed: int = 0,
                  vocab_limit: int = 256) -> float:
    """Max |logits| difference between onnxruntime-genai and torch at each chunk's last token."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab_limit, size=(1, sum(chunks)))
    ref = torch_logits(model_dir, ids)[0]
    ends = np.cumsum(chunks) - 1
    got = genai_step_logits(genai_dir, ids, chunks)
    return float(np.abs(got - ref[ends]).max())
