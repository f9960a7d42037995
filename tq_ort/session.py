"""A lean generation session over onnxruntime for rewritten (or original) decoder ONNX models.

Prefill and decode with IOBinding. The compressed cache is allocated once from the model's
metadata; on the decode path (shared buffer) past and present are the same OrtValue of capacity
max_length, so each step writes only the new rows. Models whose graph still reads the past length
(shared_buffer_ok false in the metadata) and original float models run in concat mode.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import onnxruntime as ort

from graph_passes import model_config

from .cache import CacheSpec, cache_specs, describe, head_dim_hint


@dataclass
class Sampling:
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0


def sample(logits: np.ndarray, s: Sampling, rng: np.random.Generator) -> int:
    if s.temperature <= 0:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / s.temperature
    order = np.argsort(-z)
    if s.top_k > 0:
        order = order[: s.top_k]
    p = np.exp(z[order] - z[order[0]])
    p /= p.sum()
    if s.top_p < 1.0:
        keep = np.searchsorted(np.cumsum(p), s.top_p) + 1
        order, p = order[:keep], p[:keep] / p[:keep].sum()
    return int(rng.choice(order, p=p))


class DecoderSession:
    """Runs a decoder ONNX model step by step. `device` is "cpu" or "cuda"."""

    def __init__(self, model_path: str | Path, *, device: str = "cpu", max_length: int = 512,
                 shared_buffer: bool | None = None, session_options: ort.SessionOptions | None = None):
        from . import session_options as tq_options

        self.path = Path(model_path)
        if self.path.is_dir():
            self.path = self.path / "model.onnx"
        if not self.path.exists():
            raise FileNotFoundError(f"{self.path}: no such model")
        # the header first (no weights): a truncated file, or a row layout this build does not read,
        # fails here with the file named, before onnxruntime sees it
        self.config = model_config(self.path)
        # "edge" (standard ops only) or "ort" (custom ops; also for original and pre-target models)
        self.target = str(self.config.get("target", "ort")) if self.config else "ort"
        so = session_options or ort.SessionOptions()
        if self.target != "edge":  # edge models are standard ONNX: the custom-op library is not loaded
            so = tq_options(so)
        if device == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise RuntimeError("device 'cuda': this onnxruntime has no CUDAExecutionProvider "
                                   f"(available: {ort.get_available_providers()}); install onnxruntime-gpu")
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        elif device == "cpu":
            providers = ["CPUExecutionProvider"]
        else:
            raise ValueError(f"device {device!r}: expected 'cpu' or 'cuda'")
        self.device = device
        try:
            self.sess = ort.InferenceSession(str(self.path), so, providers=providers)
        except Exception as e:  # onnxruntime's own exception types derive from Exception only
            raise RuntimeError(f"{self.path}: onnxruntime could not load the model ({type(e).__name__}: {e})") from None
        self.specs: list[CacheSpec] = cache_specs(self.sess, head_dim_hint(self.path.parent))
        self.inputs = {i.name: i for i in self.sess.get_inputs()}
        self.max_length = int(max_length)
        can_share = bool(self.config and self.config.get("shared_buffer_ok"))
        if shared_buffer and not can_share:
            raise ValueError(f"{self.path}: shared-buffer decoding needs a rewritten model whose graph does "
                             "not read the past length (metadata shared_buffer_ok); use concat mode")
        self.shared = can_share if shared_buffer is None else bool(shared_buffer)
        self.float_dtype = np.float16 if self.inputs["past_key_values.0.key"].type == "tensor(float16)" else np.float32
        self._cache: dict[str, ort.OrtValue] = {}
        self.length = 0

    def fork(self) -> DecoderSession:
        """A new generation state (its own cache and length) over this one's loaded InferenceSession:
        one model in memory, one fork per thread. onnxruntime runs a session from several threads at
        once; a DecoderSession's cache is its own and must not be stepped from two threads."""
        other = copy.copy(self)
        other._cache = {}
        other.length = 0
        return other

    # -- cache ---------------------------------------------------------------------------------
    def _ortvalue(self, arr_or_shape, dtype=None) -> ort.OrtValue:
        dev = "cuda" if self.device == "cuda" else "cpu"
        if isinstance(arr_or_shape, np.ndarray):
            return ort.OrtValue.ortvalue_from_numpy(arr_or_shape, dev, 0)
        return ort.OrtValue.ortvalue_from_shape_and_type(arr_or_shape, dtype, dev, 0)

    def reset(self, batch: int = 1) -> None:
        self.batch = batch
        self.length = 0
        cap = self.max_length if self.shared else 0
        self._cache = {s.past: self._ortvalue(np.zeros(s.shape(batch, cap), dtype=s.dtype)) for s in self.specs}

    def cache_bytes(self) -> int:
        """Bytes the cache occupies now (shared buffer: the whole capacity)."""
        return sum(int(np.prod(v.shape())) * s.dtype.itemsize for s, v in
                   ((s, self._cache[s.past]) for s in self.specs))

    def cache_arrays(self) -> dict[str, np.ndarray]:
        """The cache as it stands (past_key_values.* names -> host copies)."""
        return {name: v.numpy() for name, v in self._cache.items()}

    def memory_report(self, context: int | None = None) -> dict:
        return describe(self.config, self.specs, context or self.max_length, getattr(self, "batch", 1))

    # -- running -------------------------------------------------------------------------------
    def step(self, ids: np.ndarray, all_logits: bool = False) -> np.ndarray:
        """Feed ids [B, S]; returns logits of the last position [B, vocab], or of every fed
        position [B, S, vocab] with all_logits=True (perplexity evaluation)."""
        ids = np.asarray(ids, dtype=np.int64)
        if ids.ndim != 2 or ids.shape[0] != self.batch:
            raise ValueError(f"input_ids shape {ids.shape}: expected [{self.batch}, S]")
        B, S = ids.shape
        total = self.length + S
        if total > self.max_length:
            raise ValueError(f"sequence of {total} tokens exceeds the cache capacity max_length={self.max_length}")
        io = self.sess.io_binding()
        io.bind_cpu_input("input_ids", ids)
        if "attention_mask" in self.inputs:
            io.bind_cpu_input("attention_mask", np.ones((B, total), dtype=np.int64))
        if "position_ids" in self.inputs:
            io.bind_cpu_input("position_ids", np.tile(np.arange(self.length, total, dtype=np.int64), (B, 1)))
        for s in self.specs:
            past = self._cache[s.past]
            io.bind_ortvalue_input(s.past, past)
            if self.shared:
                io.bind_ortvalue_output(s.present, past)
            else:
                io.bind_output(s.present, "cuda" if self.device == "cuda" else "cpu")
        io.bind_output("logits", "cpu")
        self.sess.run_with_iobinding(io)
        # io.get_outputs() is in binding order (present.* first, logits last), not the graph's order
        bound = [s.present for s in self.specs] + ["logits"]
        outs = dict(zip(bound, io.get_outputs()))
        if not self.shared:
            for s in self.specs:
                self._cache[s.past] = outs[s.present]
        self.length = total
        logits = outs["logits"].numpy()
        return logits if all_logits else logits[:, -1, :]

    def generate(self, prompt_ids: list[int], max_new_tokens: int, *, sampling: Sampling | None = None,
                 eos_token_id: int | list[int] | None = None,
                 on_token: Callable[[int], None] | None = None) -> list[int]:
        """Greedy or sampled generation for one prompt; returns the new token ids."""
        return list(self.iter_generate(prompt_ids, max_new_tokens, sampling=sampling, eos_token_id=eos_token_id,
                                       on_token=on_token))

    def iter_generate(self, prompt_ids: list[int], max_new_tokens: int, *, sampling: Sampling | None = None,
                      eos_token_id: int | list[int] | None = None,
                      on_token: Callable[[int], None] | None = None) -> Iterator[int]:
        if not prompt_ids:
            raise ValueError("prompt: expected at least one token")
        if len(prompt_ids) + max_new_tokens > self.max_length:
            raise ValueError(f"prompt of {len(prompt_ids)} tokens + {max_new_tokens} new tokens exceeds the cache "
                             f"capacity max_length={self.max_length}")
        s = sampling or Sampling()
        rng = np.random.default_rng(s.seed)
        eos = set([eos_token_id] if isinstance(eos_token_id, int) else (eos_token_id or []))
        self.reset(1)
        logits = self.step(np.asarray([prompt_ids]))
        for _ in range(max_new_tokens):
            tok = sample(logits[0], s, rng)
            if on_token:
                on_token(tok)
            yield tok
            if tok in eos:
                return
            logits = self.step(np.asarray([[tok]]))
