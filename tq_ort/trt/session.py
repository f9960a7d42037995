"""Greedy (or sampled) generation from a TensorRT engine built by `tq-ort trt-build`, on the GPU.

The compressed cache lives in device buffers (torch CUDA tensors) between steps. The mode is the
engine's (tq-ort trt-build; sidecar key shared_buffer): shared buffer = each present output is an
alias of its past input (IPluginV3OneBuildV2::getAliasedInput), both bound to one buffer of capacity
max_length and only the new rows written; concat = two buffers per cache tensor alternate as past
and present (present = past ++ new rows), still on the device.
"""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np

from ..cache import cache_specs, head_dim_hint
from ..session import DecoderSession
from . import import_tensorrt
from .runtime import file_sha256, load_plugins, make_logger, plugin_library_path
from .sidecar import read_sidecar

# INT8: the cache rows, uint8 in the model and int8 in the engine (tq_ort.trt.build.tensorrt_model_bytes)
_ORT_TYPES = {"FLOAT": "tensor(float)", "HALF": "tensor(float16)", "BF16": "tensor(bfloat16)",
              "UINT8": "tensor(uint8)", "INT8": "tensor(uint8)", "INT32": "tensor(int32)", "INT64": "tensor(int64)"}


class GpuUnavailable(RuntimeError):
    """No CUDA device to run an engine on (the message says what is missing)."""


def cuda_torch():
    """torch with a usable CUDA device, or GpuUnavailable saying why not."""
    try:
        import torch
    except ImportError:
        raise GpuUnavailable("running a TensorRT engine needs PyTorch with CUDA for the device buffers "
                             "(pip install torch with CUDA)") from None
    if not torch.cuda.is_available():
        why = "this PyTorch has no CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
        raise GpuUnavailable(f"running a TensorRT engine needs a CUDA GPU: {why} (torch {torch.__version__}, "
                             "torch.cuda.is_available() is False)")
    return torch


class _EngineInputs:
    """An engine's inputs in the form tq_ort.cache.cache_specs reads from an ORT session."""

    def __init__(self, trt, engine):
        self.items = []
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            if engine.get_tensor_mode(name) != trt.TensorIOMode.INPUT:
                continue
            dt = str(engine.get_tensor_dtype(name)).split(".")[-1]
            shape = [d if d >= 0 else f"dim{k}" for k, d in enumerate(engine.get_tensor_shape(name))]
            self.items.append(SimpleNamespace(name=name, shape=shape, type=_ORT_TYPES.get(dt, dt)))

    def get_inputs(self):
        return self.items


