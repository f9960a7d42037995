"""The compression flags shared by export, rewrite and eval, and the TQConfig they give."""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # graph_passes is imported only when a config is built: --help stays light
    from graph_passes import TQConfig


def add_codec_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("compression")
    g.add_argument("--key-bits", type=_width, default=4, metavar="BITS",
                   help="bits per key coordinate: 1-6 or 8, or a split width such as 3.5 (half the rotated coordinates "
                   "at 4 bits, half at 3; steps of 8/head_dim; docs/ops.md 1.4.1) (default 4; with --qjl one of them "
                   "is the QJL sign bit)")
    g.add_argument("--value-bits", type=_width, default=4, metavar="BITS",
                   help="bits per value coordinate: 1-6 or 8, or a split width such as 2.5 (default 4)")
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
    g.add_argument("--layer-bits", metavar="SPEC|FILE",
                   help="per-layer widths overriding --key-bits/--value-bits for the listed layers: LAYER:K<b>V<b>,... "
                   "(negative layers count from the end, e.g. 0:K8V8,-1:K4V4) or an allocation file from "
                   "tq-ort calibrate --bits-budget")
    g.add_argument("--bits-budget", type=float, metavar="BITS",
                   help="choose every layer's key and value widths for this average bits per value (row bytes with "
                   "their scales, as tq-ort eval counts them; e.g. 3.5 = the bytes of K3V3) from --sensitivity: "
                   "deterministic, the same file and budget give the same widths")
    g.add_argument("--sensitivity", metavar="FILE", help="the per-layer sensitivity table (JSON) of tq-ort calibrate, "
                   "for --bits-budget")
    g.add_argument("--preset", help="a named configuration chosen from the quality sweep (docs/quality.md); "
                   "overrides the bit flags. See tq_ort/presets.py for the names and the numbers behind them")


def _width(text: str):
    from graph_passes.widths import parse_width

    try:
        return parse_width(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def config_from_args(a: argparse.Namespace) -> TQConfig:
    """The validated TQConfig of the flags added by add_codec_args (a --preset overrides the bit flags)."""
    from graph_passes import TQConfig

    layers = tuple(int(x) for x in a.protect_layers.split(",") if x.strip()) if a.protect_layers else ()
    alloc = _layer_bits_from_args(a)
    if getattr(a, "preset", None):
        from ..presets import preset_config

        kw = {k: (tuple(v) if k == "protect_layers" else v) for k, v in preset_config(a.preset).items()}
        cfg = TQConfig(**{"seed": a.seed, "recent_window": a.recent_window, **kw,
                          "target": getattr(a, "target", "ort"), **alloc})
        cfg.validate()
        return cfg
    cfg = TQConfig(key_bits=a.key_bits, value_bits=a.value_bits, use_qjl=a.qjl, keys_only=a.keys_only,
                   protect_layers=layers, protect_bits=a.protect_bits, seed=a.seed, recent_window=a.recent_window,
                   target=getattr(a, "target", "ort"), **alloc)
    cfg.validate()
    return cfg


def _layer_bits_from_args(a: argparse.Namespace) -> dict:
    """TQConfig layer_bits / layer_bits_source of --layer-bits, or of --bits-budget with --sensitivity."""
    spec, budget, sens = getattr(a, "layer_bits", None), getattr(a, "bits_budget", None), getattr(a, "sensitivity", None)
    if spec and budget is not None:
        raise ValueError("--layer-bits and --bits-budget both given: pass the widths (--layer-bits) or a budget to "
                         "choose them (--bits-budget with --sensitivity), not both")
    if (budget is None) != (sens is None):
        raise ValueError("--bits-budget and --sensitivity go together: --bits-budget BITS --sensitivity FILE "
                         "(the table written by tq-ort calibrate)")
    if budget is not None and (a.qjl or a.keys_only):
        raise ValueError("--bits-budget chooses plain key and value widths: it does not combine with "
                         + ("--qjl" if a.qjl else "--keys-only") + "; give --layer-bits instead")
    if not spec and budget is None:
        return {}
    from ..quality.runners import budget_arg, layer_bits_arg

    lb, tag = layer_bits_arg(spec) if spec else budget_arg(budget, sens)
    return {"layer_bits": lb, "layer_bits_source": tag}
