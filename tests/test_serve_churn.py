"""`tq-ort serve` under churn: 1,000 requests from 8 client threads, chosen at random from a fixed seed:
normal generate calls over HTTP and gRPC (greedy, checked against a direct DecoderSession run; sampled;
with stop strings), gRPC streams read to the end, streams the client abandons mid-stream (gRPC stream
cancelled / its channel closed, an HTTP server-sent-events stream whose socket is closed), HTTP calls
whose socket is closed before the answer, client timeouts (gRPC deadlines, HTTP read timeouts), cancelled
async gRPC calls, malformed requests (Triton's own validation and tq-ort's), and budget / length
refusals. Afterwards the server must be back at its idle cache memory (nothing active, queued or
reserved; the slot pool's resident pages back to the idle value), every instance must still answer, and
the server must not have failed a request that had done nothing wrong.

Own server (tiny rewritten llama, CPU), so a leak or a crash here does not hide in test_serve.py's state.
"""
from __future__ import annotations

import http.client
import json
import random
import socket
import struct
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import numpy as np
import pytest

from test_serve import InferenceServerException, Served, grpc_inputs, start_server, tg, th
from tiny_exports import library_has_attention, rewritten_folder

pytestmark = pytest.mark.skipif(not library_has_attention(), reason="custom-op library without TurboQuantAttention")

SEED = 20240622
N_REQUESTS = 1000
THREADS = 8
SLOTS = 4
MAX_LENGTH = 160
BUDGET = 40_000  # bytes: ~138 tokens of the tiny llama (288 B/token)
WORDS = ["a", "b", "cat", "dog", "sat", "on", "the", "mat", "Paris", "is", "x", "y", "z", "one", "two"]
N_PROMPTS = 12
CHURN_DEADLINE_S = 120  # the whole churn (it takes ~5 s here); a broken server fails the test, not hang it
MAX_PROBLEMS = 20  # stop sending once this many requests went wrong
MAX_NEW = 4  # tokens of a normal request (1..MAX_NEW); streams that are abandoned get more
# (kind, weight): what a request does; see Churn.run_one
KINDS = [("http", 16), ("grpc", 12), ("http_sampled", 4), ("http_stop", 3), ("grpc_stream", 8),
         ("grpc_stream_cancel", 6), ("grpc_stream_close", 4), ("sse_abandon", 5), ("http_close", 4),
         ("http_partial_body", 2), ("grpc_timeout", 7), ("grpc_cancel", 5), ("http_timeout", 4),
         ("malformed", 14), ("budget", 4), ("too_long", 2)]


def f32(name: str, v: float) -> tuple:
    return name, np.array([v], dtype=np.float32), "FP32"


