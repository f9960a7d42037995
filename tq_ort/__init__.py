"""tq-ort: TurboQuant KV-cache compression for ONNX Runtime.

`tq_ort.codec` is the numpy reference (the math); `library_path()` / `session_options()` give the
custom-op library built from custom_ops/.
"""
from __future__ import annotations

__version__ = "0.1.0"

DOMAIN = "turboquant"


def library_path() -> str:
    """Path of the built custom-op shared library inside the installed package."""
    from .library import library_path as _lp

    return _lp()


def session_options(so=None):
    """onnxruntime.SessionOptions with the tq-ort custom-op library registered."""
    from .library import session_options as _so

    return _so(so)
