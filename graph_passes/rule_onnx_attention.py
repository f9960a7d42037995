"""Rule placeholder: matching for this source is not implemented yet; it refuses cleanly."""
from __future__ import annotations

from .matching import RewriteError


def match(io, hf):
    raise RewriteError(f"layer {io.layer}: this attention form is not supported yet")


def rewrite(b, io, plan, m, seqlens, total):  # pragma: no cover - match() always refuses
    raise RewriteError("unsupported")
