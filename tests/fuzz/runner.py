"""Runs fuzz cases in the worker child (tests/fuzz/worker.py) and classifies what came back.

One worker at a time per Runner: started lazily, reused across cases (onnxruntime is imported
once), killed on a timeout and restarted after any death. Outcomes:

- crash: the worker died from a signal (SIGSEGV, SIGABRT from a sanitizer report, SIGFPE, ...)
  or exited without answering;
- hang: no answer within the timeout (the worker is killed);
- oom: killed by SIGKILL without us killing it (the kernel's OOM killer);
- error / ok: ORT returned an error or outputs (tests/fuzz/check.py compares ok ones).
"""
from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from fuzz.worker import read_msg, write_msg  # noqa: E402  (tests/ on sys.path)

WORKER = Path(__file__).with_name("worker.py")
DEFAULT_AS_MB = 3072  # address space the worker may add to what its imports mapped


def sanitizer_preloaded() -> bool:
    """True under an LD_PRELOAD'ed ASan runtime, which needs far more address space than any limit."""
    return "libasan" in os.environ.get("LD_PRELOAD", "")


def default_as_limit_mb() -> int:
    env = os.environ.get("TQ_FUZZ_AS_MB")
    if env is not None:
        return int(env)
    return 0 if sanitizer_preloaded() else DEFAULT_AS_MB


@dataclass
class Reply:
    kind: str      # "ok", "error", "crash", "hang", "oom"
    value: object  # outputs (ok), message (error), description (the others)
    seconds: float


class Runner:
    """A restartable worker process running one case at a time."""

    def __init__(self, lib: str, timeout_s: float = 20.0, as_limit_mb: int | None = None):
        self.lib = lib
        self.timeout_s = timeout_s
        self.as_limit_mb = default_as_limit_mb() if as_limit_mb is None else as_limit_mb
        self.proc: subprocess.Popen | None = None
        self.ort_version = ""
        self.restarts = 0

    def _start(self) -> None:
        env = dict(os.environ, OMP_NUM_THREADS="1")
        self.proc = subprocess.Popen([sys.executable, str(WORKER), self.lib, str(self.as_limit_mb)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        tag, self.ort_version = self._read(60.0)
        if tag != "ready":
            raise RuntimeError(f"fuzz worker did not start: {tag} {self.ort_version}")

    def _read(self, timeout: float):
        assert self.proc is not None and self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError
        msg = read_msg(self.proc.stdout)
        if msg is None:
            raise EOFError
        return msg

    def _reap(self, killed: bool) -> str:
        assert self.proc is not None
        try:
            rc = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self.proc = None
        self.restarts += 1
        if rc < 0:
            name = signal.Signals(-rc).name
            if -rc == signal.SIGKILL and not killed:
                return f"oom:{name}"
            return f"crash:{name}"
        return f"crash:exit {rc}"

    def run(self, request: dict) -> Reply:
        """Runs one case (worker.py's request dict) and returns what happened."""
        if self.proc is None:
            self._start()
        t0 = time.perf_counter()
        try:
            assert self.proc is not None and self.proc.stdin is not None
            write_msg(self.proc.stdin, request)
            kind, value = self._read(self.timeout_s)
            return Reply(kind, value, time.perf_counter() - t0)
        except TimeoutError:
            assert self.proc is not None
            self.proc.kill()
            self._reap(killed=True)
            return Reply("hang", f"no answer in {self.timeout_s:.0f} s", time.perf_counter() - t0)
        except (EOFError, BrokenPipeError, OSError):
            what = self._reap(killed=False)
            kind, _, desc = what.partition(":")
            return Reply(kind, desc, time.perf_counter() - t0)

    def close(self) -> None:
        if self.proc is not None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.close()
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def __enter__(self) -> "Runner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
