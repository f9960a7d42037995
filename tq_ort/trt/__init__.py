"""TensorRT for tq-ort: engine build (`build`), its JSON sidecar (`sidecar`) and a generation session
over an engine (`session`). The TensorRT Python module is imported on first use only, so every other
part of tq-ort works without it; `import_tensorrt()` names the package to install when it is missing.
"""
from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType

#: modules tried in order (TQ_ORT_TENSORRT_MODULE picks one): TensorRT-RTX (NVIDIA's `tensorrt_rtx`
#: package, or its bindings alone), then full TensorRT 10+.
MODULES = ("tensorrt_rtx", "tensorrt_rtx_bindings", "tensorrt")


def install_hint() -> str:
    """The install command, with the TensorRT packages of the `[tensorrt]` extra as pyproject.toml pins them."""
    try:
        from importlib.metadata import requires

        reqs = [r.split(";")[0].strip() for r in requires("tq-ort") or [] if 'extra == "tensorrt"' in r]
    except Exception:  # not installed as a distribution (a source checkout on sys.path)
        reqs = []
    pkgs = [r for r in reqs if r.startswith("tensorrt")]
    return 'pip install "tq-ort[tensorrt]"' + (f" (packages: {', '.join(pkgs)})" if pkgs else "")


class TensorRTUnavailable(RuntimeError):
    """No usable TensorRT Python module (the message is one line: what is missing, how to install it)."""


def import_tensorrt() -> ModuleType:
    """The TensorRT module (see MODULES); raises TensorRTUnavailable naming the package to install."""
    wanted = os.environ.get("TQ_ORT_TENSORRT_MODULE")
    names = (wanted,) if wanted else MODULES
    errors = []
    for name in names:
        try:
            mod = importlib.import_module(name)
        except ImportError as e:  # also a present package whose native libraries do not load
            errors.append(f"{name}: {e}".replace("\n", " "))
            continue
        if name == "tensorrt_rtx_bindings":
            alias_tensorrt_rtx(mod)
        return mod
    raise TensorRTUnavailable(f"TensorRT is not installed (no module {' / '.join(repr(n) for n in names)}; "
                              f"{errors[0] if errors else ''}); install it with: {install_hint()}")


def is_rtx(trt: ModuleType) -> bool:
    """Whether `trt` is TensorRT-RTX (strongly typed networks, compute-capability targets, no FP16 flag)."""
    return trt.__name__.startswith("tensorrt_rtx")


def alias_tensorrt_rtx(bindings: ModuleType) -> None:
    """Make `import tensorrt_rtx` (what polygraphy imports with POLYGRAPHY_USE_TENSORRT_RTX=1) give the
    bindings module in this process when NVIDIA's `tensorrt-rtx-cu13` package, which ships that name,
    is not installed."""
    sys.modules.setdefault("tensorrt_rtx", bindings)
