"""Concurrency on the CPU EP: several threads running one InferenceSession at once, and several sessions
in one process, give results bit-identical to serial runs. TurboQuantEncode, TurboQuantDecode and
TurboQuantAttention (decode and prefill steps) models, and a tiny rewritten decoder through
DecoderSession.fork (one loaded model, one cache per thread) and through separate DecoderSessions.

The library's kernels split work with onnxruntime's thread pool, or with their own pool when
TQ_ORT_NUM_THREADS is set (one job at a time; other callers run inline): the op tests also run in a
child process with TQ_ORT_NUM_THREADS=3, so that path is contended too.
"""
from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from conftest import Ops
from test_cpu_ops_attention import Case, outputs_spec
from test_long_cache import greedy
from tiny_exports import library_has_attention, rewritten_folder
from tq_ort import codec

THREADS = 6
VARIANTS = 4  # distinct inputs per model
pytestmark = pytest.mark.skipif(not library_has_attention(), reason="custom-op library without TurboQuantAttention")


def _attention(c: Case) -> tuple:
    feeds = c.feeds()
    while feeds[list(feeds)[-1]] is None:  # trailing absent optionals are dropped
        feeds.pop(list(feeds)[-1])
    spec = {n: (None if a is None else (np.asarray(a).dtype, list(np.shape(a)))) for n, a in feeds.items()}
    return Ops.model("TurboQuantAttention", spec, outputs_spec(c), c.attributes()), \
        {n: a for n, a in feeds.items() if a is not None}


def op_workloads(seed: int) -> dict[str, tuple]:
    """name -> (model, [feeds of VARIANTS distinct inputs]) for every op; shapes fixed per model."""
    rng = np.random.default_rng(seed)
    out = {}
    d, bits = 128, 4
    rot, cb = codec.rotation(d, 11), codec.codebook(d, bits)
    xs = [rng.standard_normal((64, 8, d)).astype(np.float32) for _ in range(VARIANTS)]
    enc = Ops.model("TurboQuantEncode", {"x": (np.float32, [64, 8, d]), "rotation": (np.float32, [d]),
                                         "codebook": (np.float32, [2 ** bits])},
                    {"rows": (np.uint8, None)}, {"bits": bits})
    out["encode"] = (enc, [{"x": x, "rotation": rot, "codebook": cb} for x in xs])
    rows = [codec.encode(x, rot, cb) for x in xs]
    dec = Ops.model("TurboQuantDecode", {"rows": (np.uint8, list(rows[0].shape)), "rotation": (np.float32, [d]),
                                         "codebook": (np.float32, [2 ** bits])}, {"x_hat": (np.float32, None)}, {})
    out["decode"] = (dec, [{"rows": r, "rotation": rot, "codebook": cb} for r in rows])
    for name, kw in (("attention-decode", dict(B=2, S=1, Hq=8, Hkv=2, d=64, P=512, past_lens=(500, 137))),
                     ("attention-prefill", dict(B=1, S=16, Hq=4, Hkv=2, d=64, P=512, past_lens=(300,),
                                                key_bits=3, use_qjl=True, do_rotary=True))):
        cases = [_attention(Case(**kw).build(rng)) for _ in range(VARIANTS)]
        out[name] = (cases[0][0], [f for _, f in cases])
    return out


CPU = ("CPUExecutionProvider",)


def session(lib: str, model, intra: int, providers: tuple[str, ...] = CPU) -> ort.InferenceSession:
    """A session of `model` with the library; on CUDA alone, no silent fallback of our nodes to the CPU."""
    so = ort.SessionOptions()
    so.register_custom_ops_library(lib)
    so.intra_op_num_threads = intra
    so.log_severity_level = 3
    if tuple(providers) == ("CUDAExecutionProvider",):
        so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    return ort.InferenceSession(model.SerializeToString(), so, providers=list(providers))


class InFlight:
    """Counts tasks running at once (the most seen is `peak`): proof that the runs did overlap."""

    def __init__(self):
        self.now = self.peak = 0
        self.lock = threading.Lock()

    def __enter__(self):
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)

    def __exit__(self, *exc):
        with self.lock:
            self.now -= 1


def assert_same(got: list, want: list, what: str) -> None:
    assert len(got) == len(want), what
    for i, (g, w) in enumerate(zip(got, want)):
        assert g.dtype == w.dtype and g.shape == w.shape, f"{what} output {i}: {g.dtype}{g.shape} vs {w.dtype}{w.shape}"
        if not np.array_equal(g, w, equal_nan=True):
            bad = np.argwhere(g != w)
            raise AssertionError(f"{what} output {i}: {len(bad)} of {g.size} values differ from the serial run, "
                                 f"first at {bad[0].tolist()}")


