"""Build a TensorRT engine from a (rewritten) decoder ONNX model: load the tq-ort plugins, parse the
model, give every dynamic dimension an optimization-profile range, write ENGINE and ENGINE.json."""
from __future__ import annotations

import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from . import import_tensorrt, is_rtx
from .model import tensorrt_model
from .runtime import load_plugins, make_logger
from .sidecar import model_fingerprint, write_sidecar

#: inputs whose dim 1 is the new tokens (S) / the total length (T); past_key_values.*: dim 2 is the past
SEQUENCE_INPUTS = ("input_ids", "position_ids")
TOTAL_INPUTS = ("attention_mask",)
PAST_PREFIX = "past_key_values."


@dataclass(frozen=True)
class BuildOptions:
    max_context: int = 2048  # cache capacity: past + new tokens of one step
    max_batch: int = 1
    max_prompt: int = 0  # most new tokens in one step (prefill); 0 = max_context
    fp16: bool = False
    compute_capability: str = ""  # TensorRT-RTX target (e.g. sm89, current); "" = TensorRT's default
    concat: bool = False  # no shared buffer even where the model allows it (present = past ++ new rows)
    progress: bool = True
    verbose: bool = False  # echo TensorRT warnings (errors are always shown)

    def validate(self) -> None:
        if self.max_context < 1:
            raise ValueError(f"max_context={self.max_context}: expected a positive number of tokens")
        if self.max_batch < 1:
            raise ValueError(f"max_batch={self.max_batch}: expected >= 1")
        if not 0 <= self.max_prompt <= self.max_context:
            raise ValueError(f"max_prompt={self.max_prompt}: expected 0 (= max_context) .. max_context={self.max_context}")


def resolve_model(model: str | Path) -> Path:
    """MODEL_DIR/model.onnx, or the .onnx file itself."""
    p = Path(model)
    if p.is_dir():
        p = p / "model.onnx"
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such model (expected a model folder with model.onnx, or an .onnx file)")
    return p