# (expected fragment of the error, extra/changed inputs): each is wrong in one way
MALFORMED: list[tuple[str, dict[str, Any]]] = [
    ("prompt", {"drop": "prompt"}),
    ("max_new_tokens", {"drop": "max_new_tokens"}),
    ("data-type is 'FP32'", {"n_dtype": "FP32"}),
    ("not valid UTF-8", {"prompt": b"caf\xe9 \xff"}),
    ("not valid UTF-8", {"prompt": b"\xc3"}),
    ("prompt: empty", {"prompt": b""}),
    ("max_new_tokens=0", {"n": 0}),
    ("max_new_tokens=-5", {"n": -5}),
    ("max_new_tokens=1000000", {"n": 10**6}),
    ("temperature=nan", {"more": [f32("temperature", float("nan"))]}),
    ("temperature=-1.0", {"more": [f32("temperature", -1.0)]}),
    ("top_p=0.0", {"more": [f32("top_p", 0.0)]}),
    ("top_p=2.0", {"more": [f32("top_p", 2.0)]}),
    ("top_k=-1", {"more": [("top_k", np.array([-1], dtype=np.int32), "INT32")]}),
    ("stop: 17 strings", {"more": [("stop", np.array([b"s"] * 17, dtype=object), "BYTES")]}),
    ("empty stop string", {"more": [("stop", np.array([b""], dtype=object), "BYTES")]}),
    ("stop[0]: not valid UTF-8", {"more": [("stop", np.array([b"\xff"], dtype=object), "BYTES")]}),
    ("unexpected inference input", {"more": [("bogus", np.array([1], dtype=np.int32), "INT32")]}),
    ("unexpected shape", {"more": [("seed", np.array([1, 2], dtype=np.int64), "INT64")]}),
    ("unknown model", {"model": "no_such_model"}),
    ("raw", {"raw": b'{"inputs": [{"name": "prompt", "shape": [1], "datatype": "BYTES", "data": ['}),  # cut JSON
    ("raw", {"raw": b'not json at all'}),
    ("stream", {"stream_prompt": b"\xff\xfe"}),  # a malformed request on the decoupled model
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = rewritten_folder(tmp_path_factory.mktemp("serve-churn"), "llama")
    s = start_server(folder, "--max-batch", str(SLOTS), "--max-length", str(MAX_LENGTH), "--cache-budget", str(BUDGET),
                     "--max-queue", "64", "--queue-timeout", "10", "--drain-timeout", "10")
    yield s
    s.close()


@pytest.fixture(scope="module")
def greedy(server) -> Callable[[str], list[int]]:
    """Greedy token ids (MAX_NEW of them, or up to EOS) of a direct DecoderSession run, per prompt."""
    from tq_ort.quality.data import load_tokenizer
    from tq_ort.session import DecoderSession

    tok = load_tokenizer(server.folder)
    sess = DecoderSession(server.folder, max_length=64)
    cache: dict[str, list[int]] = {}

    def ref(prompt: str) -> list[int]:
        if prompt not in cache:
            cache[prompt] = sess.generate(tok(prompt)["input_ids"], MAX_NEW + 12, eos_token_id=tok.eos_token_id)
        return cache[prompt]
    return ref


def _inputs(mod: Any, prompt: bytes, n: int, n_dtype: str = "INT32", more: tuple = (), drop: str = "") -> list:
    n_arr = np.array([n], dtype=np.float32 if n_dtype == "FP32" else np.int32)
    ins = []
    for name, arr, dt in (("prompt", np.array([prompt], dtype=object), "BYTES"), ("max_new_tokens", n_arr, n_dtype),
                          *more):
        if name != drop:
            i = mod.InferInput(name, list(arr.shape), dt)
            i.set_data_from_numpy(arr)
            ins.append(i)
    return ins


def _raw_http(port: int, path: str, body: bytes, *, read: int = 0, declared: int | None = None,
              reset: bool = False) -> bytes:
    """POST body to path and close the socket after reading `read` bytes of the answer (0: at once);
    `declared`: a Content-Length other than the body's (a body cut short); reset: close with an RST."""
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    try:
        head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body) if declared is None else declared}\r\n\r\n").encode()
        s.sendall(head + body)
        got = b""
        while len(got) < read:
            chunk = s.recv(4096)
            if not chunk:
                break
            got += chunk
        return got
    finally:
        if reset:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()


