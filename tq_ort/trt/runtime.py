"""What engine build and engine run share: a logger that keeps TensorRT's messages (so errors can
quote them), and loading the tq-ort plugin library into TensorRT's plugin registry."""
from __future__ import annotations

import hashlib
from pathlib import Path
from types import ModuleType


def make_logger(trt: ModuleType, echo_level: str = "WARNING"):
    """A trt.ILogger that prints messages at `echo_level` or worse to stderr and keeps the errors
    (`.errors`, newest last) for the exception messages of build and deserialization."""
    import sys

    order = ["INTERNAL_ERROR", "ERROR", "WARNING", "INFO", "VERBOSE"]
    sev = trt.ILogger.Severity
    rank = {getattr(sev, n): i for i, n in enumerate(order)}
    echo = order.index(echo_level)

    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity, msg: str) -> None:
            r = rank.get(severity, 4)
            if r <= 1:
                self.errors.append(msg)
            if r <= echo:
                print(f"[TensorRT {order[r].lower()}] {msg}", file=sys.stderr)

        def last_errors(self, n: int = 3) -> str:
            return " | ".join(self.errors[-n:]) if self.errors else "(TensorRT logged no error)"

    return _Logger()


def plugin_library_path() -> str | None:
    """The built TensorRT plugin library (libtq_trt_plugins.so), or None when it was not built."""
    try:
        from ..library import trt_plugin_path
    except ImportError:
        return None
    try:
        return str(trt_plugin_path())
    except FileNotFoundError:
        return None


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def load_plugins(trt: ModuleType, path: str | None = None) -> dict | None:
    """Register every creator of the plugin library with TensorRT; returns what the sidecar records
    about it ({path, sha256, creators}), or None when there is no plugin library."""
    path = path or plugin_library_path()
    if path is None:
        return None
    if not Path(path).is_file():
        raise FileNotFoundError(f"TensorRT plugin library {path}: no such file")
    registry = trt.get_plugin_registry()
    handle = registry.load_library(str(path))
    if handle is None:
        raise RuntimeError(f"TensorRT plugin library {path}: IPluginRegistry.load_library failed (does it export "
                           "getCreators, and was it built for this TensorRT?)")
    creators = sorted(f"{c.name}/{c.plugin_version}@{c.plugin_namespace or '-'}" for c in registry.all_creators
                      if "TurboQuant" in c.name)
    return {"path": str(Path(path).resolve()), "sha256": file_sha256(path), "creators": creators}
