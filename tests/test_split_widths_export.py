"""Split widths through the passes, the CLI and the session (docs/ops.md 1.4.1): `--key-bits 3.5`
gives layout-version-2 rows whose error lies between the two whole widths on a real graph."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from graph_passes import TQConfig, rewrite_file
from graph_passes.layer_bits import format_layer_bits, parse_layer_bits
from graph_passes.widths import parse_width, split_width
from tiny_exports import library_has_attention, tiny_export

needs_ops = pytest.mark.skipif(not library_has_attention(), reason="custom-op library without TurboQuantAttention")


def test_widths_parse_and_split():
    assert parse_width("4") == 4 and isinstance(parse_width("4.0"), int) and parse_width("3.5") == 3.5
    assert split_width(3.5, 64) == (3, 32) and split_width(2.25, 128) == (2, 32) and split_width(4, 80) == (4, 0)
    assert split_width(4.5, 80) == (4, 40)
    with pytest.raises(ValueError, match="key_bits=3.25 on head_dim 80: 0.25 x 80 = 20 coordinates"):
        split_width(3.25, 80, "key_bits")
    for bad in (6.5, 7, 0.5, float("nan")):
        with pytest.raises(ValueError, match="split width"):
            split_width(bad, 64)
    with pytest.raises(ValueError, match="expected bits per coordinate"):
        parse_width("three")


def test_layer_bits_take_split_widths():
    lb = parse_layer_bits("0:K3.5V3,-1:K8V2.5")
    assert lb == ((0, 3.5, 3), (-1, 8, 2.5))
    assert parse_layer_bits(format_layer_bits(lb)) == lb
    TQConfig(layer_bits=lb).validate()
    assert TQConfig(layer_bits=[[0, 4.0, 3]]) == TQConfig(layer_bits=((0, 4, 3),))


def test_cli_flags_take_split_widths(capsys):
    from tq_ort.cli.main import build_parser
    from tq_ort.cli.codec_flags import config_from_args

    for cmd in ("rewrite", "export", "eval"):
        extra = {"rewrite": ["in.onnx", "-o", "out.onnx"], "export": ["-o", "out"], "eval": []}[cmd]
        a = build_parser().parse_args([cmd, *extra, "--key-bits", "3.5", "--value-bits", "2.5"])
        cfg = config_from_args(a)
        assert (cfg.key_bits, cfg.value_bits) == (3.5, 2.5), cmd
    with pytest.raises(SystemExit):
        build_parser().parse_args(["rewrite", "in.onnx", "-o", "o.onnx", "--key-bits", "3.x"])
    assert "expected bits per coordinate, e.g. 4 or 3.5" in capsys.readouterr().err


@pytest.mark.parametrize("kw,msg", [
    (dict(key_bits=6.5), "key_bits=6.5: expected one of"),
    (dict(value_bits=0.5), "value_bits=0.5"),
    (dict(key_bits=3.5, target="edge"), "--key-bits: split widths (e.g. 3.5) are not supported with --target edge"),
    (dict(layer_bits=((0, 3, 2.5),), target="edge"), "--layer-bits: split widths"),
])
def test_config_refuses(kw, msg):
    with pytest.raises(ValueError) as e:
        TQConfig(**kw).validate()
    assert msg in str(e.value)


def test_width_that_does_not_fit_the_head_dim(tmp_path):
    with pytest.raises(ValueError, match="multiple of 8"):
        rewrite_file(tiny_export("llama"), tmp_path / "m.onnx", TQConfig(key_bits=3.0625))


@needs_ops
def test_rewrite_writes_split_layers(tmp_path):
    from tq_ort.inspect import load_config, memory
    from tq_ort.session import DecoderSession

    src = tiny_export("llama")
    dst = rewrite_file(src, tmp_path / "model.onnx", TQConfig(key_bits=3.5, value_bits=2.5,
                                                              layer_bits=((0, 4, 4),)))
    cfg = load_config(dst)
    assert cfg["layout_version"] == 2
    L0, L1 = cfg["layers"][0], cfg["layers"][1]
    d = L1["head_dim"]
    assert (L0["key_hi"], L0["value_hi"]) == (0, 0)
    assert (L1["key_bits"], L1["key_hi"], L1["value_bits"], L1["value_hi"]) == (3, d // 2, 2, d // 2)
    m = onnx.load(str(dst))
    inits = {t.name: t for t in m.graph.initializer}
    nodes = [n for n in m.graph.node if n.op_type == "TurboQuantAttention"]
    attrs = {a.name: a.i for a in nodes[1].attribute}
    assert attrs["key_hi_channels"] == d // 2 and attrs["value_hi_channels"] == d // 2
    assert "key_hi_channels" not in {a.name for a in nodes[0].attribute}
    kcb = inits[nodes[1].input[8]]
    assert list(kcb.dims) == [8 + 16]
    rows = memory(cfg, 50)["layers"]
    assert (rows[1]["key_bits"], rows[1]["value_bits"]) == (3.5, 2.5)
    sess = DecoderSession(dst, max_length=50)
    sess.reset()
    sess.step(np.arange(5)[None, :])
    assert memory(cfg, 50)["cache_bytes"] == sess.cache_bytes()
    assert L1["key_row_bytes"] == 4 + (d // 2) * 4 // 8 + (d // 2) * 3 // 8


@needs_ops
def test_error_falls_between_the_whole_widths(tmp_path):
    """Mean next-token logit error over 32 greedy steps (two prompts): K3V3 > K3.5V3.5 > K4V4 and
    K2V2 > K2.5V2.5 > K3V3 (measured gaps of 15-45%, the same fixed model and prompts each time)."""
    from test_rewrite_parity import greedy_parity

    src = tiny_export("llama")

    def err(w):
        dst = rewrite_file(src, tmp_path / f"m{w}.onnx", TQConfig(key_bits=w, value_bits=w))
        return float(np.mean([greedy_parity(src, dst, seed=s)[0].mean() for s in (0, 1)]))

    e = {w: err(w) for w in (2, 2.5, 3, 3.5, 4)}
    assert e[2] > e[2.5] > e[3] > e[3.5] > e[4], e


def test_trt_build_refuses_split_widths(tmp_path):
    from tq_ort.trt.build import _check_widths

    cfg = {"layers": [{"layer": 0, "key_hi": 0, "value_hi": 0}, {"layer": 1, "key_hi": 32, "value_hi": 0}]}
    with pytest.raises(ValueError, match=r"layers \[1\] use split widths"):
        _check_widths(cfg, tmp_path / "m.onnx")
    _check_widths(json.loads(json.dumps({"layers": [{"layer": 0}]})), tmp_path / "m.onnx")  # older metadata
