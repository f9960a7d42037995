"""Per-layer bit allocation (issue 21 item 3): TQConfig.layer_bits through plan_layer, the metadata and the
session; the --layer-bits / --bits-budget / --sensitivity flags; the budget solver; tq-ort calibrate end to end.

The solver tests use synthetic sensitivity tables (costs chosen by hand, or random ones checked against
brute-force enumeration); the calibrate test measures the tiny llama of tests/tiny_exports.py (~20 s).
"""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from tiny_exports import library_has_attention, tiny_export

REPO = Path(__file__).resolve().parents[1]
HAS_ATTENTION = library_has_attention()
NAMES = ("past_key_values.0.key", "past_key_values.0.value", "present.0.key", "present.0.value")


def _plan(cfg, layer, n=4, d=64):
    from graph_passes.config import plan_layer

    return plan_layer(cfg, layer, n, head_dim=d, kv_heads=2, num_heads=4, names=NAMES)


def sensitivity(costs: dict[tuple[int, str], dict[int, float]], *, kv_heads: int = 1, head_dim: int = 64,
                base_bits: int = 8) -> dict:
    """A synthetic sensitivity record (the format tq-ort calibrate writes) with the given cell costs."""
    from tq_ort.quality.allocation import FORMAT_SENSITIVITY

    layers = sorted({L for L, _ in costs})
    widths = sorted({b for c in costs.values() for b in c})
    cells = [{"layer": L, "kind": k, "bits": b, "ppl_delta_pct": 0.0, "kl": c, "cost": {"kl": c, "nll": c / 2}}
             for (L, k), cs in sorted(costs.items()) for b, c in sorted(cs.items())]
    return {"format": FORMAT_SENSITIVITY, "base_bits": base_bits, "widths": widths, "seed": 0, "recent_window": 0,
            "layers": [{"layer": L, "kv_heads": kv_heads, "head_dim": head_dim} for L in layers], "cells": cells,
            "model": {"name": "synthetic"}, "texts": [], "settings": {}}


# -- plan_layer and the config ---------------------------------------------------------------------------
def test_plan_layer_honours_the_allocation():
    from graph_passes import TQConfig
    from tq_ort import codec

    cfg = TQConfig(key_bits=4, value_bits=3, layer_bits=((0, 8, 2), (-1, 2, 4)))
    cfg.validate()
    got = [(p.key_bits, p.value_bits, p.key_row_bytes, p.value_row_bytes) for p in (_plan(cfg, i) for i in range(4))]
    assert got == [(8, 2, codec.row_bytes(64, 8), codec.row_bytes(64, 2)),
                   (4, 3, codec.row_bytes(64, 4), codec.row_bytes(64, 3)),
                   (4, 3, codec.row_bytes(64, 4), codec.row_bytes(64, 3)),
                   (2, 4, codec.row_bytes(64, 2), codec.row_bytes(64, 4))]
    # with protect_layers on other layers, and QJL (key bits count the sign bit, as key_bits does)
    p = _plan(TQConfig(key_bits=4, value_bits=4, use_qjl=True, protect_layers=(0,), layer_bits=((1, 3, 2),)), 1)
    assert (p.key_bits, p.use_qjl, p.value_bits) == (2, True, 2)
    assert _plan(TQConfig(protect_layers=(0,), layer_bits=((1, 3, 2),)), 0).key_bits == 8
    # keys only: value_bits 0 in the allocation, values stay float
    p = _plan(TQConfig(keys_only=True, layer_bits=((2, 2, 0),)), 2)
    assert (p.key_bits, p.value_bits, p.value_row_bytes) == (2, 0, 0)
    # lists (from JSON) compare equal to tuples
    assert TQConfig(layer_bits=[[0, 8, 2]]) == TQConfig(layer_bits=((0, 8, 2),))


