"""Property-based fuzzing of the three ops on ORT's CPU EP: the fixed-seed profile (tests/fuzz/).

Every case runs in a worker child under an address-space limit; a case passes when ORT returns an
error or outputs (outputs of a valid case equal to the numpy reference), and fails on a signal, a
hang, an out-of-memory kill, a mismatch, a valid case refused, or an op error that names nothing.
TQ_FUZZ_EXAMPLES sets the case count (default 500); benchmarks/fuzz_ops.py runs >= 10,000.
"""
from __future__ import annotations

import os
from collections import Counter

import pytest

from fuzz.cases import OPS, fuzz
from fuzz.runner import Runner

EXAMPLES = int(os.environ.get("TQ_FUZZ_EXAMPLES", "500"))


@pytest.fixture(scope="module")
def runner(lib_path):
    # sanitizer builds run several times slower: a longer timeout before a case counts as a hang
    with Runner(lib_path, timeout_s=60.0 if "libasan" in os.environ.get("LD_PRELOAD", "") else 20.0) as r:
        yield r


def test_harness_detects_crash_hang_and_memory_limit(lib_path):
    """The outcomes the profile relies on are really detected (and the worker restarts after each)."""
    with Runner(lib_path, timeout_s=3.0) as r:
        assert r.run({"self_test": "segv"}).kind == "crash"
        assert r.run({"self_test": "abort"}).kind == "crash"
        assert r.run({"self_test": "hang"}).kind == "hang"
        rep = r.run({"self_test": "alloc"})
        if r.as_limit_mb:
            assert rep.kind == "error" and "MemoryError" in str(rep.value), rep
        assert r.restarts == 3


def test_fuzz_profile(runner):
    seen: Counter = Counter()
    fuzz(runner, EXAMPLES, on_outcome=lambda case, out: seen.update([(out.op, out.valid, out.kind)]))
    # not vacuous: every op had valid cases matching the reference and invalid ones rejected
    for op in OPS:
        assert seen[(op, True, "match")] > 0, (op, seen)
        assert seen[(op, False, "error")] > 0, (op, seen)
