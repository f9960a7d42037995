"""The PyTriton binding: Triton Inference Server (the tritonserver binary of nvidia-pytriton) with three
Python models whose infer functions run in this process:

- generate: text in, text out (non-decoupled; one Triton instance per slot, so up to --max-batch
  requests are in flight at once and the scheduler batches them; more wait in Triton's queue)
- generate_stream: the same inputs, decoupled: one response per piece of text, then a final one with
  finish_reason and the cache bytes (gRPC streaming, or HTTP POST .../generate_stream as SSE)
- stats: the scheduler's counters and cache bytes in use vs float16, as JSON (PyTriton 0.7 has no
  API for custom Prometheus metrics: Triton's own /metrics has only the standard counters)
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import sys
import sysconfig
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .budget import CacheAccount, format_size
from .engine import SlotPool
from .protocol import input_specs, output_specs, parse, piece, response
from .scheduler import Refused, Scheduler

LOG = logging.getLogger("tq_ort.serve")


@dataclass
class ServeConfig:
    model: Path
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    address: str = "0.0.0.0"
    max_batch: int = 8
    device: str = "cpu"
    cache_budget: int = 2 * 2**30
    max_length: int = 2048
    max_queue: int = 256
    queue_timeout: float = 60.0
    drain_timeout: float = 30.0
    triton_log: Path | None = None
    instances: int = 0  # Triton instances of generate (0: min(max_batch, 8))


def check_port(address: str, port: int, flag: str) -> int:
    """The port to use: a free one for 0; ValueError if `port` is taken."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("" if address == "0.0.0.0" else address, port))
        except OSError as e:
            raise ValueError(f"{flag} {port}: cannot listen on {address}:{port} ({e.strerror}); "
                             "pick another port, or 0 for a free one") from None
        return s.getsockname()[1]


def _python_library_path() -> None:
    """The Python backend stub links libpython3.X.so dynamically; let it find this interpreter's own
    (a pyenv / custom-prefix Python beside an older system libpython otherwise mixes the system's C
    runtime with this interpreter's standard library: '_thread.RLock' object has no attribute ...)."""
    libdir, soname = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("INSTSONAME")
    if libdir and soname and (Path(libdir) / soname).exists():
        old = os.environ.get("LD_LIBRARY_PATH", "")
        if libdir not in old.split(":"):
            os.environ["LD_LIBRARY_PATH"] = f"{libdir}:{old}" if old else libdir