@pytest.mark.parametrize("kw,msg", [
    (dict(layer_bits=((0, 7, 4),)), "layer 0: key_bits=7"),
    (dict(layer_bits=((0, 6.5, 4),)), "layer 0: key_bits=6.5"),
    (dict(layer_bits=((0, 4, 7),)), "layer 0: value_bits=7"),
    (dict(layer_bits=((0, 4, 4), (0, 2, 2))), "layer 0 is given twice"),
    (dict(layer_bits=((0, 4),)), "expected (layer, key_bits, value_bits)"),
    (dict(layer_bits=((0, 4, True),)), "a layer index and two widths"),
    (dict(layer_bits="0:K4V4"), "expected a tuple"),
    (dict(use_qjl=True, layer_bits=((1, 1, 4),)), "key_bits-1"),
    (dict(keys_only=True, layer_bits=((1, 4, 4),)), "with keys_only"),
])
def test_bad_allocations_are_refused_naming_the_flag(kw, msg):
    from graph_passes import TQConfig

    with pytest.raises(ValueError, match="--layer-bits") as e:
        TQConfig(**kw).validate()
    assert msg in str(e.value)


@pytest.mark.parametrize("lb,protect,msg", [
    (((4, 4, 4),), (), "layer 4 out of range: the model has 4 layers"),
    (((-5, 4, 4),), (), "layer -5 out of range"),
    (((1, 4, 4), (-3, 2, 2)), (), "layers 1 and -3 are the same layer"),
    (((-1, 4, 4),), (3,), "also in --protect-layers"),
])
def test_allocation_checked_against_the_layer_count(lb, protect, msg):
    from graph_passes import TQConfig

    cfg = TQConfig(layer_bits=lb, protect_layers=protect)
    cfg.validate()  # the entries alone are fine; the model's layer count decides
    with pytest.raises(ValueError, match="--layer-bits") as e:
        _plan(cfg, 0)
    assert msg in str(e.value)


def test_inline_spec_round_trip_and_errors():
    from graph_passes.layer_bits import format_layer_bits, parse_layer_bits

    lb = parse_layer_bits(" 0:K8V8, -1:k4v3,5:K2")
    assert lb == ((0, 8, 8), (-1, 4, 3), (5, 2, 0))
    assert parse_layer_bits(format_layer_bits(lb)) == lb
    for bad in ("0=K4V4", "x:K4V4", "0:V4", "0:K4Vx", ",", "0:"):
        with pytest.raises(ValueError, match="--layer-bits"):
            parse_layer_bits(bad)


# -- the flags: one config path for export, rewrite and eval --------------------------------------------
def test_flag_errors(tmp_path):
    from tq_ort.cli.codec_flags import config_from_args
    from tq_ort.cli.main import build_parser

    sens = tmp_path / "s.json"
    sens.write_text(json.dumps(sensitivity({(0, "key"): {2: 1.0}, (0, "value"): {2: 1.0}})))
    p = build_parser()
    cases = [(["--layer-bits", "0:K4V4", "--bits-budget", "3", "--sensitivity", str(sens)], "not both"),
             (["--bits-budget", "3"], "go together"), (["--sensitivity", str(sens)], "go together"),
             (["--bits-budget", "3.5", "--sensitivity", str(sens), "--qjl"], "--qjl"),
             (["--bits-budget", "1.0", "--sensitivity", str(sens)], "below the narrowest"),
             (["--bits-budget", "-1", "--sensitivity", str(sens)], "positive"),
             (["--layer-bits", str(sens)], "expected an allocation file"),
             (["--layer-bits", "0:K9V4"], "key_bits=9")]
    for flags, msg in cases:
        with pytest.raises(ValueError, match="--") as e:
            config_from_args(p.parse_args(["export", "-o", "x", *flags]))
        assert msg in str(e.value), (flags, str(e.value))
    with pytest.raises(FileNotFoundError, match="no-such.json"):
        config_from_args(p.parse_args(["export", "-o", "x", "--layer-bits", str(tmp_path / "no-such.json")]))


