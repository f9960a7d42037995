"""`tq-ort inspect`: configuration, bytes per token and cache memory of a rewritten model."""
from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    i = sub.add_parser("inspect", help="configuration and cache memory of a rewritten model",
                       description="Print the TurboQuant configuration, bytes per token per layer and the cache "
                       "memory at a context length against float16.")
    i.add_argument("model", help="rewritten model folder or .onnx")
    i.add_argument("--context", type=int, default=4096, help="context length for the memory figure (default 4096)")
    i.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    i.add_argument("--json", action="store_true", help="machine-readable output")
    i.add_argument("--target", choices=("coreml",), help="coreml: static report of an edge model's ops against "
                   "ORT's CoreML EP op list (which partitions run on CoreML, which fall back to the CPU)")
    i.set_defaults(fn=run)
    return i


def run(a: argparse.Namespace) -> int:
    if a.target == "coreml":
        from ..coreml_report import report_text

        model = Path(a.model)
        print(report_text(model / "model.onnx" if model.is_dir() else model, as_json=a.json))
        return 0
    from ..inspect import inspect_model

    print(inspect_model(Path(a.model), context=a.context, batch=a.batch, as_json=a.json))
    return 0