class TrtDecoderSession(DecoderSession):
    """DecoderSession's interface (reset / step / generate / memory_report) over a TensorRT engine."""

    def __init__(self, engine_path: str | Path, *, max_length: int = 512, shared_buffer: bool | None = None):
        self.path = Path(engine_path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such engine")
        self.sidecar = read_sidecar(self.path)
        trt = import_tensorrt()
        if self.sidecar["tensorrt"]["version"] != trt.__version__:
            raise ValueError(f"{self.path}: built with TensorRT {self.sidecar['tensorrt']['version']}, this is "
                             f"{trt.__version__}; rebuild the engine with tq-ort trt-build")
        self.torch = torch = cuda_torch()
        self.trt = trt
        self.logger = make_logger(trt)
        if self.sidecar.get("plugins"):
            load_plugins(trt, engine_plugin_library(self.sidecar["plugins"]))
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise RuntimeError(f"{self.path}: TensorRT {trt.__version__} could not deserialize the engine on "
                               f"{torch.cuda.get_device_name()} (compute capability "
                               f"{'.'.join(map(str, torch.cuda.get_device_capability()))}): {self.logger.last_errors()}")
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise RuntimeError(f"{self.path}: could not create an execution context: {self.logger.last_errors()}")
        self.device = "cuda"
        self.config = self.sidecar["model"].get("turboquant")
        model_dir = Path(self.sidecar["model"]["path"]).parent
        self.specs = cache_specs(_EngineInputs(trt, self.engine), head_dim_hint(model_dir))
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = {n: None for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT}
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        cap = self.sidecar["options"]["max_context"]
        self.max_length = int(max_length)
        if self.max_length > cap:
            raise ValueError(f"max_length={self.max_length} exceeds the engine's max_context={cap} "
                             f"(its optimization profile); rebuild with tq-ort trt-build --max-context {self.max_length}")
        # the engine's cache mode is fixed at build time (tq_ort/trt/model.py): shared = present aliases past
        self.shared = bool(self.sidecar.get("shared_buffer"))
        alias_of = getattr(self.engine, "get_aliased_input_tensor", lambda name: None)
        not_aliased = [s.present for s in self.specs if alias_of(s.present) != s.past]
        if self.shared and not_aliased:
            raise RuntimeError(f"{self.path}: the sidecar says shared buffer but the engine does not alias "
                               f"{not_aliased[:2]} to their past inputs")
        if shared_buffer is not None and bool(shared_buffer) != self.shared:
            how = ("tq-ort trt-build --concat" if self.shared else
                   "tq-ort trt-build without --concat, from a model with shared_buffer_ok")
            raise ValueError(f"{self.path}: the engine was built for {'shared-buffer' if self.shared else 'concat'} "
                             f"cache mode; for the other, rebuild it with {how}")
        self._torch_dtype = {np.dtype(np.uint8): torch.uint8, np.dtype(np.float16): torch.float16,
                             np.dtype(np.float32): torch.float32}
        self._cache = {}
        self.length = 0
        self.batch = 1

    # -- cache ---------------------------------------------------------------------------------
    def _flat(self, spec, batch: int):
        n = int(np.prod(spec.shape(batch, self.max_length)))
        return self.torch.zeros(n, dtype=self._torch_dtype[spec.dtype], device="cuda")

    def reset(self, batch: int = 1) -> None:
        self.batch, self.length = batch, 0
        # shared: one buffer per cache tensor; concat: two that alternate as past / present
        self._cache = {s.past: [self._flat(s, batch)] + ([] if self.shared else [self._flat(s, batch)])
                       for s in self.specs}

    def cache_bytes(self) -> int:
        return sum(b.numel() * b.element_size() for bufs in self._cache.values() for b in bufs)

    # -- running -------------------------------------------------------------------------------
    def _bind(self, name: str, tensor) -> None:
        if not self.context.set_tensor_address(name, tensor.data_ptr()):
            raise RuntimeError(f"{self.path}: set_tensor_address({name!r}) failed: {self.logger.last_errors()}")

    def step(self, ids: np.ndarray, all_logits: bool = False) -> np.ndarray:
        torch = self.torch
        ids = np.asarray(ids, dtype=np.int64)
        if ids.ndim != 2 or ids.shape[0] != self.batch:
            raise ValueError(f"input_ids shape {ids.shape}: expected [{self.batch}, S]")
        B, S = ids.shape
        past_len, total = self.length, self.length + S
        if total > self.max_length:
            raise ValueError(f"sequence of {total} tokens exceeds the cache capacity max_length={self.max_length}")
        feeds = {"input_ids": ids, "attention_mask": np.ones((B, total), np.int64),
                 "position_ids": np.tile(np.arange(past_len, total, dtype=np.int64), (B, 1))}
        keep = []  # device tensors that must live until the step is done
        for name, arr in feeds.items():
            if name in self.inputs:
                t = torch.from_numpy(arr).to("cuda")
                keep.append(t)
                self.context.set_input_shape(name, tuple(arr.shape))
                self._bind(name, t)
        presents = {}
        for s in self.specs:
            bufs = self._cache[s.past]
            p_rows = self.max_length if self.shared or s.ring else past_len
            o_rows = self.max_length if self.shared or s.ring else total
            past = bufs[0][: int(np.prod(s.shape(B, p_rows)))].view(s.shape(B, p_rows))
            present = past if self.shared else bufs[1][: int(np.prod(s.shape(B, o_rows)))].view(s.shape(B, o_rows))
            self.context.set_input_shape(s.past, tuple(past.shape))
            self._bind(s.past, past)
            presents[s.present] = present
        missing = self.context.infer_shapes()
        if missing:
            raise RuntimeError(f"{self.path}: input shapes not set for {missing}")
        outs = {}
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            if name in presents:
                if tuple(presents[name].shape) != shape:
                    raise RuntimeError(f"{self.path}: output {name!r} shape {shape}, expected {tuple(presents[name].shape)}")
                t = presents[name]
            else:
                dt = self.trt.nptype(self.engine.get_tensor_dtype(name))
                t = torch.empty(shape, dtype=self._torch_dtype.get(np.dtype(dt), torch.float32), device="cuda")
            outs[name] = t
            self._bind(name, t)
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f"{self.path}: execute_async_v3 failed: {self.logger.last_errors()}")
        stream.synchronize()
        if not self.shared:
            for s in self.specs:
                self._cache[s.past].reverse()  # this step's present is the next step's past
        self.length = total
        logits = outs["logits"].float().cpu().numpy()
        del keep
        return logits if all_logits else logits[:, -1, :]


def engine_model_dir(engine: str | Path) -> Path:
    """The folder of the model an engine was built from (its tokenizer lives there), from the sidecar."""
    if not Path(engine).is_file():
        raise FileNotFoundError(f"{engine}: no such engine")
    return Path(read_sidecar(engine)["model"]["path"]).parent


def engine_plugin_library(rec: dict) -> str:
    """The plugin library to load for an engine: the recorded one, else the installed one (or
    TQ_TRT_PLUGINS), which must be the same build (sha256) as the one the engine was built with."""
    for cand in (rec["path"], plugin_library_path()):
        if cand and Path(cand).is_file() and file_sha256(cand) == rec["sha256"]:
            return str(cand)
    raise FileNotFoundError(f"TensorRT plugin library with sha256 {rec['sha256'][:16]}... (built into the engine from "
                            f"{rec['path']}) not found: neither that file nor the installed one ({plugin_library_path()}) "
                            "matches; point TQ_TRT_PLUGINS at it or rebuild the engine")
