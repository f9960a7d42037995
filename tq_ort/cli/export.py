"""`tq-ort export`: Hugging Face model folder -> exported, TurboQuant-rewritten ONNX folder."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from .codec_flags import add_codec_args, config_from_args


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    e = sub.add_parser("export", help="export a Hugging Face decoder and rewrite its KV cache",
                       description="Export MODEL_DIR (default: the embedded SmolLM2-135M-Instruct) to ONNX and "
                       "rewrite it so the KV cache stays TurboQuant-compressed.")
    e.add_argument("model", nargs="?", help="Hugging Face model folder (default: embedded SmolLM2-135M-Instruct)")
    e.add_argument("-o", "--output", required=True, help="output folder (model.onnx + tokenizer files)")
    e.add_argument("--source", default="optimum", choices=("optimum", "dynamo", "genai"),
                   help="exporter whose graph is rewritten (default optimum)")
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    add_codec_args(e)
    e.set_defaults(fn=run)
    return e


def run(a: argparse.Namespace) -> int:
    from ..export import export_and_rewrite

    t = time.time()
    dst = export_and_rewrite(Path(a.model) if a.model else None, Path(a.output), config_from_args(a), source=a.source,
                             progress=not a.quiet)
    print(f"wrote {dst} in {time.time() - t:.1f} s")
    return 0