class Server:
    """Model, tokenizer, slot pool, scheduler and the Triton models over them."""

    def __init__(self, cfg: ServeConfig):
        from ..quality.data import folder_tokenizer
        from ..session import DecoderSession

        self.cfg = cfg
        model = Path(cfg.model)
        if not model.exists():
            raise FileNotFoundError(f"{model}: no such model folder or file")
        self.model_dir = model if model.is_dir() else model.parent
        self.sess = DecoderSession(model, device=cfg.device, max_length=cfg.max_length)
        self.tok = folder_tokenizer(self.model_dir)
        self.account = CacheAccount.from_report(self.sess.memory_report(1), cfg.cache_budget)
        if self.account.need(2) > cfg.cache_budget:
            raise ValueError(f"--cache-budget {format_size(cfg.cache_budget)}: smaller than one 2-token sequence "
                             f"({format_size(self.account.need(2))})")
        self.pool = SlotPool(self.sess, cfg.max_batch, cfg.max_length)
        self._tok_lock = threading.Lock()
        eos = self.tok.eos_token_id
        self.eos = frozenset([eos] if isinstance(eos, int) else (eos or []))
        self.scheduler = Scheduler(self.pool, self.account, self._decode, max_queue=cfg.max_queue,
                                   queue_timeout=cfg.queue_timeout)
        self.triton: Any = None

    # tokenizer calls from the Triton handler threads and the scheduler thread, one at a time
    def _encode(self, text: str) -> list[int]:
        with self._tok_lock:
            return list(self.tok(text)["input_ids"])  # as tq-ort generate (special tokens added)

    def _decode(self, ids: list[int]) -> str:
        with self._tok_lock:
            return self.tok.decode(ids, skip_special_tokens=True)

    def _parse(self, request: Any):
        return parse(request, self._encode, self.eos, self.pool.capacity)

    # -- infer functions (PyTriton calls them in its handler threads' event loops) ----------------
    async def generate(self, requests: list) -> list[dict[str, np.ndarray]]:
        out = []
        for r in requests:  # batching is off: one request per call
            try:
                fut = self.scheduler.submit(self._parse(r))
            except ValueError as e:  # Refused is a RuntimeError: both end as Triton's error to the client
                LOG.info("request refused: %s", e)
                raise
            except Refused as e:
                LOG.info("request refused (%s): %s", e.reason, e)
                raise
            out.append(response(await asyncio.wrap_future(fut)))
        return out

    async def generate_stream(self, requests: list):
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()
        req = self._parse(requests[0])
        req.on_text = lambda text: loop.call_soon_threadsafe(q.put_nowait, text)
        fut = self.scheduler.submit(req)
        fut.add_done_callback(lambda _: loop.call_soon_threadsafe(q.put_nowait, None))
        while (text := await q.get()) is not None:
            yield [piece(text)]
        yield [response(fut.result(), text="")]

    async def stats(self, requests: list) -> list[dict[str, np.ndarray]]:
        body = json.dumps(self.scheduler.stats()).encode()
        return [{"json": np.array([body], dtype=object)} for _ in requests]

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        from pytriton.model_config import ModelConfig, Tensor
        from pytriton.triton import Triton, TritonConfig

        _python_library_path()
        c = self.cfg
        tc = TritonConfig(http_address=c.address, http_port=c.http_port, grpc_address=c.address,
                          grpc_port=c.grpc_port, metrics_port=c.metrics_port, allow_metrics=True,
                          allow_gpu_metrics=False, exit_timeout_secs=int(c.drain_timeout) + 5,
                          log_file=str(c.triton_log) if c.triton_log else None, log_verbose=0)
        ins = [Tensor(name=n, dtype=d, shape=s, optional=o) for n, d, s, o in input_specs()]
        outs = [Tensor(name=n, dtype=d, shape=s) for n, d, s in output_specs()]
        self.scheduler.start()
        self.triton = Triton(config=tc)
        self.triton.__enter__()
        try:
            # an instance holds one request in flight (non-decoupled execute blocks), so instances = requests
            # the scheduler sees at once; PyTriton keys instances by function: each gets its own
            n = c.instances or min(c.max_batch, 8)  # PyTriton gives each instance 1 s for its start-up
            self.triton.bind("generate", [_coro(self.generate) for _ in range(n)], inputs=ins,  # handshake
                             outputs=outs, config=ModelConfig(batching=False))
            self.triton.bind("generate_stream", _agen(self.generate_stream), inputs=ins, outputs=outs,
                             config=ModelConfig(batching=False, decoupled=True))
            self.triton.bind("stats", _coro(self.stats), inputs=[Tensor(name="detail", dtype=bytes, shape=(1,),
                                                                        optional=True)],
                             outputs=[Tensor(name="json", dtype=bytes, shape=(1,))], config=ModelConfig(batching=False))
            self.triton.run()
        except BaseException:
            self.stop(0)
            raise

    def stop(self, drain_timeout: float) -> bool:
        finished = self.scheduler.drain(drain_timeout)
        if self.triton is not None:
            self.triton.stop()
            self.triton = None
        return finished

    def ready_line(self) -> str:
        c, a = self.cfg, self.account
        return (f"tq-ort serve: ready: models generate, generate_stream, stats; HTTP {c.address}:{c.http_port}, "
                f"gRPC {c.address}:{c.grpc_port}, metrics http://{c.address}:{c.metrics_port}/metrics; "
                f"{c.max_batch} slots x {c.max_length} tokens ({c.device}, "
                f"{'shared buffer' if self.pool.shared else 'concat'}); cache budget {format_size(a.budget)} = "
                f"{a.max_sequences(c.max_length)} sequences of {c.max_length} tokens ({a.bytes_per_token} vs "
                f"{a.fp16_bytes_per_token} bytes/token in float16)")


def _coro(fn):
    async def infer(requests):
        return await fn(requests)
    return infer


def _agen(fn):
    async def infer(requests):
        async for r in fn(requests):
            yield r
    return infer


def serve(cfg: ServeConfig) -> int:
    """Run until SIGTERM / SIGINT, then drain: exit 0 when Triton stopped cleanly."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    for name in ("pytriton", "tritonclient"):  # PyTriton logs every client error with a traceback at WARNING;
        logging.getLogger(name).setLevel(logging.ERROR)  # the scheduler logs one line per request instead
    cfg.http_port = check_port(cfg.address, cfg.http_port, "--port")
    cfg.grpc_port = check_port(cfg.address, cfg.grpc_port, "--grpc-port")
    cfg.metrics_port = check_port(cfg.address, cfg.metrics_port, "--metrics-port")
    if len({cfg.http_port, cfg.grpc_port, cfg.metrics_port}) < 3:
        raise ValueError(f"--port, --grpc-port and --metrics-port must differ ({cfg.http_port}, {cfg.grpc_port}, "
                         f"{cfg.metrics_port})")
    t0 = time.time()
    server = Server(cfg)
    stop = threading.Event()
    got: list[int] = []

    def on_signal(signum, _frame):
        got.append(signum)
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            server.start()
        except Exception as e:  # noqa: BLE001 - PyTriton / tritonserver start failures
            raise RuntimeError(f"Triton Inference Server did not start: {type(e).__name__}: {e}") from None
        print(f"{server.ready_line()} (started in {time.time() - t0:.1f}s)", flush=True)
        while not stop.wait(0.5):
            if not server.triton.is_alive():
                print("tq-ort serve: error: Triton Inference Server exited", file=sys.stderr, flush=True)
                server.stop(0)
                return 1
        name = signal.Signals(got[0]).name if got else "signal"
        print(f"tq-ort serve: {name}: draining (up to {cfg.drain_timeout:g}s for in-flight requests)", flush=True)
        finished = server.stop(cfg.drain_timeout)
        how = "all in-flight requests finished" if finished else "in-flight requests failed at the drain timeout"
        print(f"tq-ort serve: stopped ({how}); {server.scheduler.counts['completed']} requests served", flush=True)
        return 0
    finally:
        for s, h in old.items():
            signal.signal(s, h)
