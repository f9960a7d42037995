"""Per-layer bit allocation (TQConfig.layer_bits): the inline spec, its checks, and its resolution per layer.

An allocation is a tuple of (layer, key_bits, value_bits): layer may be negative (counted from the end,
as in protect_layers), key_bits counts the QJL bit when use_qjl is on (like TQConfig.key_bits), and
value_bits is 0 for a keys-only model (values stay float). Layers not listed keep TQConfig.key_bits /
value_bits. Widths may be split (graph_passes/widths.py: 0:K3.5V3). The inline form,
`--layer-bits 0:K8V8,10:K4V4,-1:K8V3` (keys-only: `0:K8`), is what
`format_layer_bits` writes and `parse_layer_bits` reads. Checked twice: the entries alone when the
config is validated (bits, duplicates), and against the model's layer count when the layers are planned
(indices in range, no layer named twice, none also in protect_layers).
"""
from __future__ import annotations

from .widths import is_width, normalise_width, parse_width, width_error

FLAG = "--layer-bits (layer_bits)"
LayerBits = tuple[tuple[int, int, int], ...]


def parse_layer_bits(spec: str) -> LayerBits:
    """'0:K8V8,-1:K4V3' -> ((0, 8, 8), (-1, 4, 3)); 'L:Kb' (no V) gives value_bits 0 (keys-only)."""
    out = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        layer, sep, bits = item.partition(":")
        head = bits.strip().upper()
        try:
            if not sep or not head.startswith("K"):
                raise ValueError
            kb, _, vb = head[1:].partition("V")
            out.append((int(layer), parse_width(kb), parse_width(vb) if vb else 0))
        except ValueError:
            raise ValueError(f"{FLAG}: entry {item!r}: expected LAYER:K<bits>V<bits> (e.g. 0:K8V8 or -1:K4V3; "
                             "keys-only models: 0:K8), entries comma-separated") from None
    if not out:
        raise ValueError(f"{FLAG}: {spec!r} lists no layer; expected e.g. 0:K8V8,-1:K4V3")
    return tuple(out)


def format_layer_bits(layer_bits: LayerBits) -> str:
    """The inline spec of an allocation (parse_layer_bits reads it back)."""
    return ",".join(f"{L}:K{k}" + (f"V{v}" if v else "") for L, k, v in layer_bits)


def normalise_layer_bits(value: object) -> object:
    """Lists (from JSON) become tuples so that equal allocations compare equal; anything else is left
    for check_layer_bits to reject."""
    if isinstance(value, (list, tuple)):
        return tuple(tuple(normalise_width(x) for x in e) if isinstance(e, (list, tuple)) else e for e in value)
    return value


def check_layer_bits(layer_bits: object, *, supported: tuple[int, ...], use_qjl: bool, keys_only: bool) -> None:
    """The entries on their own: shape, types, bit widths the op supports, no layer index given twice."""
    if not isinstance(layer_bits, tuple):
        raise ValueError(f"{FLAG}: {layer_bits!r}: expected a tuple of (layer, key_bits, value_bits)")
    seen: set[int] = set()
    for e in layer_bits:
        if not (isinstance(e, tuple) and len(e) == 3 and isinstance(e[0], int) and not isinstance(e[0], bool)
                and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in e[1:])):
            raise ValueError(f"{FLAG}: entry {e!r}: expected (layer, key_bits, value_bits): a layer index and two "
                             "widths")
        layer, kb, vb = e
        where = f"{FLAG}: layer {layer}"
        if layer in seen:
            raise ValueError(f"{where} is given twice")
        seen.add(layer)
        if not is_width(kb, supported) or (use_qjl and not is_width(kb - 1, supported)):
            raise ValueError(f"{where}: " + width_error("key_bits", kb, supported)
                             + (" (with QJL, key_bits-1 must be one too)" if use_qjl else ""))
        if keys_only and vb:
            raise ValueError(f"{where}: value_bits={vb} with keys_only: values stay float; give keys only "
                             f"(e.g. {layer}:K{kb})")
        if not keys_only and not is_width(vb, supported):
            raise ValueError(f"{where}: " + width_error("value_bits", vb, supported) + " (only keys-only models "
                             "leave V out)")


def resolve_layer_bits(layer_bits: LayerBits, n_layers: int, protect_layers: tuple[int, ...] = ()) -> dict[int, tuple[int, int]]:
    """{layer in 0..n_layers-1: (key_bits, value_bits)} of the allocation for a model of n_layers layers."""
    out: dict[int, tuple[int, int]] = {}
    named: dict[int, int] = {}
    protected = {p % n_layers for p in protect_layers} if n_layers else set()
    for layer, kb, vb in layer_bits:
        if not -n_layers <= layer < n_layers:
            raise ValueError(f"{FLAG}: layer {layer} out of range: the model has {n_layers} layers "
                             f"(expected {-n_layers}..{n_layers - 1})")
        i = layer % n_layers
        if i in out:
            raise ValueError(f"{FLAG}: layers {named[i]} and {layer} are the same layer ({i} of {n_layers})")
        if i in protected:
            raise ValueError(f"{FLAG}: layer {layer} is also in --protect-layers: give its bits in one of them")
        out[i], named[i] = (kb, vb), layer
    return out
