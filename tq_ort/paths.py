"""Where tq-ort keeps converted models and exports: $TQ_ORT_CACHE, else $XDG_CACHE_HOME/tq-ort."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    root = os.environ.get("TQ_ORT_CACHE")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tq-ort"
