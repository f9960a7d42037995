"""The compression flags shared by export, rewrite and eval, and the TQConfig they give."""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # graph_passes is imported only when a config is built: --help stays light
    from graph_passes import TQConfig


def add_codec_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("compression")
    g.add_argument("--key-bits", type=int, default=4, help="bits per key coordinate, 1-4 or 8 (default 4; "
                   "with --qjl one of them is the QJL sign bit)")
    g.add_argument("--value-bits", type=int, default=4, help="bits per value coordinate, 1-4 or 8 (default 4)")
    g.add_argument("--qjl", action="store_true", help="add the 1-bit QJL residual sketch to keys (unbiased scores)")
    g.add_argument("--keys-only", action="store_true", help="compress keys only; values stay float")
    g.add_argument("--protect-layers", default="", help="comma-separated layers kept at --protect-bits, "
                   "negative counts from the end (e.g. 0,1,-2,-1)")
    g.add_argument("--protect-bits", type=int, default=8, help="bits for protected layers (default 8)")
    g.add_argument("--recent-window", type=int, default=0, metavar="R",
                   help="also keep the last R cached tokens exact, in a fixed float ring beside the compressed rows "
                   "(costs R tokens of float cache; the biggest quality lever on small models, docs/quality.md; "
                   "default 0 = off)")
    g.add_argument("--seed", type=int, default=0, help="seed of the rotations and QJL matrices (default 0)")
    g.add_argument("--target", choices=("ort", "edge"), default="ort",
                   help="ort: TurboQuant custom ops (needs the tq-ort library); edge: standard ai.onnx ops only, "
                   "the cache still uint8 rows (onnxruntime-web, CoreML EP; no --qjl / --recent-window; docs/edge.md)")
    g.add_argument("--preset", help="a named configuration chosen from the quality sweep (docs/quality.md); "
                   "overrides the bit flags. See tq_ort/presets.py for the names and the numbers behind them")


def config_from_args(a: argparse.Namespace) -> TQConfig:
    """The validated TQConfig of the flags added by add_codec_args (a --preset overrides the bit flags)."""
    from graph_passes import TQConfig

    layers = tuple(int(x) for x in a.protect_layers.split(",") if x.strip()) if a.protect_layers else ()
    if getattr(a, "preset", None):
        from ..presets import preset_config

        kw = {k: (tuple(v) if k == "protect_layers" else v) for k, v in preset_config(a.preset).items()}
        cfg = TQConfig(**{"seed": a.seed, "recent_window": a.recent_window, **kw,
                          "target": getattr(a, "target", "ort")})
        cfg.validate()
        return cfg
    cfg = TQConfig(key_bits=a.key_bits, value_bits=a.value_bits, use_qjl=a.qjl, keys_only=a.keys_only,
                   protect_layers=layers, protect_bits=a.protect_bits, seed=a.seed, recent_window=a.recent_window,
                   target=getattr(a, "target", "ort"))
    cfg.validate()
    return cfg
