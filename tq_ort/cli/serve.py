"""`tq-ort serve`: a rewritten model behind Triton Inference Server (PyTriton), batched decoding,
admission against a cache-memory budget. The server itself: tq_ort/serve/, docs/serving.md."""
from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    s = sub.add_parser("serve", help="serve a model with Triton Inference Server (PyTriton)",
                       description="Serve MODEL_DIR (a rewritten model folder with its tokenizer, or an original "
                       "float export) on Triton Inference Server: models generate, generate_stream (decoupled) and "
                       "stats; Triton's health, metadata and Prometheus endpoints. Requests in flight are decoded "
                       "together (continuous batching over --max-batch cache slots). Needs the serve extra: "
                       "pip install 'tq-ort[serve]'.")
    s.add_argument("model", metavar="MODEL_DIR", help="model folder (model.onnx + tokenizer files) or .onnx file")
    s.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000; 0 = a free one)")
    s.add_argument("--grpc-port", type=int, default=8001, help="gRPC port (default 8001; 0 = a free one)")
    s.add_argument("--metrics-port", type=int, default=8002, help="Prometheus metrics port (default 8002; 0 = free)")
    s.add_argument("--address", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    s.add_argument("--max-batch", type=int, default=8, help="cache slots = sequences decoded together (default 8)")
    s.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="execution provider (default cpu)")
    s.add_argument("--cache-budget", default="2GiB", help="compressed cache memory that admitted requests may "
                   "reserve, e.g. 512MiB, 2GiB, 2GB (default 2GiB)")
    s.add_argument("--max-length", type=int, default=2048, help="tokens per slot: prompt + new (default 2048)")
    s.add_argument("--max-queue", type=int, default=256, help="requests waiting for memory before refusals")
    s.add_argument("--queue-timeout", type=float, default=60.0, help="seconds a request may wait (default 60)")
    s.add_argument("--drain-timeout", type=float, default=30.0, help="on SIGTERM, seconds in-flight requests "
                   "may take to finish before they are failed (default 30)")
    s.add_argument("--instances", type=int, default=0, help="Triton instances of the generate model = requests "
                   "in flight at once (default min(--max-batch, 8): PyTriton 0.7 allows each instance 1 s to start, "
                   "which many instances on few cores miss); generate_stream has no such limit")
    s.add_argument("--triton-log", help="write tritonserver's own log to this file (default: stderr)")
    s.set_defaults(fn=run)
    return s


def run(a: argparse.Namespace) -> int:
    from ..serve.budget import parse_size

    budget = parse_size(a.cache_budget, "--cache-budget")
    model = Path(a.model)
    if not model.exists():
        raise FileNotFoundError(f"{model}: no such model folder or file")
    for flag, v, lo in (("--max-batch", a.max_batch, 1), ("--max-length", a.max_length, 2), ("--max-queue", a.max_queue, 0)):
        if v < lo:
            raise ValueError(f"{flag} {v}: expected at least {lo}")
    for flag, v in (("--port", a.port), ("--grpc-port", a.grpc_port), ("--metrics-port", a.metrics_port)):
        if not 0 <= v <= 65535:
            raise ValueError(f"{flag} {v}: expected 0 to 65535")
    try:
        import pytriton  # noqa: F401
    except ImportError:
        raise RuntimeError("tq-ort serve needs PyTriton: pip install 'tq-ort[serve]' (nvidia-pytriton==0.7.0, "
                           "tritonclient[http,grpc]==2.73.*)") from None
    from ..serve.triton_app import ServeConfig, serve

    return serve(ServeConfig(model, a.port, a.grpc_port, a.metrics_port, a.address, a.max_batch, a.device, budget,
                             a.max_length, a.max_queue, a.queue_timeout, a.drain_timeout,
                             Path(a.triton_log) if a.triton_log else None, a.instances))
