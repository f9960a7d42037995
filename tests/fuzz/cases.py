"""The fuzz case strategy over every op, and the evaluation of one case (run + classify)."""
from __future__ import annotations

import re
import time
from typing import Callable

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from fuzz.attention_cases import attention_cases
from fuzz.check import NAMING, Outcome
from fuzz.codec_cases import decode_cases, encode_cases
from fuzz.model import FuzzCase
from fuzz.runner import Runner

OPS = ("TurboQuantEncode", "TurboQuantDecode", "TurboQuantAttention")


def all_cases() -> st.SearchStrategy[FuzzCase]:
    """One case of any op (attention, the op with the most inputs, drawn twice as often)."""
    return st.one_of(encode_cases(), decode_cases(), attention_cases(), attention_cases())


def evaluate(runner: Runner, case: FuzzCase) -> Outcome:
    """Runs the case in the worker and classifies the result (tests/fuzz/check.py's OUTCOMES)."""
    t0 = time.perf_counter()
    reply = runner.run(case.request())
    out = Outcome(case.op, case.label, case.valid, reply.kind, str(reply.value) if reply.kind != "ok" else "",
                  reply.seconds)
    if reply.kind == "error":
        msg = str(reply.value)
        if case.valid:
            out.kind = "refused"
        elif re.search(r"TurboQuant\w+ '", msg) and not any(n in msg for n in NAMING):
            out.kind = "vague-error"
    elif reply.kind == "ok":
        if not case.valid:
            out.kind = "result"
        else:
            try:
                with np.errstate(all="ignore"):  # inf/NaN where a valid case overflows, in both
                    diff = case.compare(reply.value, case.reference())
            except Exception as e:  # the reference refused a case generated as valid
                diff = f"reference raised {type(e).__name__}: {e}"
            out.kind, out.detail = ("mismatch", diff) if diff else ("match", "")
    out.seconds = time.perf_counter() - t0
    return out


def fuzz(runner: Runner, max_examples: int, seed: int | None = None,
         on_outcome: Callable[[FuzzCase, Outcome], None] | None = None, stop_on_failure: bool = True) -> None:
    """Runs max_examples drawn cases through the runner. seed None: hypothesis' derandomized
    sequence (the same cases every run); stop_on_failure: fail (and shrink) on the first failing
    outcome, else only report each outcome to on_outcome and go on."""
    @settings(max_examples=max_examples, database=None, deadline=None, derandomize=seed is None,
              suppress_health_check=list(HealthCheck), print_blob=False)
    @given(case=all_cases())
    def one(case: FuzzCase) -> None:
        out = evaluate(runner, case)
        if on_outcome is not None:
            on_outcome(case, out)
        if stop_on_failure:
            assert out.passed, f"{out.kind}: {out.detail}\n{case.describe()}"

    if seed is not None:
        one = hypothesis_seed(seed)(one)
    one()