def test_budget_flags_mean_the_same_everywhere(tmp_path):
    """--bits-budget/--sensitivity, --layer-bits FILE and --variant budget=/layers= give one TQConfig."""
    from tq_ort.cli.codec_flags import config_from_args
    from tq_ort.cli.eval import variants_from_args
    from tq_ort.cli.main import build_parser
    from tq_ort.quality import parse_variant
    from tq_ort.quality.allocation import allocation_from_sensitivity

    rng = np.random.default_rng(3)
    sens = tmp_path / "s.json"
    sens.write_text(json.dumps(sensitivity({(L, k): {2: float(rng.uniform(1, 2)), 3: float(rng.uniform(0.3, 1)),
                                                     4: float(rng.uniform(0, 0.3))}
                                            for L in range(4) for k in ("key", "value")})))
    alloc = tmp_path / "a.json"
    alloc.write_text(json.dumps(allocation_from_sensitivity(sens, 3.5)))
    p = build_parser()
    flags = ["--bits-budget", "3.5", "--sensitivity", str(sens), "--recent-window", "16"]
    want = config_from_args(p.parse_args(["export", "-o", "x", *flags]))
    assert len(want.layer_bits) == 4 and want.layer_bits_source.startswith("alloc3.5b-")
    assert config_from_args(p.parse_args(["rewrite", "i.onnx", "-o", "o.onnx", *flags])) == want
    (v,) = variants_from_args(p.parse_args(["eval", *flags]))
    assert v.tq_config() == want and v.label == f"{want.layer_bits_source} recent16"
    from_file = config_from_args(p.parse_args(["export", "-o", "x", "--layer-bits", str(alloc), "--recent-window", "16"]))
    assert from_file == want
    assert parse_variant(f"K4V4+layers={alloc}+recent16").tq_config() == want
    assert parse_variant(f"K4V4+budget=3.5@{sens}+recent16").tq_config() == want
    inline = parse_variant("K4V3+layers=0:K8V8,-1:K2V3")
    assert inline.label == "K4V3 layers=0:K8V8,-1:K2V3" and inline.describe()["layer_bits"] == [[0, 8, 8], [-1, 2, 3]]
    assert inline.family == "TurboQuant, per-layer widths"


# -- the solver -------------------------------------------------------------------------------------------
def test_solver_is_optimal_on_a_hand_checked_case():
    """Layer 0's keys are worthless at 3 bits and good at 4 (a non-convex cost curve): with 24 bytes above
    the all-2-bit rows (budget 3.25 bits: rows of 20/28/36 bytes at 2/3/4 bits, 32 bytes = 1 bit/value),
    the optimum spends 16 of them on K0 2->4 (saves 1.0) and 8 on V0 2->3 (saves 0.2): cost 1.75 - 1.2 = 0.55.
    A greedy of single-step upgrades would take V0, K1 and V1 to 3 bits (saves 0.45: cost 1.30)."""
    from tq_ort.quality.allocation import allocate

    s = sensitivity({(0, "key"): {2: 1.0, 3: 0.95, 4: 0.0}, (0, "value"): {2: 0.3, 3: 0.1, 4: 0.05},
                     (1, "key"): {2: 0.25, 3: 0.1, 4: 0.05}, (1, "value"): {2: 0.2, 3: 0.1, 4: 0.05}})
    a = allocate(s, 3.25)
    assert a["layer_bits"] == [[0, 4, 3], [1, 2, 2]]
    assert a["predicted_cost"]["kl"] == pytest.approx(0.55)
    assert a["bytes_per_token"] == 36 + 28 + 20 + 20 and a["bits_per_value"] == pytest.approx(3.25)
    # a bigger budget buys 8 bits where it pays: 8-bit keys cost 0 like 4-bit ones here, so the wider wins ties
    assert allocate(s, 8.5)["layer_bits"] == [[0, 8, 8], [1, 8, 8]]
    assert allocate(s, 2.5)["layer_bits"] == [[0, 2, 2], [1, 2, 2]]


def _brute(s: dict, budget: float) -> float:
    from tq_ort import codec
    from tq_ort.quality.allocation import cost_table

    table = cost_table(s)
    groups = sorted(table)
    dims = {L["layer"]: L for L in s["layers"]}
    cap = budget * sum(2 * L["kv_heads"] * L["head_dim"] for L in s["layers"]) / 8
    best = float("inf")
    for combo in itertools.product(*(sorted(table[g]) for g in groups)):
        b = sum(dims[g[0]]["kv_heads"] * codec.row_bytes(dims[g[0]]["head_dim"], w) for g, w in zip(groups, combo))
        if b <= cap + 1e-9:
            best = min(best, sum(table[g][w] for g, w in zip(groups, combo)))
    return best


