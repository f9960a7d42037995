"""`tq-ort serve` end to end: one Triton server (PyTriton, tiny rewritten llama, CPU) per module in a
subprocess on free ports; tritonclient over HTTP and gRPC.

Greedy outputs of concurrent, batched requests equal a direct DecoderSession run (and `tq-ort generate`);
streaming pieces join to the same text; the budget refusal, malformed requests and a busy queue get clear
errors and the server keeps serving; SIGTERM drains in-flight requests and exits 0.
1,000 requests with cancellations back to idle: test_serve_churn.py; SmolLM2: test_serve_smollm2.py (both
import start_server and the input helpers from here).
"""
from __future__ import annotations

import contextlib
import io
import json
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from tiny_exports import library_has_attention, rewritten_folder

pytest.importorskip("pytriton", reason="PyTriton not installed (pip install 'tq-ort[serve]')")
th = pytest.importorskip("tritonclient.http", reason="tritonclient[http] not installed (pip install 'tq-ort[serve]')")
tg = pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] not installed (pip install 'tq-ort[serve]')")
from tritonclient.utils import InferenceServerException  # noqa: E402

pytestmark = pytest.mark.skipif(not library_has_attention(), reason="custom-op library without TurboQuantAttention")

MAX_LENGTH = 160
BUDGET = 40_000  # bytes: ~138 tokens of the tiny llama (288 B/token): a 155-token request cannot fit
SLOTS = 4
PROMPTS = ["hello world", "the cat sat on the mat and looked", "a", "one two three four five six seven eight",
           "Paris is", "x y z"]


class Served:
    """A running `tq-ort serve` subprocess: its ports, model folder, log file and printed lines."""

    def __init__(self, proc: subprocess.Popen, http: int, grpc: int, metrics: int, folder: Path, log: Path,
                 lines: list[str], errf: io.TextIOBase):
        self.proc, self.http, self.grpc, self.metrics, self.folder, self.log = proc, http, grpc, metrics, folder, log
        self.lines, self._errf = lines, errf

    def http_client(self, **kw) -> th.InferenceServerClient:
        return th.InferenceServerClient(f"127.0.0.1:{self.http}", **kw)

    def grpc_client(self) -> tg.InferenceServerClient:
        return tg.InferenceServerClient(f"127.0.0.1:{self.grpc}")

    def stats(self) -> dict:
        return json.loads(self.http_client().infer("stats", []).as_numpy("json")[0])

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._errf.close()


def start_server(folder: Path, *args: str) -> Served:
    """`tq-ort serve FOLDER ARGS` on free ports in a subprocess, once its ready line is printed (skips the
    test when tritonserver does not start in 3 tries); stop it with Served.close()."""
    log = folder.parent / "serve.log"
    cmd = [sys.executable, "-m", "tq_ort.cli", "serve", str(folder), "--port", "0", "--grpc-port", "0",
           "--metrics-port", "0", *args, "--triton-log", str(folder.parent / "tritonserver.log")]
    for _ in range(3):  # PyTriton gives each instance 1 s to start: a loaded machine may miss it
        errf = open(log, "w")
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=errf, text=True)
        lines: list[str] = []
        threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
        deadline = time.time() + 150
        while time.time() < deadline and proc.poll() is None and not any("ready:" in x for x in lines):
            time.sleep(0.2)
        ready = next((x for x in lines if "ready:" in x), None)
        if ready is not None:
            break
        proc.kill()
        proc.wait()
        errf.close()
    if ready is None:
        pytest.skip(f"tq-ort serve / tritonserver did not start (3 tries): {log.read_text()[-1500:]}")
    m = re.search(r"HTTP [\d.]+:(\d+), gRPC [\d.]+:(\d+), metrics http://[\d.]+:(\d+)", ready)
    return Served(proc, *map(int, m.groups()), folder, log, lines, errf)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = rewritten_folder(tmp_path_factory.mktemp("serve"), "llama")
    s = start_server(folder, "--max-batch", str(SLOTS), "--max-length", str(MAX_LENGTH), "--cache-budget", str(BUDGET),
                     "--max-queue", "64", "--queue-timeout", "20", "--drain-timeout", "30")
    yield s
    s.close()


@pytest.fixture(scope="module")
def reference(server):
    """Greedy token ids of a direct DecoderSession run per (prompt, max_new_tokens), as tq-ort generate runs it."""
    from tq_ort.quality.data import load_tokenizer
    from tq_ort.session import DecoderSession

    tok = load_tokenizer(server.folder)
    cache: dict = {}

    def ref(prompt: str, n: int) -> tuple[list[int], str]:
        if (prompt, n) not in cache:
            ids = tok(prompt)["input_ids"]
            s = DecoderSession(server.folder, max_length=len(ids) + n)
            out = s.generate(ids, n, eos_token_id=tok.eos_token_id)
            cache[prompt, n] = out, tok.decode(out, skip_special_tokens=True)
        return cache[prompt, n]
    return ref


