"""onnxruntime-genai support: a genai_config.json that loads the custom-op library and drives the
rewritten model's uint8 caches with shared buffers through genai's own generator."""
from __future__ import annotations

import json
from pathlib import Path

from .library import library_path


def write_genai_config(src_dir: Path, out_dir: Path) -> Path:
    """Copy src_dir/genai_config.json into out_dir with custom_ops_library and shared buffers set."""
    src = Path(src_dir) / "genai_config.json"
    if not src.exists():
        raise FileNotFoundError(f"{src}: the genai export writes it; export with --source genai")
    cfg = json.loads(src.read_text())
    dec = cfg["model"]["decoder"]
    dec.setdefault("session_options", {})["custom_ops_library"] = library_path()
    cfg.setdefault("search", {})["past_present_share_buffer"] = True
    dst = Path(out_dir) / "genai_config.json"
    dst.write_text(json.dumps(cfg, indent=4))
    return dst


def generate(model_dir: Path, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    """Greedy generation through onnxruntime-genai's Generator; returns the new token ids."""
    import onnxruntime_genai as og

    model = og.Model(str(model_dir))
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=len(prompt_ids) + max_new_tokens)
    gen = og.Generator(model, params)
    gen.append_tokens(prompt_ids)
    out: list[int] = []
    while not gen.is_done() and len(out) < max_new_tokens:
        gen.generate_next_token()
        out.append(int(gen.get_next_tokens()[0]))
    return out
