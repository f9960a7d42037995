"""`--preset`: every preset is a valid configuration, its quoted numbers are the ones in the results
file it names (no drift), and the CLI writes it into the rewritten model."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from graph_passes import TQConfig, read_metadata
from tiny_exports import tiny_export
from tq_ort.cli.main import main
from tq_ort.presets import PRESETS, preset_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_numbers_are_the_measured_ones(name):
    TQConfig(**preset_config(name)).validate()
    m = PRESETS[name]["measured"]
    record = json.loads((ROOT / m["results"]).read_text())
    row = next(r for r in record["results"] if r["label"] == m["label"])
    cfg = preset_config(name)
    for k, v in cfg.items():  # the measured row is this very configuration
        assert row["config"].get(k, 0) == v, (name, k, row["config"])
    assert round(row["compression"], 2) == m["compression"]
    assert round(row["ppl_delta_pct"]["all"], 2) == m["ppl_delta_pct"]
    assert round(row["kl"]["all"], 4) == m["kl"]
    assert round(row["generation"]["agreement"], 3) == m["greedy_agreement"]


def test_cli_preset_is_written_into_the_model(tmp_path):
    out = tmp_path / "model.onnx"
    assert main(["rewrite", str(tiny_export("llama")), "-o", str(out), "--preset", "balanced"]) == 0
    import onnx

    req = read_metadata(onnx.load(str(out), load_external_data=False))["requested"]
    want = preset_config("balanced")
    assert {k: req[k] for k in want} == want


def test_unknown_preset_lists_the_names(tmp_path, capsys):
    assert main(["rewrite", str(tiny_export("llama")), "-o", str(tmp_path / "o.onnx"), "--preset", "best"]) == 2
    err = capsys.readouterr().err
    assert "preset 'best'" in err and all(n in err for n in PRESETS)