def http_inputs(prompt: bytes, n: int, **extra) -> list:
    ins = []
    for name, arr, dt in (("prompt", np.array([prompt], dtype=object), "BYTES"),
                          ("max_new_tokens", np.array([n], dtype=np.int32), "INT32"), *extra.get("more", ())):
        i = th.InferInput(name, list(arr.shape), dt)
        i.set_data_from_numpy(arr)
        ins.append(i)
    return ins


def grpc_inputs(prompt: bytes, n: int) -> list:
    ins = []
    for name, arr, dt in (("prompt", np.array([prompt], dtype=object), "BYTES"),
                          ("max_new_tokens", np.array([n], dtype=np.int32), "INT32")):
        i = tg.InferInput(name, list(arr.shape), dt)
        i.set_data_from_numpy(arr)
        ins.append(i)
    return ins


def test_ready_health_and_metadata(server):
    c = server.http_client()
    assert c.is_server_live() and c.is_server_ready()
    for m in ("generate", "generate_stream", "stats"):
        assert c.is_model_ready(m)
    names = {i["name"] for i in c.get_model_metadata("generate")["inputs"]}
    assert {"prompt", "max_new_tokens", "temperature", "top_p", "stop"} <= names
    assert server.grpc_client().is_server_ready()
    import urllib.request
    body = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics}/metrics", timeout=10).read().decode()
    assert "nv_inference_request_success" in body


def test_concurrent_http_and_grpc_equal_direct_greedy(server, reference):
    jobs = [(p, 6 + 3 * i, "grpc" if i % 2 else "http") for i, p in enumerate(PROMPTS * 2)]
    before = server.stats()

    def one(job):
        p, n, proto = job
        if proto == "http":
            r = server.http_client().infer("generate", http_inputs(p.encode(), n))
        else:
            r = server.grpc_client().infer("generate", grpc_inputs(p.encode(), n))
        return (r.as_numpy("token_ids").tolist(), r.as_numpy("text")[0].decode(), r.as_numpy("finish_reason")[0],
                int(r.as_numpy("cache_bytes")[0]), int(r.as_numpy("cache_bytes_fp16")[0]))

    with ThreadPoolExecutor(len(jobs)) as ex:
        results = list(ex.map(one, jobs))
    for (p, n, proto), (ids, text, reason, cb, cb16) in zip(jobs, results):
        want_ids, want_text = reference(p, n)
        assert ids == want_ids, (p, n, proto)
        assert text == want_text
        assert reason in (b"length", b"eos")
        assert 0 < cb < cb16  # compressed vs float16 at the final length
    after = server.stats()
    steps = after["decode_steps"] - before["decode_steps"]
    rows = after["decode_rows"] - before["decode_rows"]
    assert rows / steps > 1.5, f"requests were not decoded together ({rows} rows in {steps} steps)"


def test_equals_tq_ort_generate_cli(server, reference, capsys):
    from tq_ort.cli.main import main

    prompt, n = "the cat sat on the mat and looked", 9
    assert main(["generate", str(server.folder), "--prompt", prompt, "--max-new-tokens", str(n)]) == 0
    printed = capsys.readouterr().out
    r = server.http_client().infer("generate", http_inputs(prompt.encode(), n))
    assert printed.startswith(prompt + r.as_numpy("text")[0].decode() + "\n\n")


def test_grpc_stream_pieces_join_to_the_text(server, reference):
    got: list = []
    done = threading.Event()

    def cb(result, error):
        got.append(error if error else result)
        if error or result.as_numpy("finish_reason")[0]:
            done.set()

    c = server.grpc_client()
    c.start_stream(callback=cb)
    c.async_stream_infer("generate_stream", grpc_inputs(b"Paris is", 12))
    assert done.wait(60)
    c.stop_stream()
    assert not any(isinstance(g, Exception) for g in got), got
    text = "".join(g.as_numpy("text")[0].decode() for g in got)
    ids, want = reference("Paris is", 12)
    assert text == want and got[-1].as_numpy("token_ids").tolist() == ids
    assert len(got) > 2  # pieces, not one response


def test_stop_string(server, reference):
    ids, full = reference("hello world", 20)
    stop = next((ch for ch in full[2:] if ch != "\ufffd"), None)  # (a random tiny model: odd text)
    if stop is None:
        pytest.skip(f"no stop string candidate in the reference text {full!r}")
    stop_arr = np.array([stop.encode()], dtype=object)
    r = server.http_client().infer("generate", http_inputs(b"hello world", 20, more=[("stop", stop_arr, "BYTES")]))
    assert r.as_numpy("finish_reason")[0] == b"stop"
    assert r.as_numpy("text")[0].decode() == full[:full.find(stop)]


def _error(fn) -> str:
    with pytest.raises(InferenceServerException) as e:
        fn()
    return str(e.value)


