"""Continuous batching over a SlotPool: a queue, admission against the cache budget, one decode
step for all active sequences at a time, stop strings, and a clean drain.

Loop (one thread owns the pool): admit queued requests while a slot is free and the budget holds
their reservation (prefill each alone into its slot), then run one decode step for every active
slot together, sample each row's next token with the request's own settings and generator, and
retire finished sequences (EOS, a stop string, max_new_tokens, or the caller gave up): the slot
and the reservation are freed before the next step, so waiting requests join at once.
"""
from __future__ import annotations

import collections
import concurrent.futures as cf
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..session import Sampling, sample
from .budget import CacheAccount, format_size
from .engine import SlotPool

LOG = logging.getLogger("tq_ort.serve")


class Refused(RuntimeError):
    """A request the server will not run (it can never fit, the queue is full, the server is stopping)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass
class GenRequest:
    prompt_ids: list[int]
    max_new_tokens: int
    sampling: Sampling = field(default_factory=Sampling)
    stop: list[str] = field(default_factory=list)
    eos: frozenset[int] = frozenset()
    on_text: Callable[[str], None] | None = None  # streaming: each new piece of text, on the scheduler thread


@dataclass
class GenResult:
    text: str
    token_ids: list[int]
    finish_reason: str  # "eos", "stop", "length", "cancelled"
    prompt_tokens: int
    cache_bytes: int  # the sequence's cache at its final length (as tq-ort generate reports it)
    cache_bytes_fp16: int
    seconds: float


@dataclass
class _Job:
    req: GenRequest
    future: cf.Future
    need: int
    submitted: float
    rng: np.random.Generator
    slot: int = -1
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    sent: int = 0  # characters of text already streamed


def _held_back(text: str, stops: list[str]) -> int:
    """Length of the longest suffix of text that begins some stop string (not safe to stream yet)."""
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:k]):
                best = k
                break
    return best


class Scheduler:
    """Owns a SlotPool and a CacheAccount; submit() from any thread, results through futures."""

    def __init__(self, pool: SlotPool, account: CacheAccount, decode_text: Callable[[list[int]], str], *,
                 max_queue: int = 256, queue_timeout: float = 60.0):
        self.pool, self.account, self.decode_text = pool, account, decode_text
        self.max_queue, self.queue_timeout = int(max_queue), float(queue_timeout)
        self._cond = threading.Condition()
        self._queue: collections.deque[_Job] = collections.deque()
        self._active: dict[int, _Job] = {}
        self._draining = False
        self._stopped = False
        self.counts = collections.Counter({k: 0 for k in (
            "completed", "cancelled", "failed", "generated_tokens", "decode_steps", "decode_rows", "refused_budget",
            "refused_length", "refused_queue", "refused_timeout", "refused_shutdown")})
        self._thread = threading.Thread(target=self._loop, name="tq-serve-scheduler", daemon=True)

    def start(self) -> Scheduler:
        self._thread.start()
        return self

    # -- client side ---------------------------------------------------------------------------
    def submit(self, req: GenRequest) -> cf.Future:
        """Queue a request; a future of GenResult. Raises Refused at once when it can never run."""
        total = len(req.prompt_ids) + req.max_new_tokens
        if not req.prompt_ids:
            raise Refused("invalid", "prompt: expected at least one token")
        if total > self.pool.capacity:
            self._count("refused_length")
            raise Refused("too_long", f"prompt of {len(req.prompt_ids)} tokens + max_new_tokens={req.max_new_tokens} "
                          f"= {total} tokens exceeds the server's max_length={self.pool.capacity}")
        need = self.account.need(total)
        if need > self.account.budget:
            self._count("refused_budget")
            raise Refused("budget", f"cache budget exceeded: the request's {total} tokens need {format_size(need)} "
                          f"of compressed cache ({need} bytes), more than the whole --cache-budget of "
                          f"{format_size(self.account.budget)} ({self.account.budget} bytes)")
        job = _Job(req, cf.Future(), need, time.monotonic(), np.random.default_rng(req.sampling.seed))
        with self._cond:
            if self._draining:
                self._count("refused_shutdown")
                raise Refused("shutdown", "server shutting down: not accepting new requests")
            if len(self._queue) >= self.max_queue:
                self._count("refused_queue")
                raise Refused("queue_full", f"server busy: {len(self._queue)} requests already wait for cache "
                              f"memory (queue limit {self.max_queue}); retry later")
            self._queue.append(job)
            self._cond.notify_all()
        return job.future

    def stats(self) -> dict:
        with self._cond:
            active = list(self._active.values())
            queued = len(self._queue)
        used_tokens = [int(self.pool.lengths[j.slot]) for j in active]
        return {"active": len(active), "queued": queued, "slots": self.pool.slots, "max_length": self.pool.capacity,
                "cache_budget_bytes": self.account.budget, "cache_reserved_bytes": self.account.reserved,
                "cache_used_bytes": sum(self.account.need(t) for t in used_tokens),
                "cache_used_fp16_bytes": sum(self.account.fp16(t) for t in used_tokens),
                "pool_address_bytes": self.pool.pool_bytes(), "cache_resident_bytes": self.pool.resident_bytes(),
                "bytes_per_token": self.account.bytes_per_token,
                "fp16_bytes_per_token": self.account.fp16_bytes_per_token, **dict(self.counts)}

    def drain(self, timeout: float) -> bool:
        """Stop taking requests, fail the queued ones, let active ones finish for up to `timeout`
        seconds, then fail the rest. True if every active request finished."""
        with self._cond:
            self._draining = True
            while self._queue:
                self._fail(self._queue.popleft(), Refused("shutdown", "server shutting down before the request "
                                                          "started"))
            self._cond.notify_all()
            done = self._cond.wait_for(lambda: not self._active, timeout=timeout)
            self._stopped = True
            self._cond.notify_all()
        self._thread.join(timeout=30)
        for job in list(self._active.values()):  # the loop has exited: nothing else touches them
            self._retire(job, error=RuntimeError("server shut down before the request finished "
                                                 f"(drain timeout {timeout:g}s)"))
        return done

    # -- the loop ------------------------------------------------------------------------------
    def _count(self, key: str, n: int = 1) -> None:
        self.counts[key] += n

    def _fail(self, job: _Job, err: Exception) -> None:
        self._count("failed")
        _settle(job.future, error=err)

    def _loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._stopped or self._queue or self._active, timeout=1.0)
                if self._stopped:
                    return
                self._expire_locked()
                admitted = self._admit_locked()
            try:
                for job in admitted:
                    self._first_token(job)
                if self._active:
                    self._step()
            except Exception as e:  # noqa: BLE001 - a failed run fails its requests, not the server
                LOG.exception("decode step failed")
                for job in list(self._active.values()):
                    self._retire(job, error=RuntimeError(f"decode failed: {type(e).__name__}: {e}"))

    def _expire_locked(self) -> None:
        now = time.monotonic()
        while self._queue and (now - self._queue[0].submitted > self.queue_timeout or self._queue[0].future.done()):
            job = self._queue.popleft()
            self._count("refused_timeout")
            self._fail(job, Refused("timeout", f"server busy: waited {self.queue_timeout:g}s for cache memory / a "
                                    f"free slot ({self.pool.slots} slots, {format_size(self.account.reserved)} of "
                                    f"{format_size(self.account.budget)} reserved); retry later"))

    def _admit_locked(self) -> list[_Job]:
        admitted = []
        free = [s for s in range(self.pool.slots) if s not in self._active]
        while self._queue and free and self.account.try_reserve(self._queue[0].need):
            job = self._queue.popleft()
            job.slot = free.pop(0)
            self._active[job.slot] = job
            admitted.append(job)
        return admitted

    def _first_token(self, job: _Job) -> None:
        try:
            logits = self.pool.prefill(job.slot, job.req.prompt_ids)
        except Exception as e:  # noqa: BLE001
            self._retire(job, error=RuntimeError(f"prefill failed: {type(e).__name__}: {e}"))
            return
        self._take(job, logits)

    def _step(self) -> None:
        jobs = dict(self._active)
        for slot, job in list(jobs.items()):
            if job.future.done():  # the caller gave up (cancelled): free its rows now
                self._retire(job, reason="cancelled")
                del jobs[slot]
        if not jobs:
            return
        logits = self.pool.decode({slot: job.tokens[-1] for slot, job in jobs.items()})
        self._count("decode_steps")
        self._count("decode_rows", len(jobs))
        for slot, job in jobs.items():
            self._take(job, logits[slot])

    def _take(self, job: _Job, logits: np.ndarray) -> None:
        tok = sample(logits, job.req.sampling, job.rng)
        job.tokens.append(tok)
        job.text = self.decode_text(job.tokens)
        reason = None
        if tok in job.req.eos:
            reason = "eos"
        if job.req.stop:
            hits = [i for i in (job.text.find(s) for s in job.req.stop) if i >= 0]
            if hits:
                job.text, reason = job.text[:min(hits)], "stop"
        if reason is None and len(job.tokens) >= job.req.max_new_tokens:
            reason = "length"
        if job.req.on_text:
            upto = len(job.text)
            if not reason:  # hold back what a later token may still change: a stop string's start, and
                upto -= _held_back(job.text, job.req.stop)  # an incomplete UTF-8 character (U+FFFD)
                while upto > job.sent and job.text[upto - 1] == "\ufffd":
                    upto -= 1
            if upto > job.sent:
                try:
                    job.req.on_text(job.text[job.sent:upto])
                except Exception as e:  # noqa: BLE001 - a stream whose reader is gone ends alone, not its batch
                    self._retire(job, error=RuntimeError(f"streaming failed: {type(e).__name__}: {e}"))
                    return
                job.sent = upto
        if reason:
            self._retire(job, reason=reason)

    def _retire(self, job: _Job, *, reason: str = "", error: Exception | None = None) -> None:
        length = int(self.pool.lengths[job.slot])
        with self._cond:
            if self._active.get(job.slot) is not job:  # retired already: its slot may be another job's now
                LOG.error("request retired twice (slot %d); ignored", job.slot)
                return
            del self._active[job.slot]
            self.pool.release(job.slot)
            if not self._active:  # idle: the whole pool back to its state at start
                self.pool.release_all()
            self.account.release(job.need)
            self._cond.notify_all()
        if error is not None:
            self._fail(job, error)
            return
        self._count("completed" if reason != "cancelled" else "cancelled")
        self._count("generated_tokens", len(job.tokens))
        res = GenResult(job.text, list(job.tokens), reason, len(job.req.prompt_ids), self.account.need(length),
                        self.account.fp16(length), time.monotonic() - job.submitted)
        LOG.info("request done: %d+%d tokens (%s) in %.2fs; cache %s vs %s float16; reserved now %s of %s",
                 res.prompt_tokens, len(res.token_ids), reason, res.seconds, format_size(res.cache_bytes),
                 format_size(res.cache_bytes_fp16), format_size(self.account.reserved), format_size(self.account.budget))
        _settle(job.future, result=res)


def _settle(future: cf.Future, *, result: GenResult | None = None, error: Exception | None = None) -> None:
    """Set a future's result or exception unless its caller cancelled it meanwhile (another thread may
    cancel between a done() check and the set: set_* then raises InvalidStateError, which must not reach
    the loop, whose handler fails every active request)."""
    try:
        if not future.done():
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)
    except cf.InvalidStateError:
        pass