@pytest.mark.parametrize("seed", range(4))
def test_solver_matches_brute_force_and_meets_the_budget(seed):
    from tq_ort.quality.allocation import allocate, bits_per_value, cost_table

    rng = np.random.default_rng(seed)
    s = sensitivity({(L, k): {b: float(c) for b, c in zip((2, 3, 4), np.sort(rng.exponential(1, 3))[::-1])}
                     for L in range(3) for k in ("key", "value")}, kv_heads=2)
    table = cost_table(s)
    for budget in (2.6, 3.0, 3.5, 4.0, 5.2):
        a = allocate(s, budget)
        widths = {(L, "key"): k for L, k, _ in a["layer_bits"]} | {(L, "value"): v for L, _, v in a["layer_bits"]}
        assert a["bits_per_value"] <= budget + 1e-9
        assert bits_per_value(s["layers"], widths) == pytest.approx(a["bits_per_value"])
        assert sum(table[g][w] for g, w in widths.items()) == pytest.approx(a["predicted_cost"]["kl"])
        assert a["predicted_cost"]["kl"] == pytest.approx(_brute(s, budget)), budget


def test_solver_is_deterministic_and_costs_monotone():
    """Same table -> same allocation, whatever the order of the cells; a cell cheaper than a wider one of its
    group (noise) takes the wider one's cost."""
    from tq_ort.quality.allocation import allocate, cost_table

    rng = np.random.default_rng(0)
    s = sensitivity({(L, k): {2: float(rng.uniform(0.5, 1)), 3: float(rng.uniform(0, 0.5)), 4: 0.01}
                     for L in range(5) for k in ("key", "value")})
    s["cells"][2]["cost"]["kl"] = -0.01  # layer 0 keys at 4 bits, below the 8-bit baseline
    a = allocate(s, 3.6)
    shuffled = dict(s, cells=[s["cells"][i] for i in rng.permutation(len(s["cells"]))])
    assert allocate(shuffled, 3.6) == a and allocate(s, 3.6) == a
    assert cost_table(s)[(0, "key")][4] == 0.0 and cost_table(s)[(0, "key")][8] == 0.0
    with pytest.raises(ValueError, match="no measurement"):
        allocate(dict(s, cells=[c for c in s["cells"] if c["layer"] != 3]), 3.6)


# -- through a real rewrite ------------------------------------------------------------------------------
def test_rewrite_records_the_allocation_and_eval_counts_its_bytes(tmp_path):
    """`tq-ort rewrite --layer-bits`: the cache inputs have each layer's row width, the metadata records the
    request, inspect shows it, and the solver's bits/value is what `tq-ort eval` counts for that model."""
    import onnx

    from graph_passes import read_metadata
    from tq_ort import codec
    from tq_ort.cli.main import main
    from tq_ort.inspect import inspect_model
    from tq_ort.quality import bytes_of, parse_variant
    from tq_ort.quality.allocation import allocate

    s = sensitivity({(L, k): {2: 1.0 + L, 3: 0.5, 4: 0.1} for L in range(2) for k in ("key", "value")}, kv_heads=2)
    sens = tmp_path / "s.json"
    sens.write_text(json.dumps(s))
    out = tmp_path / "m.onnx"
    assert main(["rewrite", str(tiny_export("llama")), "-o", str(out), "--bits-budget", "3.5",
                 "--sensitivity", str(sens)]) == 0
    a = allocate(s, 3.5)
    m = onnx.load(str(out), load_external_data=False)
    meta = read_metadata(m)
    assert meta["requested"]["layer_bits"] == a["layer_bits"] and meta["requested"]["layer_bits_source"] == a["tag"]
    assert [[L["layer"], L["key_bits"], L["value_bits"]] for L in meta["layers"]] == a["layer_bits"]
    dims = {i.name: i.type.tensor_type.shape.dim[3].dim_value for i in m.graph.input
            if i.name.startswith("past_key_values.")}
    for L, kb, vb in a["layer_bits"]:
        assert dims[f"past_key_values.{L}.key"] == codec.row_bytes(64, kb)
        assert dims[f"past_key_values.{L}.value"] == codec.row_bytes(64, vb)
    assert bytes_of(parse_variant("K4V4"), out, 64)["bits_per_value"] == pytest.approx(a["bits_per_value"])
    text = inspect_model(out)
    assert f"layer_bits ({a['tag']}): {a['spec']}" in text and f"rows average {a['bits_per_value']:.3f}" in text


