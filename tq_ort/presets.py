"""Named compression presets (`--preset`), chosen from the quality sweep (docs/quality.md).

PRESETS[name] = TQConfig keyword arguments plus "measured": the numbers the choice rests on.
"""
from __future__ import annotations

PRESETS: dict[str, dict] = {}