def check_ops_concurrent(lib: str, seed: int, intra: int, sessions_per_model: int,
                         providers: tuple[str, ...] = CPU) -> int:
    """Serial results first (one fresh session per model), then every (model, input) task 3 times in a
    shuffled order on a pool of THREADS threads: over one shared session per model
    (sessions_per_model = 1) or spread over several sessions of each model. Returns the task count."""
    work = op_workloads(seed)
    serial = {}
    for name, (model, feeds) in work.items():
        s = session(lib, model, intra, providers)
        serial[name] = [s.run(None, f) for f in feeds]
    pools = {name: [session(lib, model, intra, providers) for _ in range(sessions_per_model)]
             for name, (model, _) in work.items()}
    tasks = [(name, i, k) for name in work for i in range(VARIANTS) for k in range(3)]
    random.Random(seed).shuffle(tasks)
    flight = InFlight()

    def one(t):
        name, i, k = t
        with flight:
            return t, pools[name][(i + k) % sessions_per_model].run(None, work[name][1][i])

    with ThreadPoolExecutor(THREADS) as ex:
        for (name, i, k), got in ex.map(one, tasks):
            assert_same(got, serial[name][i], f"{name} input {i} (repeat {k}, intra_op={intra}, seed={seed})")
    assert flight.peak >= 2, f"the runs never overlapped (at most {flight.peak} at once)"
    return len(tasks)


@pytest.mark.parametrize("intra", [1, 2])
def test_ops_one_session_many_threads(lib_path, seed, intra):
    assert check_ops_concurrent(lib_path, seed, intra, sessions_per_model=1) == 4 * VARIANTS * 3


def test_ops_many_sessions_many_threads(lib_path, seed):
    check_ops_concurrent(lib_path, seed, 2, sessions_per_model=3)


def test_ops_with_the_librarys_own_pool(lib_path, seed):
    """The same checks in a child whose library splits work with its own pool (TQ_ORT_NUM_THREADS)."""
    env = {**os.environ, "TQ_ORT_NUM_THREADS": "3", "TQ_ORT_LIBRARY": lib_path}
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import test_concurrency as t; "
            "print(t.check_ops_concurrent(sys.argv[2], int(sys.argv[3]), 2, 1), "
            "t.check_ops_concurrent(sys.argv[2], int(sys.argv[3]), 1, 2))")
    r = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent), lib_path, str(seed)],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split() == [str(4 * VARIANTS * 3)] * 2, r.stdout


# -- a tiny rewritten decoder ----------------------------------------------------------------------------------
PROMPTS = [[40, 41, 42, 43], [100, 7, 7, 9, 250, 3], [5], [257, 12, 64, 64, 64, 1, 2, 3, 4, 5]]


def generate(sess, prompt: list[int], steps: int = 12) -> tuple[list[int], np.ndarray]:
    """Greedy tokens and every step's logits from a fresh cache of `sess`."""
    sess.reset()
    return greedy(sess, prompt, steps)


def check_decoder_concurrent(folder: Path, device: str = "cpu", sessions: int = 3) -> int:
    """Serial greedy runs of PROMPTS, then each prompt 3 times at once on THREADS threads: forks of one
    DecoderSession (one InferenceSession), then spread over `sessions` separate DecoderSessions.
    Tokens and logits must be bit-identical to the serial runs. Returns the task count."""
    from tq_ort.session import DecoderSession

    base = DecoderSession(folder, device=device, max_length=64)
    serial = [generate(base.fork(), p) for p in PROMPTS]
    tasks = [(i, k) for i in range(len(PROMPTS)) for k in range(3)]
    random.Random(0).shuffle(tasks)
    many = [DecoderSession(folder, device=device, max_length=64) for _ in range(sessions)]
    for label, pick in (("forks of one session", lambda i, k: base.fork()),
                        (f"{sessions} sessions", lambda i, k: many[(i + k) % sessions].fork())):
        flight = InFlight()

        def one(t, pick=pick, flight=flight):
            with flight:
                return t, generate(pick(*t), PROMPTS[t[0]])

        with ThreadPoolExecutor(THREADS) as ex:
            for (i, k), (toks, logits) in ex.map(one, tasks):
                assert toks == serial[i][0], f"{label}: prompt {i} repeat {k}: tokens {toks} vs serial {serial[i][0]}"
                assert_same([logits], [serial[i][1]], f"{label}: prompt {i} repeat {k} logits")
        assert flight.peak >= 2, f"{label}: the generations never overlapped (at most {flight.peak} at once)"
    return 2 * len(tasks)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    return rewritten_folder(tmp_path_factory.mktemp("conc"), "llama")


def test_decoder_threads_and_sessions(tiny_folder):
    assert check_decoder_concurrent(tiny_folder) == 2 * 3 * len(PROMPTS)


def test_fork_shares_the_model_not_the_cache(tiny_folder):
    from tq_ort.session import DecoderSession

    base = DecoderSession(tiny_folder, max_length=32)
    a, b = base.fork(), base.fork()
    assert a.sess is b.sess is base.sess
    a.reset()
    a.step(np.asarray([[1, 2, 3]]))
    b.reset()
    assert (a.length, b.length) == (3, 0) and a._cache is not b._cache
    assert next(iter(a._cache.values())).data_ptr() != next(iter(b._cache.values())).data_ptr()