class Churn:
    """Runs one planned request; records what happened. Client objects are per thread (connections reused)."""

    def __init__(self, server: Served, greedy: Callable[[str], list[int]]):
        self.server, self.greedy = server, greedy
        self.local = threading.local()
        self.lock = threading.Lock()
        self.outcomes: Counter = Counter()
        self.problems: list[str] = []  # requests that got the wrong answer
        self.deadline = time.time() + CHURN_DEADLINE_S

    def http(self) -> th.InferenceServerClient:
        if not hasattr(self.local, "http"):
            self.local.http = self.server.http_client(network_timeout=30)
        return self.local.http

    def grpc(self) -> tg.InferenceServerClient:
        if not hasattr(self.local, "grpc"):
            self.local.grpc = self.server.grpc_client()
        return self.local.grpc

    def note(self, what: str, problem: str = "") -> None:
        with self.lock:
            self.outcomes[what] += 1
            if problem:
                self.problems.append(problem)

    def check_greedy(self, i: int, kind: str, prompt: str, n: int, ids: list[int], reason: bytes) -> None:
        want = self.greedy(prompt)[:n]
        if ids != want or reason not in (b"length", b"eos"):
            self.note(kind, f"#{i} {kind} {prompt!r} n={n}: got {ids} ({reason!r}), want {want}")
        else:
            self.note(kind)

    def expect_error(self, i: int, kind: str, fn: Callable[[], Any], fragment: str) -> None:
        try:
            fn()
        except InferenceServerException as e:
            if fragment in str(e):
                self.note(kind)
            else:
                self.note(kind, f"#{i} {kind}: expected an error with {fragment!r}, got {str(e)[-300:]!r}")
        else:
            self.note(kind, f"#{i} {kind}: expected an error with {fragment!r}, got an answer")

    def stream(self, prompt: bytes, n: int, *, stop_after: int = 0, close: bool = False) -> list:
        """A gRPC stream on generate_stream: every response (or error) until the final one, or, with
        stop_after, the stream abandoned after that many responses (cancelled, or its channel closed)."""
        got: list = []
        done = threading.Event()

        def cb(result: Any, error: Any) -> None:
            got.append(error if error else result)
            if error or result.as_numpy("finish_reason")[0] or (stop_after and len(got) >= stop_after):
                done.set()

        c = self.server.grpc_client()
        try:
            c.start_stream(callback=cb)
            c.async_stream_infer("generate_stream", grpc_inputs(prompt, n))
            if not done.wait(30):
                raise TimeoutError(f"stream of {prompt!r}: no final response in 30 s ({len(got)} so far)")
            if close:
                c.close()  # the channel goes away under the stream
            else:
                c.stop_stream(cancel_requests=bool(stop_after))
        finally:
            c.close()
        return got

    def run_one(self, i: int, job: dict) -> None:
        kind, prompt, n, rng = job["kind"], job["prompt"], job["n"], random.Random(job["seed"])
        p = prompt.encode()
        if len(self.problems) >= MAX_PROBLEMS or time.time() > self.deadline:
            self.note("not sent")
            return
        try:
            if kind == "http":
                r = self.http().infer("generate", _inputs(th, p, n))
                self.check_greedy(i, kind, prompt, n, r.as_numpy("token_ids").tolist(), r.as_numpy("finish_reason")[0])
            elif kind == "grpc":
                r = self.grpc().infer("generate", _inputs(tg, p, n), client_timeout=30)
                self.check_greedy(i, kind, prompt, n, r.as_numpy("token_ids").tolist(), r.as_numpy("finish_reason")[0])
            elif kind == "http_sampled":
                more = [f32("temperature", 0.8), f32("top_p", 0.9), ("seed", np.array([rng.randint(0, 99)],
                                                                                      dtype=np.int64), "INT64")]
                r = self.http().infer("generate", _inputs(th, p, n, more=more))
                ok = 1 <= len(r.as_numpy("token_ids")) <= n
                self.note(kind, "" if ok else f"#{i} {kind}: {len(r.as_numpy('token_ids'))} tokens for n={n}")
            elif kind == "http_stop":
                stops = np.array([rng.choice(WORDS).encode(), b" t"], dtype=object)
                r = self.http().infer("generate", _inputs(th, p, n, more=[("stop", stops, "BYTES")]))
                ok = r.as_numpy("finish_reason")[0] in (b"stop", b"length", b"eos")
                self.note(kind, "" if ok else f"#{i} {kind}: finish_reason {r.as_numpy('finish_reason')[0]!r}")
            elif kind == "grpc_stream":
                got = self.stream(p, n)
                errors = [g for g in got if isinstance(g, Exception)]
                if errors:
                    self.note(kind, f"#{i} {kind} {prompt!r}: {errors[0]}")
                else:
                    self.check_greedy(i, kind, prompt, n, got[-1].as_numpy("token_ids").tolist(),
                                      got[-1].as_numpy("finish_reason")[0])
            elif kind in ("grpc_stream_cancel", "grpc_stream_close"):
                self.stream(p, n, stop_after=rng.randint(1, 2), close=kind == "grpc_stream_close")
                self.note(kind)
            elif kind == "sse_abandon":  # an HTTP client that reads the first event, then hangs up
                body = json.dumps({"prompt": prompt, "max_new_tokens": n}).encode()
                _raw_http(self.server.http, "/v2/models/generate_stream/generate_stream", body,
                          read=rng.randint(1, 200), reset=rng.random() < 0.5)
                self.note(kind)
            elif kind == "http_close":  # a KServe JSON request whose client leaves before the answer
                body = json.dumps({"inputs": [
                    {"name": "prompt", "shape": [1], "datatype": "BYTES", "data": [prompt]},
                    {"name": "max_new_tokens", "shape": [1], "datatype": "INT32", "data": [n]}]}).encode()
                _raw_http(self.server.http, "/v2/models/generate/infer", body, read=0, reset=rng.random() < 0.5)
                self.note(kind)
            elif kind == "http_partial_body":  # Content-Length promises more than is sent, then the socket closes
                body = json.dumps({"inputs": [{"name": "prompt", "shape": [1], "datatype": "BYTES",
                                               "data": [prompt]}]}).encode()
                _raw_http(self.server.http, "/v2/models/generate/infer", body, declared=len(body) + 100)
                self.note(kind)
            elif kind == "grpc_timeout":
                try:
                    self.grpc().infer("generate", _inputs(tg, p, n), client_timeout=rng.choice([0.001, 0.01, 0.05]))
                    self.note(kind + " (answered in time)")
                except InferenceServerException as e:
                    self.note(kind, "" if "Deadline" in str(e) else f"#{i} {kind}: {str(e)[-300:]}")
            elif kind == "grpc_cancel":
                fut = self.grpc().async_infer("generate", _inputs(tg, p, n), callback=lambda result, error: None)
                time.sleep(rng.random() * 0.03)
                fut.cancel()
                self.note(kind)
            elif kind == "http_timeout":
                c = self.server.http_client(connection_timeout=5, network_timeout=rng.choice([0.001, 0.01]))
                try:
                    c.infer("generate", _inputs(th, p, n))
                    self.note(kind + " (answered in time)")
                except Exception:  # noqa: BLE001 - the timeout is the point (gevent's, socket's)
                    self.note(kind)
                finally:
                    c.close()
            elif kind == "malformed":
                self.malformed(i, job["bad"], p, n, rng)
            elif kind == "budget":  # fits max_length, not the whole budget: refused at once
                big = _inputs(th, b"a b c d", MAX_LENGTH - 10)
                self.expect_error(i, kind, lambda: self.http().infer("generate", big), "cache budget exceeded")
            elif kind == "too_long":
                long = _inputs(tg, b"a b c d", MAX_LENGTH - 1)
                self.expect_error(i, kind, lambda: self.grpc().infer("generate", long),
                                  f"exceeds the server's max_length={MAX_LENGTH}")
        except Exception as e:  # noqa: BLE001 - anything unexpected is a finding
            self.note(kind, f"#{i} {kind} {prompt!r} n={n}: {type(e).__name__}: {str(e)[-400:]}")

    def malformed(self, i: int, which: int, p: bytes, n: int, rng: random.Random) -> None:
        fragment, bad = MALFORMED[which]
        kind = f"malformed[{which}]"
        if "raw" in bad:  # Triton answers a body it cannot parse with 500 and its parser's message
            c = http.client.HTTPConnection("127.0.0.1", self.server.http, timeout=30)
            try:
                c.request("POST", "/v2/models/generate/infer", bad["raw"], {"Content-Type": "application/json"})
                r = c.getresponse()
                body = r.read()
            finally:
                c.close()
            ok = r.status >= 400 and b"failed to parse the request JSON" in body
            self.note(kind, "" if ok else f"#{i} {kind}: {r.status} {body[:300]!r}")
            return
        if "stream_prompt" in bad:
            got = self.stream(bad["stream_prompt"], n)
            ok = len(got) == 1 and isinstance(got[0], Exception) and "not valid UTF-8" in str(got[0])
            self.note(kind, "" if ok else f"#{i} {kind}: {got!r}")
            return
        mod, client = (th, self.http()) if rng.random() < 0.5 else (tg, self.grpc())
        ins = _inputs(mod, bad.get("prompt", p), bad.get("n", n), bad.get("n_dtype", "INT32"), bad.get("more", ()),
                      bad.get("drop", ""))
        self.expect_error(i, kind, lambda: client.infer(bad.get("model", "generate"), ins), fragment)


