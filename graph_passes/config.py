"""Rewrite configuration: bits per layer for K and V, QJL, seed; and the metadata it becomes."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tq_ort import codec

from .layer_bits import check_layer_bits, normalise_layer_bits, resolve_layer_bits
from .widths import is_width, normalise_width, split_width, width_error

if TYPE_CHECKING:
    import onnx

METADATA_KEY = "turboquant.config"
SUPPORTED_HEAD_DIMS = (64, 80, 96, 112, 128, 256)
MAX_RECENT_WINDOW = 4096
READ_LAYOUT_VERSIONS = (1, 2)  # 2 = 1 plus split widths (docs/ops.md 1.4.1)
TARGETS = ("ort", "edge")  # ort: TurboQuant custom ops; edge: standard ai.onnx ops only (docs/edge.md)


@dataclass(frozen=True)
class TQConfig:
    """What the user asks for. `key_bits` counts the QJL bit when use_qjl is on (codes get b-1).
    Widths may be split (3.5: graph_passes/widths.py, docs/ops.md 1.4.1)."""

    key_bits: int | float = 4
    value_bits: int | float = 4
    use_qjl: bool = False
    keys_only: bool = False  # values stay in the model's float dtype
    protect_layers: tuple[int, ...] = ()  # layer indices (negative counts from the end)
    protect_bits: int = 8
    seed: int = 0
    windows: dict[int, int] = field(default_factory=dict)  # layer -> sliding window (tokens)
    recent_window: int = 0  # the last R cached tokens also kept exact in a float ring (0 = off)
    target: str = "ort"  # "edge": no custom ops, the codec and attention in standard ONNX ops
    # per-layer widths (graph_passes/layer_bits.py): (layer, key_bits, value_bits), negative layers count from
    # the end; listed layers override key_bits / value_bits. layer_bits_source: where they came from (a tag)
    layer_bits: tuple[tuple[int, int, int], ...] = ()
    layer_bits_source: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "layer_bits", normalise_layer_bits(self.layer_bits))
        object.__setattr__(self, "key_bits", normalise_width(self.key_bits))
        object.__setattr__(self, "value_bits", normalise_width(self.value_bits))

    def validate(self) -> None:
        if self.target not in TARGETS:
            raise ValueError(f"target={self.target!r}: expected one of {TARGETS}")
        if self.target == "edge":
            if self.use_qjl:
                raise ValueError("--qjl (use_qjl=True) is not supported with --target edge: the QJL sign sketch "
                                 "is not expressed in standard ONNX ops; drop --qjl or use --target ort")
            if self.recent_window:
                raise ValueError(f"--recent-window {self.recent_window} (recent_window) is not supported with "
                                 "--target edge: edge models keep no exact ring; use --recent-window 0 or --target ort")
        ok = codec.SUPPORTED_BITS
        if not is_width(self.key_bits) or (self.use_qjl and not is_width(self.key_bits - 1)):
            raise ValueError(width_error("key_bits", self.key_bits)
                             + (" (with QJL, key_bits-1 must be one too)" if self.use_qjl else ""))
        if not self.keys_only and not is_width(self.value_bits):
            raise ValueError(width_error("value_bits", self.value_bits))
        if self.target == "edge":
            split = [n for n, w in (("--key-bits", self.key_bits), ("--value-bits", self.value_bits))
                     if w != int(w)] + (["--layer-bits"] if any(k != int(k) or v != int(v)
                                                                 for _, k, v in self.layer_bits) else [])
            if split:
                raise ValueError(f"{', '.join(split)}: split widths (e.g. 3.5) are not supported with --target edge "
                                 "yet (the edge graphs decode one width per row); use whole widths or --target ort")
        if self.protect_bits not in ok:
            raise ValueError(f"protect_bits={self.protect_bits}: expected one of {ok}")
        if not isinstance(self.recent_window, int) or not 0 <= self.recent_window <= MAX_RECENT_WINDOW:
            raise ValueError(f"recent_window={self.recent_window}: expected an integer in 0..{MAX_RECENT_WINDOW} "
                             "(tokens kept exact besides their compressed rows; 0 = off)")
        check_layer_bits(self.layer_bits, supported=ok, use_qjl=self.use_qjl, keys_only=self.keys_only)


@dataclass(frozen=True)
class LayerPlan:
    """The resolved configuration of one layer, as written to the metadata."""

    layer: int
    head_dim: int
    kv_heads: int
    num_heads: int
    key_bits: int  # code bits actually stored (b-1 with QJL; the narrower width of a split one)
    value_bits: int  # 0 = float values (keys-only)
    use_qjl: bool
    qjl_dim: int
    key_row_bytes: int
    value_row_bytes: int  # 0 for float values
    window: int
    past_key: str
    past_value: str
    present_key: str
    present_value: str
    # exact recent window (docs/ops.md 4): float rings [B, Hkv, R, d] beside the rows; "" / 0 when off
    recent_window: int = 0
    recent_dtype: str = ""  # the model's float dtype ("float32" / "float16")
    past_key_recent: str = ""
    past_value_recent: str = ""  # "" also when values are not compressed (keys-only)
    present_key_recent: str = ""
    present_value_recent: str = ""
    # split widths (docs/ops.md 1.4.1): rotated coordinates [0, hi) at key_bits + 1 / value_bits + 1
    key_hi: int = 0
    value_hi: int = 0


def ring_name(cache_name: str) -> str:
    """past_key_values.3.key -> past_key_values.3.key_recent (present.3.value -> present.3.value_recent)."""
    return cache_name + "_recent"


def plan_layer(cfg: TQConfig, layer: int, n_layers: int, *, head_dim: int, kv_heads: int, num_heads: int,
               names: tuple[str, str, str, str], float_dtype: str = "float32") -> LayerPlan:
    if head_dim not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"layer {layer}: head_dim {head_dim} unsupported; expected one of {SUPPORTED_HEAD_DIMS}")
    protected = {p % n_layers for p in cfg.protect_layers}
    kb = cfg.protect_bits if layer in protected else cfg.key_bits
    vb = 0 if cfg.keys_only else (cfg.protect_bits if layer in protected else cfg.value_bits)
    if cfg.layer_bits:  # the per-layer allocation (checked against the layer count here)
        kb, vb = resolve_layer_bits(cfg.layer_bits, n_layers, cfg.protect_layers).get(layer, (kb, vb))
    qjl = cfg.use_qjl and layer not in protected
    code_bits, key_hi = split_width(kb - 1 if qjl else kb, head_dim, f"layer {layer}: key_bits"
                                    + (" - 1 (QJL)" if qjl else ""))
    vb, value_hi = split_width(vb, head_dim, f"layer {layer}: value_bits") if vb else (0, 0)
    m = head_dim if qjl else 0
    R = cfg.recent_window
    ring = {}
    if R:
        ring = dict(recent_window=R, recent_dtype=float_dtype, past_key_recent=ring_name(names[0]),
                    present_key_recent=ring_name(names[2]))
        if vb:
            ring.update(past_value_recent=ring_name(names[1]), present_value_recent=ring_name(names[3]))
    return LayerPlan(
        layer=layer, head_dim=head_dim, kv_heads=kv_heads, num_heads=num_heads, key_bits=code_bits,
        value_bits=vb, use_qjl=qjl, qjl_dim=m, key_row_bytes=codec.row_bytes(head_dim, code_bits, qjl, m or None, key_hi),
        value_row_bytes=codec.row_bytes(head_dim, vb, hi=value_hi) if vb else 0, window=cfg.windows.get(layer, -1),
        key_hi=key_hi, value_hi=value_hi,
        past_key=names[0], past_value=names[1], present_key=names[2], present_value=names[3], **ring)


def metadata_json(cfg: TQConfig, plans: list[LayerPlan], source: str, shared_buffer_ok: bool) -> str:
    return json.dumps({
        # version 1 unless a layer splits its widths: models without them stay readable by older tq-ort
        "layout_version": 2 if any(p.key_hi or p.value_hi for p in plans) else 1,
        "seed": cfg.seed,
        "source": source,
        "requested": {"key_bits": cfg.key_bits, "value_bits": cfg.value_bits, "use_qjl": cfg.use_qjl,
                      "keys_only": cfg.keys_only, "protect_layers": list(cfg.protect_layers),
                      "protect_bits": cfg.protect_bits, "recent_window": cfg.recent_window,
                      **({"layer_bits": [list(e) for e in cfg.layer_bits], "layer_bits_source": cfg.layer_bits_source}
                         if cfg.layer_bits else {})},
        "shared_buffer_ok": shared_buffer_ok,
        "target": cfg.target,
        "layers": [asdict(p) for p in plans],
    })


def check_layout_version(cfg: dict, where: str = "model") -> dict:
    """cfg (a turboquant.config) if its row layout is the one this tq-ort reads and writes; else a
    ValueError naming `where` (the file), the found and the supported version."""
    found = cfg.get("layout_version")
    if found not in READ_LAYOUT_VERSIONS or isinstance(found, bool):
        raise ValueError(f"{where}: TurboQuant row layout version {found!r} ('{METADATA_KEY}' layout_version); this "
                         f"tq-ort reads layout versions {', '.join(map(str, READ_LAYOUT_VERSIONS))} (docs/ops.md 1.4): "
                         "rewrite the model again from its float export with this tq-ort")
    return cfg


def read_metadata(model, where: str = "model") -> dict:
    """The rewrite configuration stored in an onnx.ModelProto or onnx_ir.Model, its layout version
    checked (`where` names the file in errors)."""
    props = model.metadata_props
    if isinstance(props, dict):
        raw = props.get(METADATA_KEY)
    else:
        raw = next((p.value for p in props if p.key == METADATA_KEY), None)
    if raw is None:
        raise ValueError(f"{where}: model has no '{METADATA_KEY}' metadata: it was not rewritten by tq-ort")
    try:
        cfg = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: '{METADATA_KEY}' metadata is not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{where}: '{METADATA_KEY}' metadata is a {type(cfg).__name__}; expected a JSON object")
    return check_layout_version(cfg, where)


def load_header(path: str | Path) -> onnx.ModelProto:
    """The ONNX model at `path` without its external weights; a clear error for a file that is not a
    complete ONNX model (truncated by a full disk or an interrupted copy, or not ONNX at all)."""
    import onnx
    from google.protobuf.message import DecodeError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such model")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError) as e:
        raise ValueError(f"{path}: not a readable ONNX model ({path.stat().st_size} bytes; truncated, corrupt or not "
                         f"ONNX?): {type(e).__name__}: {e}") from None
    if not model.HasField("graph") or not model.opset_import:
        raise ValueError(f"{path}: ONNX model without a graph or opset imports ({path.stat().st_size} bytes; "
                         "truncated?)")
    return model


def model_config(path: str | Path) -> dict | None:
    """The turboquant.config of the model file at `path` (None for a model tq-ort did not rewrite),
    read without the weights, its layout version checked against this tq-ort's."""
    return config_or_none(load_header(path), str(path))


def config_or_none(model: onnx.ModelProto, where: str = "model") -> dict | None:
    """read_metadata(model, where), or None for a model without turboquant metadata."""
    if not any(p.key == METADATA_KEY for p in model.metadata_props):
        return None
    return read_metadata(model, where)
