"""Engine builds run in a child process (`python -m tq_ort.trt.build REQUEST RESPONSE`), for two reasons:

- TensorRT-RTX 1.7.1's ONNX parser dlopen()s "libtensorrt_rtx.so" when it imports a plugin node, and
  the wheel ships only libtensorrt_rtx.so.1: the child gets LD_LIBRARY_PATH with a directory holding
  that missing name as a symlink (`library_shim`); the dynamic loader reads LD_LIBRARY_PATH at start.
- TensorRT may abort() the process on some errors (the parser does when it cannot open that
  library): in a child, the parent still reports a clean error with TensorRT's last output.

The child's stderr (progress timer, TensorRT messages) is passed through as it comes.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import threading
from dataclasses import asdict
from pathlib import Path

from . import TensorRTUnavailable

IN_WORKER = "TQ_ORT_TRT_WORKER"
#: the exceptions a child reports by name and the parent raises again
ERRORS = {"ValueError": ValueError, "FileNotFoundError": FileNotFoundError, "RuntimeError": RuntimeError,
           "TensorRTUnavailable": TensorRTUnavailable}


def library_shim() -> Path | None:
    """A directory with libtensorrt_rtx.so -> the wheel's libtensorrt_rtx.so.1 (under the tq-ort cache),
    or None when TensorRT-RTX's libs are not pip-installed or already have that name."""
    spec = importlib.util.find_spec("tensorrt_rtx_libs")
    if spec is None or not spec.submodule_search_locations:
        return None
    libs = Path(list(spec.submodule_search_locations)[0])
    real = sorted(libs.glob("libtensorrt_rtx.so.*"))
    if (libs / "libtensorrt_rtx.so").exists() or not real:
        return None
    from ..paths import cache_dir

    shim = cache_dir() / "trt-shim" / real[0].name
    shim.mkdir(parents=True, exist_ok=True)
    link = shim / "libtensorrt_rtx.so"
    if not (link.is_symlink() and Path(os.readlink(link)) == real[0]):
        tmp = shim / f".link-{os.getpid()}"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(real[0])
        tmp.replace(link)
    return shim


def build_in_worker(model: Path, engine: Path, options) -> dict:
    """Run tq_ort.trt.build.build_engine in a child process; re-raises its error in this one."""
    import tempfile

    env = dict(os.environ, **{IN_WORKER: "1"})
    shim = library_shim()
    if shim is not None:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(shim), env.get("LD_LIBRARY_PATH", "")) if p)
    with tempfile.TemporaryDirectory(prefix="tq-trt-build-") as tmp:
        req, resp = Path(tmp) / "request.json", Path(tmp) / "response.json"
        req.write_text(json.dumps({"model": str(model), "engine": str(engine), "options": asdict(options)}))
        proc = subprocess.Popen([sys.executable, "-m", "tq_ort.trt.build", str(req), str(resp)], env=env,
                                stderr=subprocess.PIPE)
        tail = bytearray()

        def forward() -> None:
            while chunk := os.read(proc.stderr.fileno(), 4096):
                sys.stderr.buffer.write(chunk)
                sys.stderr.flush()
                tail.extend(chunk)
                del tail[:-4000]

        t = threading.Thread(target=forward, daemon=True)
        t.start()
        rc = proc.wait()
        t.join()
        if resp.exists():
            out = json.loads(resp.read_text())
            if "record" in out:
                return out["record"]
            raise ERRORS.get(out["error"], RuntimeError)(out["message"])
    last = " | ".join(line.strip() for line in tail.decode(errors="replace").splitlines()[-3:] if line.strip())
    raise RuntimeError(f"{model}: TensorRT ended the build process (exit status {rc}"
                       + (f", signal {-rc}" if rc < 0 else "") + f"): {last or 'no output'}")
