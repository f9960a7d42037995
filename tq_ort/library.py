"""Where the built custom-op library (and the TensorRT plugin library) is, and ORT session options
that load it (layer 2).

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
# The TensorRT plugins (custom_ops/trt/, docs/tensorrt.md): built only with CUDA and the TensorRT headers.
TRT_PLUGIN_NAME = "tq_trt_plugins.dll" if sys.platform == "win32" else "libtq_trt_plugins.so"


def _candidates_for(name: str, env_var: str) -> list[Path]:
    out = []
    env = os.environ.get(env_var)
    if env:
        out.append(Path(env))
    here = Path(__file__).resolve().parent
    out.append(here / name)
    # Editable installs keep Python files in the source tree and the library in site-packages:
    # every directory of the package (regular or redirected) is searched.
    pkg = sys.modules.get(__package__ or "tq_ort")
    for p in list(getattr(pkg, "__path__", []) or []):
        out.append(Path(p) / name)
    import sysconfig
    for key in ("platlib", "purelib"):
        out.append(Path(sysconfig.get_paths()[key]) / "tq_ort" / name)
    return out


def _candidates() -> list[Path]:
    return _candidates_for(LIBRARY_NAME, "TQ_ORT_LIBRARY")


def _find(candidates: list[Path], name: str, what: str, hint: str) -> str:
    tried = []
    for cand in candidates:
        if cand.is_file():
            return str(cand.resolve())
        tried.append(str(cand))
    raise FileNotFoundError(f"tq-ort {what} {name} not found; looked in: " + ", ".join(dict.fromkeys(tried)) + ". " + hint)


def library_path() -> str:
    """Absolute path of the TurboQuant custom-op library (TQ_ORT_LIBRARY overrides)."""
    return _find(_candidates(), LIBRARY_NAME, "custom-op library",
                 "Build and install the package (pip install . or pip install -e .), "
                 "or point TQ_ORT_LIBRARY at a built library.")


def trt_plugin_path() -> str:
    """Absolute path of the TensorRT plugin library libtq_trt_plugins.so (TQ_TRT_PLUGINS overrides).

    Load it into TensorRT with get_plugin_registry().load_library(path) (docs/tensorrt.md)."""
    return _find(_candidates_for(TRT_PLUGIN_NAME, "TQ_TRT_PLUGINS"), TRT_PLUGIN_NAME, "TensorRT plugin library",
                 "It is built by pip install . when CUDA (nvcc) and the TensorRT headers are available "
                 "(docs/tensorrt.md), or point TQ_TRT_PLUGINS at a built library.")


def session_options(so: onnxruntime.SessionOptions | None = None) -> onnxruntime.SessionOptions:
    """Session options (new, or the given ones) with the TurboQuant ops registered."""
    so = onnxruntime.SessionOptions() if so is None else so
    so.register_custom_ops_library(library_path())
    return so
