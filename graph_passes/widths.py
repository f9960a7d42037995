"""Code widths as the user gives them: whole bits (4) or split widths (3.5 = half the rotated
coordinates at 4 bits, the rest at 3; docs/ops.md 1.4.1), and their per-layer resolution.

A width w with a fractional part f stores floor(w) bits in every coordinate and one more in the first
f * head_dim rotated coordinates, which must be a multiple of 8 (3.5, 3.25, 2.75 ... on d = 64, 128;
x.5 on 80, 96, 112). Imports nothing else of the project but the codec reference.
"""
from __future__ import annotations

import math

from tq_ort import codec

Width = int | float


def parse_width(text: str) -> Width:
    """'4' -> 4, '3.5' -> 3.5 (argparse type for --key-bits / --value-bits)."""
    try:
        w = float(text)
    except ValueError:
        raise ValueError(f"width {text!r}: expected bits per coordinate, e.g. 4 or 3.5") from None
    return normalise_width(w)


def normalise_width(w: object) -> object:
    """4.0 -> 4 (a whole width is an int, so equal configs compare equal); anything else as given."""
    if isinstance(w, float) and math.isfinite(w) and w == int(w):
        return int(w)
    return w


def is_width(w: object, supported: tuple[int, ...] = codec.SUPPORTED_BITS) -> bool:
    """A supported whole width, or a split one between two supported widths (1.x to 5.x)."""
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
        return False
    if w == int(w):
        return int(w) in supported
    b = math.floor(w)
    return b in supported and b + 1 in supported


def width_error(name: str, w: object, supported: tuple[int, ...] = codec.SUPPORTED_BITS) -> str:
    return (f"{name}={w!r}: expected one of {supported}, or a split width between two of them up to 5.x "
            "(e.g. 3.5: half the rotated coordinates at 4 bits, the rest at 3; docs/ops.md 1.4.1)")


def split_width(w: Width, d: int, name: str = "width") -> tuple[int, int]:
    """(bits, hi) of width w on head_dim d: hi rotated coordinates at bits + 1, the rest at bits."""
    if not is_width(w):
        raise ValueError(width_error(name, w))
    b = math.floor(w)
    hi = (w - b) * d
    if abs(hi - round(hi)) > 1e-9 or round(hi) % 8:
        raise ValueError(f"{name}={w} on head_dim {d}: {w - b:g} x {d} = {hi:g} coordinates at {b + 1} bits; expected "
                         f"a multiple of 8 (widths in steps of {8 / d:g} bits for d = {d})")
    return int(b), int(round(hi))


def format_width(bits: int, hi: int, d: int) -> Width:
    """The width of (bits, hi) on head_dim d (the inverse of split_width)."""
    return normalise_width(bits + hi / d)