def profile_shapes(inputs: dict[str, tuple[int, ...]], o: BuildOptions) -> dict[str, tuple[tuple, tuple, tuple]]:
    """(min, opt, max) per network input. Dynamic dims (-1): dim 0 = batch 1..max_batch; dim 1 of
    input_ids/position_ids = new tokens 1..max_prompt; dim 1 of attention_mask = total length
    1..max_context; dim 2 of past_key_values.* = past length 0..max_context (a shared buffer is bound
    at its capacity max_context). Any other dynamic dim is an error naming the input."""
    S = o.max_prompt or o.max_context
    C = o.max_context
    out = {}
    for name, shape in inputs.items():
        lo, opt, hi = [], [], []
        for axis, dim in enumerate(shape):
            if dim >= 0:
                rng = (dim, dim, dim)
            elif axis == 0:
                rng = (1, 1, o.max_batch)
            elif axis == 1 and name in SEQUENCE_INPUTS:
                rng = (1, 1, S)
            elif axis == 1 and name in TOTAL_INPUTS:
                rng = (1, max(1, C // 2), C)
            elif axis == 2 and name.startswith(PAST_PREFIX):
                rng = (0, C, C)
            else:
                raise ValueError(f"input {name!r} shape {tuple(shape)}: dynamic dim {axis} has no known meaning (expected "
                                 f"batch at dim 0, sequence at dim 1 of {SEQUENCE_INPUTS + TOTAL_INPUTS}, past length at "
                                 f"dim 2 of {PAST_PREFIX}*)")
            lo.append(rng[0]), opt.append(rng[1]), hi.append(rng[2])
        out[name] = (tuple(lo), tuple(opt), tuple(hi))
    return out


def _model_info(onnx_path: Path) -> tuple[dict | None, bool]:
    """(turboquant config from the metadata or None, whether the graph has turboquant ops); the layout
    version checked, a truncated file named."""
    from graph_passes.config import config_or_none, load_header

    m = load_header(onnx_path)
    return config_or_none(m, str(onnx_path)), any(n.domain == "turboquant" for n in m.graph.node)


def _check_widths(cfg: dict | None, onnx_path: Path) -> None:
    """Split widths (docs/ops.md 1.4.1) have CPU kernels only: the plugins would misread their rows."""
    split = [L["layer"] for L in (cfg or {}).get("layers", []) if L.get("key_hi") or L.get("value_hi")]
    if split:
        raise ValueError(f"{onnx_path}: layers {split} use split widths (e.g. --key-bits 3.5), which the TensorRT "
                         "plugins and CUDA kernels do not read yet (CPU execution provider only); rewrite the model "
                         "with whole widths for TensorRT")


class _Progress:
    """A tqdm timer on stderr showing TensorRT's current build phase, refreshed every second."""

    def __init__(self, trt, enabled: bool):
        from tqdm import tqdm

        # disable=None: on a terminal only (a log gets the final "wrote ... in N s" line)
        self.bar = tqdm(desc="tq-ort trt-build", bar_format="{desc}: {elapsed}{postfix}", disable=None if enabled else True)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._tick, daemon=True)
        self.thread.start()
        bar = self.bar

        class Monitor(trt.IProgressMonitor):
            def __init__(self):
                trt.IProgressMonitor.__init__(self)

            def phase_start(self, phase_name, parent_phase, num_steps):
                bar.set_postfix_str(phase_name)

            def step_complete(self, phase_name, step):
                return True  # never cancel

            def phase_finish(self, phase_name):
                pass

        self.monitor = Monitor()

    def _tick(self) -> None:
        while not self.stop.wait(1.0):
            self.bar.refresh()

    def close(self, what: str) -> None:
        self.stop.set()
        self.bar.set_postfix_str(what)
        self.bar.close()


def _parser_errors(parser) -> str:
    msgs = []
    for i in range(parser.num_errors):
        e = parser.get_error(i)
        where = []
        for attr in ("node_name", "node_operator"):
            fn = getattr(e, attr, None)
            v = fn() if callable(fn) else None
            if v:
                where.append(str(v))
        msgs.append((f"node {' '.join(where)}: " if where else "") + e.desc())
    return "; ".join(msgs)


def build_engine(model: str | Path, engine: str | Path, o: BuildOptions | None = None) -> dict:
    """Build `engine` from the model folder or .onnx `model`; returns the sidecar record (also written
    to ENGINE.json). Raises TensorRTUnavailable without TensorRT, RuntimeError when TensorRT fails
    (with TensorRT's own error text), ValueError / FileNotFoundError for bad arguments."""
    o = o or BuildOptions()
    o.validate()
    onnx_path = resolve_model(model)
    _check_widths(_model_info(onnx_path)[0], onnx_path)
    trt = import_tensorrt()
    rtx = is_rtx(trt)
    from .worker import IN_WORKER, build_in_worker

    if os.environ.get(IN_WORKER) != "1":
        return build_in_worker(onnx_path, Path(engine), o)
    config_meta, has_ops = _model_info(onnx_path)
    logger = make_logger(trt, "WARNING" if o.verbose else "ERROR")
    plugins = load_plugins(trt) if has_ops else None  # a plugin-free model records none
    if has_ops and plugins is None:
        raise RuntimeError(f"{onnx_path} has TurboQuant ops but the TensorRT plugin library (libtq_trt_plugins.so) "
                           "was not built: reinstall tq-ort with the TensorRT headers available (docs/tensorrt.md)")
    if o.fp16 and rtx:
        raise ValueError("--fp16: TensorRT-RTX builds strongly typed networks (no FP16 builder flag): the engine "
                         "computes in the model's own dtypes; export the model in float16 instead")
    builder = trt.Builder(logger)
    flags = 0
    if not rtx and not o.fp16 and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    shared = bool(config_meta and config_meta.get("shared_buffer_ok")) and not o.concat
    model_bytes, changes = tensorrt_model(onnx_path, shared_buffer=shared)
    if not parser.parse(model_bytes, str(onnx_path)):
        raise RuntimeError(f"{onnx_path}: TensorRT's ONNX parser failed: {_parser_errors(parser) or logger.last_errors()}")
    inputs = {network.get_input(i).name: tuple(network.get_input(i).shape) for i in range(network.num_inputs)}
    shapes = profile_shapes(inputs, o)
    cfg = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in shapes.items():
        profile.set_shape(name, lo, opt, hi)
    cfg.add_optimization_profile(profile)
    if changes["shared_buffer"]:  # the plugins declare present an alias of past (tq_ort/trt/model.py)
        cfg.set_preview_feature(trt.PreviewFeature.ALIASED_PLUGIN_IO_10_03, True)
    if o.fp16:
        cfg.set_flag(trt.BuilderFlag.FP16)
    if o.compute_capability:
        if not rtx:
            raise ValueError("--compute-capability is a TensorRT-RTX option; this TensorRT builds for the GPU it runs on")
        cc = o.compute_capability.upper()
        choices = [c for c in dir(trt.ComputeCapability) if not c.startswith("_") and c.isupper() and c != "NONE"]
        if cc not in choices:
            raise ValueError(f"--compute-capability {o.compute_capability!r}: expected one of {', '.join(c.lower() for c in choices)}")
        cfg.num_compute_capabilities = 1
        cfg.set_compute_capability(getattr(trt.ComputeCapability, cc), 0)
    progress = _Progress(trt, o.progress)
    cfg.progress_monitor = progress.monitor
    t0 = time.time()
    try:
        serialized = builder.build_serialized_network(network, cfg)
    finally:
        dt = time.time() - t0
        progress.close(f"done in {dt:.1f} s")
    if serialized is None:
        raise RuntimeError(f"{onnx_path}: TensorRT {trt.__version__} could not build the engine: {logger.last_errors()}")
    engine = Path(engine)
    engine.parent.mkdir(parents=True, exist_ok=True)
    engine.write_bytes(bytes(serialized))
    io = {}
    for kind, n, get in (("input", network.num_inputs, network.get_input), ("output", network.num_outputs, network.get_output)):
        for i in range(n):
            t = get(i)
            io[t.name] = {"mode": kind, "shape": list(t.shape), "dtype": str(t.dtype).split(".")[-1].lower()}
    from .. import __version__

    record = {
        "tq_ort_version": __version__,
        "tensorrt": {"module": trt.__name__, "version": trt.__version__},
        "model": {"path": str(onnx_path.resolve()), "fingerprint": model_fingerprint(onnx_path), "turboquant": config_meta},
        "plugins": plugins,
        "options": {k: v for k, v in asdict(o).items() if k not in ("progress", "verbose")},
        "profile": {name: {"min": list(lo), "opt": list(opt), "max": list(hi)} for name, (lo, opt, hi) in shapes.items()},
        "build_seconds": round(dt, 3),
        "engine_bytes": engine.stat().st_size,
        "io": io,
        "int8_rows": changes["int8_rows"],  # uint8 in the ONNX model, int8 in the engine (tq_ort/trt/model.py)
        "shared_buffer": changes["shared_buffer"],  # present aliases past: bind one buffer for both
    }
    write_sidecar(engine, record)
    return record


def _serve(req_path: str, resp_path: str) -> int:
    """The child side of tq_ort.trt.worker.build_in_worker: build, write the record or the error."""
    import json

    from .worker import ERRORS

    req = json.loads(Path(req_path).read_text())
    try:
        out = {"record": build_engine(req["model"], req["engine"], BuildOptions(**req["options"]))}
    except tuple(ERRORS.values()) as e:
        out = {"error": type(e).__name__, "message": str(e)}
    Path(resp_path).write_text(json.dumps(out))
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(_serve(sys.argv[1], sys.argv[2]))
