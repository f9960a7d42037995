"""Where the built custom-op library is, and ORT session options that load it (layer 2).

Imports nothing else of the project.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import onnxruntime

DOMAIN = "turboquant"

if sys.platform == "win32":
    LIBRARY_NAME = "tq_ort_ops.dll"
elif sys.platform == "darwin":
    LIBRARY_NAME = "libtq_ort_ops.dylib"
else:
    LIBRARY_NAME = "libtq_ort_ops.so"


def _candidates() -> list[Path]:
    out = []
    env = os.environ.get("TQ_ORT_LIBRARY")
    if env:
        out.append(Path(env))
    here = Path(__file__).resolve().parent
    out.append(here / LIBRARY_NAME)
    # Editable installs keep Python files in the source tree and the library in site-packages:
    # every directory of the package (regular or redirected) is searched.
    pkg = sys.modules.get(__package__ or "tq_ort")
    for p in list(getattr(pkg, "__path__", []) or []):
        out.append(Path(p) / LIBRARY_NAME)
    import sysconfig
    for key in ("platlib", "purelib"):
        out.append(Path(sysconfig.get_paths()[key]) / "tq_ort" / LIBRARY_NAME)
    return out


def library_path() -> str:
    """Absolute path of the TurboQuant custom-op library (TQ_ORT_LIBRARY overrides)."""
    tried = []
    for cand in _candidates():
        if cand.is_file():
            return str(cand.resolve())
        tried.append(str(cand))
    raise FileNotFoundError(
        f"tq-ort custom-op library {LIBRARY_NAME} not found; looked in: " + ", ".join(dict.fromkeys(tried))
        + ". Build and install the package (pip install . or pip install -e .), "
        "or point TQ_ORT_LIBRARY at a built library.")


def session_options(so: onnxruntime.SessionOptions | None = None) -> onnxruntime.SessionOptions:
    """Session options (new, or the given ones) with the TurboQuant ops registered."""
    so = onnxruntime.SessionOptions() if so is None else so
    so.register_custom_ops_library(library_path())
    return so