def _plan(rng: random.Random) -> list[dict]:
    prompts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 10))) for _ in range(N_PROMPTS)]
    kinds, weights = zip(*KINDS)
    plan = []
    for _ in range(N_REQUESTS):
        kind = rng.choices(kinds, weights)[0]
        n = rng.randint(5, 12) if kind in ("grpc_stream_cancel", "grpc_stream_close", "sse_abandon") else \
            rng.randint(1, MAX_NEW)
        plan.append({"kind": kind, "prompt": rng.choice(prompts), "n": n, "seed": rng.randrange(2**32),
                     "bad": rng.randrange(len(MALFORMED))})
    return plan


def _wait_idle(server: Served, idle: dict, deadline_s: float, note: str = "") -> dict:
    keys = ("active", "queued", "cache_reserved_bytes", "cache_used_bytes", "cache_used_fp16_bytes",
            "cache_resident_bytes")
    deadline = time.time() + deadline_s
    while True:
        st = server.stats()
        if all(st[k] == idle[k] for k in keys) or time.time() > deadline:
            break
        time.sleep(0.25)
    diff = {k: (st[k], idle[k]) for k in keys if st[k] != idle[k]}
    assert not diff, f"{deadline_s:g}s after the churn the server is not back to idle ((now, idle) per key): " \
                     f"{diff}{note}"
    return st


