"""`tq-ort serve`: the compressed-cache DecoderSession behind Triton Inference Server (through PyTriton).

- budget.py: size strings ("2GiB") and the cache-memory account that admission checks
- engine.py: a fixed pool of B cache slots over one loaded model; prefill into a slot, one decode step
  for every active slot (sequences of different lengths share the step)
- scheduler.py: the continuous-batching loop (queue, admission, decode steps, stop strings, drain)
- protocol.py: Triton request -> validated generation request, and the response tensors
- triton_app.py: the PyTriton binding (models generate, generate_stream, stats) and the server lifecycle

docs/serving.md describes the design and what it measured.
"""
from __future__ import annotations

from .budget import CacheAccount, parse_size
from .scheduler import GenRequest, Refused, Scheduler

__all__ = ["CacheAccount", "GenRequest", "Refused", "Scheduler", "parse_size"]