def test_bad_requests_get_clear_errors_and_the_server_keeps_serving(server, reference):
    c = server.http_client()
    msg = _error(lambda: c.infer("generate", http_inputs(b"hello", 4)[1:]))  # no prompt
    assert "prompt" in msg
    wrong = th.InferInput("max_new_tokens", [1], "FP32")
    wrong.set_data_from_numpy(np.array([4.0], dtype=np.float32))
    msg = _error(lambda: c.infer("generate", [http_inputs(b"hello", 4)[0], wrong]))
    assert "data-type is 'FP32'" in msg and "INT32" in msg
    msg = _error(lambda: c.infer("generate", http_inputs(b"hello", 10**6)))
    assert f"max_new_tokens=1000000: expected 1 to {MAX_LENGTH}" in msg
    msg = _error(lambda: c.infer("generate", http_inputs(b"caf\xe9 \xff", 4)))
    assert "prompt: not valid UTF-8 (byte 0xe9 at offset 3)" in msg
    msg = _error(lambda: c.infer("generate", http_inputs(b"hello", 4, more=[("temperature", np.array([-1.0],
                                                                             dtype=np.float32), "FP32")])))
    assert "temperature=-1.0" in msg
    msg = _error(lambda: server.grpc_client().infer("generate", grpc_inputs(b"\xc3", 4)))
    assert "not valid UTF-8" in msg
    # the budget: 5 + 150 tokens fit max_length=160 but need 44640 bytes of a 40000-byte budget
    msg = _error(lambda: c.infer("generate", http_inputs(b"a b c d", MAX_LENGTH - 10)))
    assert "cache budget exceeded" in msg and f"--cache-budget of 39.06 KiB ({BUDGET} bytes)" in msg
    # still serving, and the failures left nothing reserved
    r = c.infer("generate", http_inputs(b"hello world", 5))
    assert r.as_numpy("token_ids").tolist() == reference("hello world", 5)[0]
    st = server.stats()
    assert st["refused_budget"] >= 1 and st["cache_reserved_bytes"] == 0 and st["active"] == 0


def test_budget_fills_then_requests_wait_not_fail(server, reference):
    """Three ~113-token requests (~32 KiB each) against a 39 KiB budget: one at a time, all answered."""
    with ThreadPoolExecutor(3) as ex:
        rs = list(ex.map(lambda _: server.http_client(network_timeout=120).infer(
            "generate", http_inputs(b"one two", 110)), range(3)))
    ids = reference("one two", 110)[0]
    assert all(r.as_numpy("token_ids").tolist() == ids for r in rs)


def test_sigterm_finishes_in_flight_requests_and_exits_0(server, reference):
    """Last in the module: it stops the server."""
    results: dict = {}

    def one(n: int) -> None:
        try:
            r = server.http_client(network_timeout=120).infer("generate", http_inputs(b"x y z", n))
            results[n] = r.as_numpy("token_ids").tolist()
        except Exception as e:  # noqa: BLE001
            results[n] = e

    threads = [threading.Thread(target=one, args=(n,)) for n in (30, 40)]
    for t in threads:
        t.start()
    deadline = time.time() + 20
    while server.stats()["active"] < 1 and time.time() < deadline:
        time.sleep(0.02)
    server.proc.send_signal(signal.SIGTERM)
    rc = server.proc.wait(timeout=90)
    for t in threads:
        t.join(30)
    assert rc == 0, server.log.read_text()[-2000:]
    assert set(results) == {30, 40}  # every client got an answer, no hang
    for n, r in results.items():  # its full result, or a clear error (drained / refused while stopping)
        assert r == reference("x y z", n)[0] if isinstance(r, list) else \
            re.search("shutting down|shut down|not ready|unavailable|connect", str(r), re.I), r
    assert any("SIGTERM: draining" in x for x in server.lines)
    assert any("stopped (" in x for x in server.lines)


def test_cli_bad_input_is_a_clear_error(tmp_path):
    from tq_ort.cli.main import main
    from tq_ort.serve.budget import parse_size

    assert parse_size("2GiB") == 2 * 2**30 and parse_size("2GB") == 2 * 10**9 and parse_size("512MiB") == 2**29
    assert parse_size("1.5KiB") == 1536 and parse_size("4096") == 4096
    for bad in ("2 gigs", "-1GiB", "GiB", "0"):
        with pytest.raises(ValueError, match="--cache-budget"):
            parse_size(bad, "--cache-budget")
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(["serve", str(tmp_path / "nope")]) == 2
        assert main(["serve", str(tmp_path), "--cache-budget", "2 gigs"]) == 2
    assert "no such model folder" in err.getvalue() and "expected a size such as 512MiB" in err.getvalue()
    import socket
    with socket.socket() as s:
        s.bind(("", 0))
        s.listen()
        from tq_ort.serve.triton_app import check_port
        with pytest.raises(ValueError, match="--port .*cannot listen"):
            check_port("0.0.0.0", s.getsockname()[1], "--port")