def test_1000_requests_with_cancellations_return_to_idle(server, greedy):
    for p in {job["prompt"] for job in _plan(random.Random(SEED))}:
        greedy(p)  # references first: the churn's clock measures the server
    r = server.http_client().infer("generate", _inputs(th, b"a", 2))  # warm: tokenizer, first run
    assert r.as_numpy("token_ids").tolist() == greedy("a")[:2]
    idle = server.stats()
    assert idle["active"] == idle["queued"] == idle["cache_reserved_bytes"] == idle["cache_used_bytes"] == 0, idle

    plan = _plan(random.Random(SEED))
    churn = Churn(server, greedy)
    t0 = time.time()
    with ThreadPoolExecutor(THREADS) as ex:
        list(ex.map(lambda ij: churn.run_one(*ij), enumerate(plan)))
    churn_s = time.time() - t0
    assert server.proc.poll() is None, f"the server exited during the churn: {server.log.read_text()[-3000:]}"
    st = _wait_idle(server, idle, 30, f"; {len(churn.problems)} requests went wrong, first: {churn.problems[:3]}")

    assert not churn.problems, f"{len(churn.problems)} requests went wrong ({churn.outcomes['not sent']} of " \
        f"{N_REQUESTS} not sent after that; {churn_s:.1f}s):\n" + "\n".join(churn.problems[:MAX_PROBLEMS])
    planned = Counter(job["kind"] for job in plan)
    assert planned["budget"] > 0 and st["refused_budget"] - idle["refused_budget"] == planned["budget"]
    assert st["refused_length"] - idle["refused_length"] == planned["too_long"]
    assert st["failed"] == idle["failed"], "the server failed requests that did nothing wrong"
    log = server.log.read_text()
    for bad in ("decode step failed", "prefill failed", "Traceback"):
        assert bad not in log, f"{bad!r} in the server log:\n{log[max(0, log.find(bad) - 2000):][:4000]}"

    # every generate instance and the stream model still answer, correctly, at once
    jobs = [("http" if k % 2 else "grpc", f"{WORDS[k]} {WORDS[-k]}", MAX_NEW) for k in range(SLOTS + 2)]

    def after(job: tuple) -> list[int]:
        proto, prompt, n = job
        if proto == "http":
            return server.http_client(network_timeout=30).infer("generate", _inputs(th, prompt.encode(), n)) \
                .as_numpy("token_ids").tolist()
        return server.grpc_client().infer("generate", _inputs(tg, prompt.encode(), n), client_timeout=30) \
            .as_numpy("token_ids").tolist()

    with ThreadPoolExecutor(len(jobs)) as ex:
        got = list(ex.map(after, jobs))
    assert got == [greedy(p)[:n] for _, p, n in jobs]
    final = churn.stream(b"the cat", MAX_NEW)[-1]
    assert final.as_numpy("token_ids").tolist() == greedy("the cat")[:MAX_NEW]
    _wait_idle(server, idle, 30)
    print(f"churn: {N_REQUESTS} requests in {churn_s:.1f}s; {dict(sorted(churn.outcomes.items()))}")
