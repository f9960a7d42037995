"""Tiny, randomly initialised Hugging Face decoder models built from a config (no download).

``make_tiny(family, out_dir)`` writes a normal HF model folder (``config.json``,
``generation_config.json``, ``model.safetensors``) plus a byte-level tokenizer (256 byte tokens +
``<s>``, ``</s>``, ``<pad>``; no merges, so one token per UTF-8 byte) that every exporter
(optimum, torch.onnx, the onnxruntime-genai builder) can load offline.

All families: 2 layers, vocab 300, 4 query heads / 2 KV heads (GQA) except gpt2 (MHA, 4/4),
head_dim 64 (gemma3: 256), max_position_embeddings 256, float32. The weights are random (seeded),
so generated text is gibberish: drive tests by token ids and compare logits.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# 300: matches no projection width of any family here. The onnxruntime-genai builder finds the LM
# head as "a Linear with vocab_size outputs", so a vocab equal to e.g. phi3's fused qkv width (512)
# silently wires the logits to the wrong MatMul.
VOCAB_SIZE = 300
BOS_ID, EOS_ID, PAD_ID = 256, 257, 258
MAX_POS = 256

#: family -> (transformers config class name, kwargs). head_dim = 64 unless stated.
_CONFIGS: dict[str, tuple[str, dict]] = {
    "llama": ("LlamaConfig", dict(
        hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=64,
        rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False)),
    "mistral": ("MistralConfig", dict(
        hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=64,
        rms_norm_eps=1e-5, rope_theta=10000.0, sliding_window=None, tie_word_embeddings=False)),
    "qwen2": ("Qwen2Config", dict(
        # Qwen2 derives head_dim = hidden / heads; q/k/v have biases.
        hidden_size=256, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2,
        rms_norm_eps=1e-6, rope_theta=10000.0, use_sliding_window=False, tie_word_embeddings=True)),
    "qwen3": ("Qwen3Config", dict(
        # q_norm / k_norm (RMSNorm over head_dim) before RoPE.
        hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=64,
        rms_norm_eps=1e-6, rope_theta=10000.0, use_sliding_window=False, tie_word_embeddings=True)),
    "phi3": ("Phi3Config", dict(
        # fused qkv_proj / gate_up_proj; head_dim = hidden / heads.
        hidden_size=256, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2,
        rms_norm_eps=1e-5, rope_theta=10000.0, sliding_window=None, tie_word_embeddings=False,
        original_max_position_embeddings=MAX_POS)),
    "gpt2": ("GPT2Config", dict(
        # MHA (4 heads of 64), learned absolute positions, no RoPE, LayerNorm, fused c_attn.
        n_embd=256, n_layer=2, n_head=4, n_inner=256, n_positions=MAX_POS,
        activation_function="gelu_new")),
    "gemma3": ("Gemma3TextConfig", dict(
        # head_dim 256, layer 0 sliding (window 8), layer 1 global; q/k norm; tied embeddings.
        hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=256,
        sliding_window=8, layer_types=["sliding_attention", "full_attention"],
        query_pre_attn_scalar=256, rope_theta=1000000.0, rope_local_base_freq=10000.0,
        rms_norm_eps=1e-6, tie_word_embeddings=True)),
}

FAMILIES: tuple[str, ...] = tuple(_CONFIGS)


def tiny_config(family: str):
    """The transformers config object for ``family`` (see ``FAMILIES``)."""
    import transformers

    if family not in _CONFIGS:
        raise ValueError(f"unknown family {family!r}; expected one of {', '.join(FAMILIES)}")
    cls_name, kw = _CONFIGS[family]
    cls = getattr(transformers, cls_name, None)
    if cls is None:
        raise RuntimeError(f"transformers {transformers.__version__} has no {cls_name}")
    common = dict(vocab_size=VOCAB_SIZE, bos_token_id=BOS_ID, eos_token_id=EOS_ID,
                  pad_token_id=PAD_ID, dtype="float32")
    if family != "gpt2":
        common["max_position_embeddings"] = MAX_POS
    cfg = cls(**common, **kw)
    if family == "gemma3":
        cfg.architectures = ["Gemma3ForCausalLM"]
    return cfg


def make_tokenizer():
    """A byte-level fast tokenizer: ids 0..255 = bytes, 256 ``<s>``, 257 ``</s>``, 258 ``<pad>``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    # Byte order: bytes_to_unicode maps byte b to one printable char; reproduce it for ids = bytes.
    byte_chars = _bytes_to_unicode()
    vocab = {byte_chars[b]: b for b in range(256)}
    assert set(vocab) == set(alphabet)
    vocab.update({"<s>": BOS_ID, "</s>": EOS_ID, "<pad>": PAD_ID})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token=None,
                                   model_max_length=MAX_POS, clean_up_tokenization_spaces=False)


def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def make_tiny(family: str, out_dir, *, seed: int = 0) -> Path:
    """Build a tiny random ``family`` model and save it as an HF folder under ``out_dir``.

    Returns ``Path(out_dir)``. Deterministic for a given ``seed`` and transformers version.
    """
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    out = Path(out_dir)
    cfg = tiny_config(family)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    # HF's default init (std 0.02) gives near-uniform logits; widen it a bit so that greedy
    # decoding and logit comparisons are informative.
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed)
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * (1.0 / p.shape[-1] ** 0.5))
            elif name.endswith(".bias") and "norm" not in name and ".ln_" not in name:
                # projection biases (qwen2 q/k/v, gpt2): non-zero, or exporters may drop them
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    GenerationConfig(bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID,
                     do_sample=False).save_pretrained(out)
    make_tokenizer().save_pretrained(out)
    (out / "tiny_family.json").write_text(json.dumps({"family": family, "seed": seed}))
    return out


if __name__ == "__main__":  # python -m models.tiny llama /tmp/tiny-llama
    import sys

    print(make_tiny(sys.argv[1], sys.argv[2]))
