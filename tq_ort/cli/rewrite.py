"""`tq-ort rewrite`: an exported decoder ONNX file -> its TurboQuant-rewritten form."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from .codec_flags import add_codec_args, config_from_args


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    r = sub.add_parser("rewrite", help="rewrite an exported decoder ONNX file",
                       description="Rewrite IN.onnx (optimum / torch.onnx / onnxruntime-genai export) into OUT.onnx.")
    r.add_argument("input", help="exported decoder ONNX")
    r.add_argument("-o", "--output", required=True, help="rewritten ONNX path")
    r.add_argument("--config", help="the model's config.json (default: the one beside IN.onnx, if any)")
    add_codec_args(r)
    r.set_defaults(fn=run)
    return r


def run(a: argparse.Namespace) -> int:
    from graph_passes import rewrite_file

    from ..export import original_sidecar

    hf = json.loads(Path(a.config).read_text()) if a.config else None
    # written beside OUT and renamed into place with the record of the original (for tq-ort check):
    # an interrupt leaves the old OUT or none, a refused rewrite writes nothing
    dst = rewrite_file(a.input, a.output, config_from_args(a), hf_config=hf, sidecars=original_sidecar(Path(a.input)))
    print(f"wrote {dst}")
    return 0
