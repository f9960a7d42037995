"""The model and its data: texts -> token windows and prompts (EvalData), from EvalSettings."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MODEL_ALIASES = {"smollm2": "SmolLM2-135M-Instruct", "gemma3-270m": "Gemma-3-270M"}
DEFAULT_TEXTS = ("ptb:2048", "alice:1024", "wiki:1024")


@dataclass
class EvalSettings:
    texts: tuple = DEFAULT_TEXTS  # "name:tokens"
    context: int = 512
    chunk: int = 1
    batch: int = 8
    gen_prompts: int = 4
    prompt_tokens: int = 64
    gen_tokens: int = 256
    threads: int = 0  # onnxruntime intra-op threads (0 = its default)


def resolve_model_dir(model: str | Path | None) -> Path:
    """A Hugging Face folder; 'smollm2' (default) and 'gemma3-270m' name the packaged models."""
    if model in (None, "", "smollm2"):
        from ..export import default_model_dir

        return default_model_dir()
    if model == "gemma3-270m":
        from models.gemma3_270m import default_model_dir as gemma_dir

        return gemma_dir()
    p = Path(model).expanduser()
    if not (p / "config.json").exists():
        raise FileNotFoundError(f"{p}: expected a Hugging Face model folder with config.json, or one of "
                                f"{', '.join(MODEL_ALIASES)}")
    return p


@dataclass
class EvalData:
    """Token ids of the windows and prompts; what they came from."""

    windows: np.ndarray  # [W, L] int64 (L = context + 1 with BOS)
    window_text: list  # text name per window
    prompts: np.ndarray  # [P, prompt_len] int64
    prompt_text: list
    bos: int | None
    texts: list = field(default_factory=list)  # per text: name, tokens, windows, info

    @property
    def offset(self) -> int:
        """Index of the first scored logit position in a window (the one predicting window token 1)."""
        return 1 if self.bos is not None else 0

    def digest(self) -> str:
        h = hashlib.sha256(self.windows.tobytes())
        h.update(self.prompts.tobytes())
        return h.hexdigest()[:16]


def load_tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir))


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def folder_tokenizer(model_dir: Path):
    """A model folder's tokenizer (load_tokenizer), or a ValueError naming the folder and what is missing."""
    model_dir = Path(model_dir)
    if not any((model_dir / n).exists() for n in TOKENIZER_FILES):
        raise ValueError(f"{model_dir}: no tokenizer files (expected one of {', '.join(TOKENIZER_FILES)} beside "
                         "model.onnx, as tq-ort export writes them; copy them from the Hugging Face model folder)")
    try:
        return load_tokenizer(model_dir)
    except (OSError, ValueError, KeyError, TypeError) as e:
        msg = str(e).splitlines()[0] if str(e) else ""
        raise ValueError(f"{model_dir}: its tokenizer could not be loaded ({type(e).__name__}: {msg[:300]})") from None


def _tokenize_prefix(tok, text: str, need: int) -> list[int]:
    chars = max(4096, need * 8)
    while True:
        ids = tok(text[:chars], add_special_tokens=False)["input_ids"]
        if len(ids) >= need + 8 or chars >= len(text):
            return ids[:-4] if chars < len(text) else ids  # the cut may split the last word
        chars *= 2


def build_data(tok, settings: EvalSettings) -> EvalData:
    from ..texts import load_text, text_info

    probe = tok("a")["input_ids"]
    bos = tok.bos_token_id if (tok.bos_token_id is not None and probe and probe[0] == tok.bos_token_id) else None
    C = settings.context
    windows, wtext, prompts, ptext, info = [], [], [], [], []
    n_texts = len(settings.texts)
    per_text_prompts = [settings.gen_prompts // n_texts + (i < settings.gen_prompts % n_texts) for i in range(n_texts)]
    for spec, n_prompts in zip(settings.texts, per_text_prompts):
        name, _, n = spec.rpartition(":") if ":" in spec and spec.rsplit(":", 1)[1].isdigit() else (spec, "", "")
        n_tokens = int(n) if n else 2048
        if n_tokens < C:
            raise ValueError(f"text {spec!r}: {n_tokens} tokens < one window of --context {C}")
        n_win = n_tokens // C
        gap = 32
        need = n_win * C + n_prompts * (settings.prompt_tokens + gap) + gap
        ids = _tokenize_prefix(tok, load_text(name), need)
        if len(ids) < need:
            raise ValueError(f"text {name!r} has {len(ids)} tokens; {need} needed for {n_win} windows of {C} "
                             f"and {n_prompts} prompts")
        for w in range(n_win):
            chunk = ids[w * C:(w + 1) * C]
            windows.append(([bos] if bos is not None else []) + chunk)
            wtext.append(name)
        start = n_win * C + gap
        for _ in range(n_prompts):
            p = ids[start:start + settings.prompt_tokens]
            prompts.append(([bos] if bos is not None else []) + p)
            ptext.append(name)
            start += settings.prompt_tokens + gap
        info.append({"name": name, "scored_tokens": n_win * (C - 1), "windows": n_win, "prompts": n_prompts,
                     "source": text_info(name)})
    plen = settings.prompt_tokens + (bos is not None)
    prompt_arr = np.asarray(prompts, dtype=np.int64) if prompts else np.zeros((0, plen), dtype=np.int64)
    return EvalData(np.asarray(windows, dtype=np.int64), wtext, prompt_arr, ptext, bos, info)
