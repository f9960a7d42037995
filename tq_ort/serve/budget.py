"""Size strings and the cache-memory account of the server.

A request's cache cost is what its rows take in the model's cache (from the model's metadata, as
DecoderSession.memory_report and tq-ort inspect compute it): (prompt + max_new_tokens) tokens times
the bytes per token of all layers, plus the fixed per-sequence rings of a recent window. Admission
reserves that much of the budget for the request's lifetime and gives it back when it ends.
"""
from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str, what: str = "size") -> int:
    """Bytes of "2GiB", "512MiB", "2GB" (powers of 1000), "1.5GiB", "4096" (bytes); ValueError otherwise."""
    m = _SIZE.match(str(text))
    unit = m.group(2).lower() if m else None
    if not m or unit not in _UNITS:
        raise ValueError(f"{what} {text!r}: expected a size such as 512MiB, 2GiB or 2GB (B, KB, MB, GB, TB are "
                         "powers of 1000; KiB, MiB, GiB, TiB powers of 1024; a bare number is bytes)")
    n = int(float(m.group(1)) * _UNITS[unit])
    if n <= 0:
        raise ValueError(f"{what} {text!r}: must be more than 0 bytes")
    return n


def format_size(n: float) -> str:
    for unit, div in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= div:
            return f"{n / div:.2f} {unit}"
    return f"{int(n)} B"


@dataclass
class CacheAccount:
    """Reservations against a byte budget. Thread-safe."""

    bytes_per_token: int
    fixed_bytes: int  # per sequence (recent-window rings)
    fp16_bytes_per_token: int
    budget: int
    reserved: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def from_report(cls, report: dict, budget: int) -> CacheAccount:
        """From DecoderSession.memory_report() (tq_ort.cache.describe)."""
        return cls(int(report["bytes_per_token"]), int(report["fixed_bytes"]), int(report["fp16_bytes_per_token"]),
                   int(budget))

    def need(self, tokens: int) -> int:
        """Cache bytes of one sequence of `tokens` tokens."""
        return tokens * self.bytes_per_token + self.fixed_bytes

    def fp16(self, tokens: int) -> int:
        return tokens * self.fp16_bytes_per_token

    def max_sequences(self, tokens: int) -> int:
        """How many sequences of `tokens` tokens the budget holds at once."""
        return self.budget // self.need(tokens)

    def try_reserve(self, nbytes: int) -> bool:
        with self._lock:
            if self.reserved + nbytes > self.budget:
                return False
            self.reserved += nbytes
            return True

    def release(self, nbytes: int) -> None:
        with self._lock:
            self.reserved -= nbytes
            assert self.reserved >= 0, "cache account released more than it reserved"
