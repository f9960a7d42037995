"""`tq-ort check` (polygraphy parity): passes on good rewritten tiny models, fails (exit 1, naming the step
and output) on a corrupted codebook, exit 2 on usage errors; its thresholds; `polygraphy run --tq-onnxrt`."""
from __future__ import annotations

import math
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

from tiny_exports import library_has_attention, rewritten_folder, tiny_export
from tq_ort.cli.main import main

pytest.importorskip("polygraphy")
pytestmark = pytest.mark.skipif(not library_has_attention(), reason="custom-op library without TurboQuantAttention")


def corrupt_codebooks(folder: Path, factor: float) -> None:
    """Scale every codebook initializer (stays ascending, so the op accepts it: garbage, not an error)."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(folder / "model.onnx"))
    hit = 0
    for init in m.graph.initializer:
        if init.name.startswith("tq.codebook"):
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(factor), init.name))
            hit += 1
    assert hit, "no codebook initializer found"
    onnx.save(m, str(folder / "model.onnx"))


@pytest.mark.parametrize("family,flags", [("llama", ()), ("gpt2", ("--key-bits", "3", "--value-bits", "2")),
                                          ("gemma3", ("--recent-window", "4"))])
def test_good_models_pass(tmp_path, capsys, family, flags):
    out = rewritten_folder(tmp_path, family, *flags)
    res = tmp_path / "results.json"
    assert main(["check", str(out), "--steps", "16", "--save-results", str(res)]) == 0
    text = capsys.readouterr().out
    assert "PASS (a) float export vs rewritten" in text and "PASSED" in text
    assert "Accuracy Summary | float-ort-cpu vs. tq-ort-cpu" in text  # polygraphy's report
    from polygraphy.comparator import RunResults

    runs = RunResults.load(str(res))
    assert list(runs.keys())[:2] == ["float-ort-cpu", "tq-ort-cpu"]
    assert len(runs["tq-ort-cpu"]) == 17 and runs["tq-ort-cpu"][0]["logits"].shape == (1, 300)


def test_a_corrupted_codebook_fails(tmp_path, capsys):
    out = rewritten_folder(tmp_path, "llama")
    corrupt_codebooks(out, 4.0)  # e.g. the centroids of a 16x smaller head_dim
    assert main(["check", str(out), "--steps", "16", "--quiet"]) == 1
    text = capsys.readouterr().out
    assert "FAIL (a) float export vs rewritten" in text and text.rstrip().endswith("FAILED")
    assert "output 'logits' (1, 300): SNR" in text and "|diff| mean" in text
    assert "mean logits SNR over decode steps 1..16" in text


def test_a_slightly_scaled_codebook_lowers_the_snr(tmp_path, capsys):
    """The SNR measures the corruption: 1.5x centroids pass a loose margin but lose SNR against a good model."""
    out = rewritten_folder(tmp_path, "llama")
    corrupt_codebooks(out, 1.5)
    from tq_ort.check.checker import CheckOptions, run_check

    rep = run_check(out, CheckOptions(steps=16, verbose=False, mean_margin_db=30, step_margin_db=30))
    assert rep.passed
    (a,) = rep.pairs
    good = run_check(rewritten_folder(tmp_path / "g", "llama"), CheckOptions(steps=16, verbose=False)).pairs[0]
    assert a.mean_snr < good.mean_snr - 1.0, (a.mean_snr, good.mean_snr)


def test_usage_errors_exit_2(tmp_path, capsys):
    assert main(["check", str(tmp_path / "missing")]) == 2
    assert "no such model" in capsys.readouterr().err
    src = tiny_export("llama")
    assert main(["check", str(src.parent)]) == 2
    assert "not rewritten by tq-ort" in capsys.readouterr().err
    out = rewritten_folder(tmp_path, "llama")
    (out / "model.onnx.original.json").unlink()
    assert main(["check", str(out)]) == 2
    assert "pass --original PATH" in capsys.readouterr().err
    assert main(["check", str(out), "--original", str(src), "--steps", "4", "--quiet"]) == 0
    assert main(["check", str(out), "--skip-float", "--steps", "0"]) == 2
    assert "steps=0" in capsys.readouterr().err
    assert main(["check", str(out), "--skip-float", "--engine", str(tmp_path / "nope.plan")]) == 2
    assert "no such engine" in capsys.readouterr().err


def test_thresholds_follow_the_bit_widths():
    from tq_ort.check import tolerances as tol

    # the closed-form distortion against the Gaussian Lloyd-Max values it approaches for large d
    for bits, gauss in {1: 0.3634, 2: 0.1175, 3: 0.03454, 4: 0.009497}.items():
        assert 0.97 * gauss < tol.distortion(256, bits) < gauss
    # and against a Monte Carlo run of the numpy reference codec
    from tq_ort import codec as C

    x = np.random.default_rng(0).standard_normal((4000, 64))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    rot, cb = C.rotation(64, 0), C.codebook(64, 4)
    mc = np.sum((C.decode(C.encode(x.astype(np.float32), rot, cb), rot, cb) - x) ** 2, axis=1).mean()
    assert abs(mc - tol.distortion(64, 4)) < 0.1 * mc
    layers = [{"layer": 0, "head_dim": 64, "key_bits": 4, "value_bits": 2}, {"layer": 1, "head_dim": 64,
                                                                            "key_bits": 8, "value_bits": 0}]
    snr, where = tol.kv_snr_db({"layers": layers})
    assert math.isclose(snr, -10 * math.log10(tol.distortion(64, 2))) and "layer 0 values: 2 bits" in where
    t = tol.float_vs_rewritten({"layers": layers})
    assert math.isclose(t.mean_snr_db, snr - tol.MEAN_MARGIN_DB) and math.isclose(t.step_snr_db, snr - tol.STEP_MARGIN_DB)


def _polygraphy_env(tmp_path: Path) -> dict:
    """PYTHONPATH such that polygraphy finds the tq-ort extension: the installed entry point, else a
    metadata folder declaring the one pyproject.toml declares (an editable install made before it)."""
    from importlib.metadata import entry_points

    env = dict(os.environ)
    root = Path(__file__).resolve().parents[1]
    declared = tomllib.loads((root / "pyproject.toml").read_text())["project"]["entry-points"]["polygraphy.run.plugins"]
    if not any(e.name == "tq-ort" for e in entry_points(group="polygraphy.run.plugins")):
        info = tmp_path / "ep" / "tq_ort_polygraphy_entry-0.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tq-ort-polygraphy-entry\nVersion: 0\n")
        (info / "entry_points.txt").write_text("[polygraphy.run.plugins]\n"
                                               + "".join(f"{k} = {v}\n" for k, v in declared.items()))
        env["PYTHONPATH"] = os.pathsep.join([str(info.parent), str(root), env.get("PYTHONPATH", "")])
    return env


def test_polygraphy_run_with_the_tq_onnxrt_runner(tmp_path):
    out = rewritten_folder(tmp_path, "llama")
    import onnx

    from graph_passes import read_metadata

    meta = read_metadata(onnx.load(str(out / "model.onnx"), load_external_data=False))
    kr, vr = meta["layers"][0]["key_row_bytes"], meta["layers"][0]["value_row_bytes"]
    shapes = ["input_ids:[1,4]", "attention_mask:[1,4]", "position_ids:[1,4]"] + [
        f"past_key_values.{i}.{kind}:[1,2,0,{kr if kind == 'key' else vr}]" for i in range(2) for kind in ("key", "value")]
    polygraphy = [sys.executable, "-c", "import sys; from polygraphy.tools import main; sys.exit(main())"]
    base = polygraphy + ["run", str(out / "model.onnx"), "--tq-onnxrt", "--providers", "cpu",
            "--input-shapes", *shapes, "--val-range", "attention_mask:[1,1]"]
    env = _polygraphy_env(tmp_path)
    r = subprocess.run(base + ["--save-outputs", str(tmp_path / "cpu.json")], capture_output=True, text=True,
                       env=env, timeout=600)
    assert r.returncode == 0 and "PASSED" in r.stdout + r.stderr, r.stdout + r.stderr
    r = subprocess.run(base + ["--load-outputs", str(tmp_path / "cpu.json")], capture_output=True, text=True,
                       env=env, timeout=600)
    assert r.returncode == 0 and "PASSED" in r.stdout + r.stderr, r.stdout + r.stderr
    # the plain --onnxrt runner cannot: no option registers the custom-op library
    r = subprocess.run(polygraphy + ["run", str(out / "model.onnx"), "--onnxrt",
                        "--input-shapes", *shapes], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode != 0 and "TurboQuantAttention" in r.stdout + r.stderr
