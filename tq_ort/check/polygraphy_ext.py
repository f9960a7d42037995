"""A `polygraphy run` extension: the runner `--tq-onnxrt`, ONNX Runtime with the tq-ort custom-op library.

polygraphy 0.53.6's own `--onnxrt` runner has no option to register an ONNX Runtime custom-op library
(its `--plugins` loads TensorRT plugins only), so a rewritten model fails there with "turboquant:
TurboQuantAttention is not a registered function/op". tq-ort registers this module under polygraphy's
entry point group `polygraphy.run.plugins` (pyproject.toml), which `polygraphy run` loads at start:

    polygraphy run out/m/model.onnx --tq-onnxrt --providers cpu --input-shapes ... \\
        --val-range attention_mask:[1,1] --save-outputs cpu.json

(docs/tensorrt.md has the full command, and how to compare it with the CUDA EP.)
"""
from __future__ import annotations

from polygraphy import util
from polygraphy.backend.base import BaseLoader
from polygraphy.tools.args.backend.onnxrt.loader import OnnxrtSessionArgs
from polygraphy.tools.args.base import BaseRunnerArgs
from polygraphy.tools.args.model import ModelArgs
from polygraphy.tools.script import make_invocable


class TqSessionFromOnnx(BaseLoader):
    """An onnxruntime.InferenceSession of a model path with the tq-ort ops registered."""

    def __init__(self, model_path: str, providers: list[str] | None = None):
        self.model_path = model_path
        self.providers = providers or ["cpu"]

    def call_impl(self):
        import onnxruntime as ort

        from tq_ort import session_options

        available = ort.get_available_providers()
        chosen = []
        for p in self.providers:
            match = util.find_str_in_iterable(p, available)
            if match is None:
                raise ValueError(f"--providers {p!r}: not one of this onnxruntime's providers {available}")
            chosen.append(match)
        return ort.InferenceSession(self.model_path, session_options(), providers=chosen)


class TqOnnxrtRunnerArgs(BaseRunnerArgs):
    """
    ONNX-Runtime with tq-ort: running a rewritten model with the TurboQuant custom-op library registered.

    Depends on:

        - ModelArgs
        - OnnxrtSessionArgs (for --providers)
    """

    def get_name_opt_impl(self):
        return "ONNX-Runtime (tq-ort ops)", "tq-onnxrt"

    def get_extra_help_text_impl(self):
        return "the tq-ort custom-op library is registered with the session"

    def add_to_script_impl(self, script):
        script.add_import(imports=["OnnxrtRunner"], frm="polygraphy.backend.onnxrt")
        script.add_import(imports=["TqSessionFromOnnx"], frm="tq_ort.check.polygraphy_ext")
        loader = script.add_loader(
            make_invocable("TqSessionFromOnnx", self.arg_groups[ModelArgs].path,
                           providers=self.arg_groups[OnnxrtSessionArgs].providers),
            "build_tq_onnxrt_session")
        script.add_runner(make_invocable("OnnxrtRunner", loader))


def export_argument_groups() -> list:
    """The entry point polygraphy calls: argument groups to add to `polygraphy run`."""
    return [TqOnnxrtRunnerArgs()]