@pytest.mark.skipif(not HAS_ATTENTION, reason="custom-op library without TurboQuantAttention")
def test_session_runs_mixed_widths(tmp_path):
    """A model whose layers have different row widths decodes; its cache buffers have each layer's width;
    changing one layer's width changes the logits (the allocation reaches the op)."""
    from graph_passes import TQConfig, rewrite_file
    from tq_ort.session import DecoderSession

    src = tiny_export("llama")
    logits = []
    for lb in (((0, 8, 8), (1, 2, 3)), ((0, 8, 8), (1, 4, 3))):
        dst = rewrite_file(src, tmp_path / f"{lb[1][1]}.onnx", TQConfig(layer_bits=lb))
        s = DecoderSession(dst, max_length=32)
        s.reset(1)
        ids = np.arange(1, 13)[None]
        s.step(ids[:, :8])
        logits.append(np.concatenate([s.step(ids[:, t:t + 1]) for t in range(8, 12)]))
        widths = {name: spec.width for name, spec in ((sp.past, sp) for sp in s.specs)}
        assert widths["past_key_values.0.key"] == 68 and widths["past_key_values.1.key"] == 4 + 8 * lb[1][1]
        assert np.isfinite(logits[-1]).all()
    assert np.abs(logits[0] - logits[1]).max() > 1e-4


# -- tq-ort calibrate end to end -----------------------------------------------------------------------
@pytest.mark.skipif(not HAS_ATTENTION, reason="custom-op library without TurboQuantAttention")
def test_calibrate_end_to_end(tmp_path, monkeypatch, capsys):
    """The tiny llama on 256 tokens of the repository's docs: 2 layers x K/V x 3 widths, the table, its
    markdown and heatmap, allocations that meet their budgets, the same widths when export solves again."""
    from tq_ort.cli.codec_flags import config_from_args
    from tq_ort.cli.main import build_parser, main

    monkeypatch.setenv("TQ_ORT_CACHE", str(tmp_path / "cache"))
    text = tmp_path / "docs.txt"
    text.write_text((REPO / "docs" / "ops.md").read_text())
    hf = tiny_export("llama").parent.parent / "llama-hf"
    out = tmp_path / "res"
    args = ["calibrate", str(hf), "--texts", f"file:{text}:256", "--context", "32", "--batch", "8", "--quiet",
            "--bits-budget", "3.5", "--bits-budget", "5", "--results-dir", str(out), "--name", "t"]
    assert main(args) == 0
    sens = json.loads((out / "t.json").read_text())
    assert len(sens["cells"]) == 2 * 2 * 3 and {c["bits"] for c in sens["cells"]} == {2, 3, 4}
    assert all(np.isfinite(c["cost"]["kl"]) and np.isfinite(c["cost"]["nll"]) for c in sens["cells"])
    kl = {(c["layer"], c["kind"], c["bits"]): c["kl"] for c in sens["cells"]}
    assert all(kl[(L, k, 2)] > kl[(L, k, 4)] for L in range(2) for k in ("key", "value"))  # 2 bits hurt more
    assert (out / "t.md").read_text().count("\n| ") >= 3 and (out / "t.png").stat().st_size > 1000
    allocs = {b: json.loads((out / f"t-alloc{b}.json").read_text()) for b in ("3.5", "5")}
    for b, a in allocs.items():
        assert a["bits_per_value"] <= float(b) + 1e-9 and a["sensitivity"]["sha256"]
    again = config_from_args(build_parser().parse_args(
        ["export", "-o", "x", "--bits-budget", "3.5", "--sensitivity", str(out / "t.json")]))
    assert [list(e) for e in again.layer_bits] == allocs["3.5"]["layer_bits"]
    # a second run reuses every measured cell and writes the same table
    assert main(args) == 0
    assert "12 cells (12 reused" in capsys.readouterr().err
    assert [c["cost"] for c in json.loads((out / "t.json").read_text())["cells"]] == [c["cost"] for c in sens["cells"]]
