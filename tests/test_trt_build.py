"""`tq-ort trt-build` (TensorRT-RTX builds on the CPU: no GPU needed), its sidecar, the messages without
TensorRT / without a GPU, and (GPU machines) greedy generation from an engine against the ORT CUDA EP."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from tiny_exports import library_has_attention, rewritten_folder, tiny_export
from tq_ort.cli.main import main
from tq_ort.trt.build import BuildOptions, profile_shapes
from tq_ort.trt.sidecar import model_fingerprint, read_sidecar


def _has_tensorrt() -> bool:
    from tq_ort.trt import TensorRTUnavailable, import_tensorrt

    try:
        import_tensorrt()
        return True
    except TensorRTUnavailable:
        return False


needs_trt = pytest.mark.skipif(not _has_tensorrt(), reason='TensorRT not installed (pip install "tq-ort[tensorrt]")')


def _plugins() -> str | None:
    from tq_ort.trt.runtime import plugin_library_path

    return plugin_library_path()


def test_profile_covers_every_dynamic_dim():
    o = BuildOptions(max_context=256, max_batch=4, max_prompt=64)
    shapes = profile_shapes({"input_ids": (-1, -1), "attention_mask": (-1, -1),
                             "past_key_values.0.key": (-1, 2, -1, 36), "past_key_values.0.key_recent": (-1, 2, 8, 64)}, o)
    assert shapes["input_ids"] == ((1, 1), (1, 1), (4, 64))
    assert shapes["attention_mask"] == ((1, 1), (1, 128), (4, 256))
    assert shapes["past_key_values.0.key"] == ((1, 2, 0, 36), (1, 2, 256, 36), (4, 2, 256, 36))
    assert shapes["past_key_values.0.key_recent"] == ((1, 2, 8, 64), (1, 2, 8, 64), (4, 2, 8, 64))
    with pytest.raises(ValueError, match=r"input 'cos' shape \(1, -1\): dynamic dim 1 has no known meaning"):
        profile_shapes({"input_ids": (-1, -1), "cos": (1, -1)}, BuildOptions())
    with pytest.raises(ValueError, match="max_prompt=300"):
        BuildOptions(max_context=256, max_prompt=300).validate()


@needs_trt
def test_build_a_plugin_free_engine_with_its_sidecar(tmp_path, capsys):
    src = tiny_export("llama")  # the float export: no TurboQuant ops, no plugins needed
    eng = tmp_path / "llama.plan"
    assert main(["trt-build", str(src.parent), "-o", str(eng), "--max-context", "96", "--max-batch", "2",
                 "--quiet"]) == 0
    assert "wrote" in capsys.readouterr().out and eng.stat().st_size > 10000
    rec = read_sidecar(eng)
    assert rec["model"]["fingerprint"] == model_fingerprint(src) and rec["model"]["turboquant"] is None
    assert rec["plugins"] is None and rec["options"]["max_context"] == 96
    assert rec["profile"]["past_key_values.1.value"]["max"] == [2, 2, 96, 64]
    assert rec["profile"]["input_ids"] == {"min": [1, 1], "opt": [1, 1], "max": [2, 96]}
    assert rec["io"]["logits"]["mode"] == "output"
    from tq_ort.trt import import_tensorrt

    assert rec["tensorrt"]["version"] == import_tensorrt().__version__


@needs_trt
@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma3"])
def test_build_engines_for_rewritten_tiny_models(tmp_path, family):
    if _plugins() is None:
        pytest.skip("TensorRT plugin library libtq_trt_plugins.so not built")
    out = rewritten_folder(tmp_path, family, "--key-bits", "4", "--value-bits", "3")
    eng = tmp_path / f"{family}.plan"
    assert main(["trt-build", str(out), "-o", str(eng), "--max-context", "128", "--quiet"]) == 0
    rec = read_sidecar(eng)
    assert rec["model"]["turboquant"]["layers"][0]["value_bits"] == 3
    assert rec["plugins"]["sha256"] and any("TurboQuantAttention" in c for c in rec["plugins"]["creators"])
    row = rec["model"]["turboquant"]["layers"][0]["key_row_bytes"]
    assert rec["profile"]["past_key_values.0.key"]["max"][2:] == [128, row]
    assert rec["io"]["present.0.key"]["dtype"] == "int8" and "present.0.key" in rec["int8_rows"]
    assert rec["shared_buffer"] == rec["model"]["turboquant"]["shared_buffer_ok"]
    assert main(["trt-build", str(out), "-o", str(tmp_path / "c.plan"), "--max-context", "128", "--concat",
                 "--quiet"]) == 0
    assert read_sidecar(tmp_path / "c.plan")["shared_buffer"] is False


def test_the_model_tensorrt_gets(tmp_path):
    """int8 cache I/O + rows_dtype=3, absent middle inputs filled, shared_buffer on request; no TensorRT needed."""
    import onnx

    from tq_ort.trt.model import tensorrt_model

    out = rewritten_folder(tmp_path, "llama", "--keys-only", "--recent-window", "4")
    data, info = tensorrt_model(out / "model.onnx", shared_buffer=True)
    m = onnx.load_from_string(data)
    io = {v.name: v.type.tensor_type.elem_type for v in list(m.graph.input) + list(m.graph.output)}
    assert io["past_key_values.0.key"] == io["present.1.key"] == onnx.TensorProto.INT8
    assert io["past_key_values.0.value"] == onnx.TensorProto.FLOAT  # keys-only: float values stay
    assert "past_key_values.1.key" in info["int8_rows"] and info["shared_buffer"] and info["turboquant_nodes"] == 2
    inits = {i.name: list(i.dims) for i in m.graph.initializer}
    for n in m.graph.node:
        if n.domain == "turboquant":
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
            assert attrs["rows_dtype"] == 3 and attrs["shared_buffer"] == 1
            assert "" not in n.input and len(n.input) == 14  # ... past_key_recent (13); value ring absent at the end
            assert inits[n.input[9]] == [0]  # no value codebook (keys-only): an empty initializer
    # the model on disk is unchanged
    disk = onnx.load(str(out / "model.onnx"), load_external_data=False)
    assert {v.type.tensor_type.elem_type for v in disk.graph.input if v.name.endswith(".key")} == {onnx.TensorProto.UINT8}
    _, info = tensorrt_model(out / "model.onnx", shared_buffer=False)
    assert not info["shared_buffer"]


@needs_trt
def test_build_errors_exit_2(tmp_path, capsys):
    src = tiny_export("llama")
    assert main(["trt-build", str(tmp_path / "missing"), "-o", str(tmp_path / "e.plan")]) == 2
    assert "no such model" in capsys.readouterr().err
    assert main(["trt-build", str(src.parent), "-o", str(tmp_path / "e.plan"), "--fp16"]) == 2
    assert "strongly typed" in capsys.readouterr().err
    assert main(["trt-build", str(src.parent), "-o", str(tmp_path / "e.plan"), "--compute-capability", "sm90"]) == 2
    err = capsys.readouterr().err
    assert "--compute-capability 'sm90'" in err and "sm89" in err
    assert not (tmp_path / "e.plan").exists()


_HIDE_TRT = """
import sys, importlib.abc
class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorrt", "tensorrt_rtx", "tensorrt_rtx_bindings", "tensorrt_rtx_libs"):
            raise ModuleNotFoundError(f"No module named {name!r}")
sys.meta_path.insert(0, Hide())
from tq_ort.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def test_without_tensorrt_exit_2_and_one_line(tmp_path):
    src = tiny_export("llama")
    r = subprocess.run([sys.executable, "-c", _HIDE_TRT, "trt-build", str(src.parent), "-o", str(tmp_path / "e.plan")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "TensorRT is not installed" in lines[0] and 'pip install "tq-ort[tensorrt]"' in lines[0]


@needs_trt
def test_engine_run_without_a_gpu_says_so(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here")
    src = tiny_export("llama")
    eng = tmp_path / "e.plan"
    assert main(["trt-build", str(src.parent), "-o", str(eng), "--max-context", "64", "--quiet"]) == 0
    r = subprocess.run([sys.executable, "-m", "tq_ort.cli", "generate", str(src.parent), "--engine", str(eng),
                        "--max-new-tokens", "4"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "needs a CUDA GPU" in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = subprocess.run([sys.executable, "-m", "tq_ort.cli", "generate", "--engine", str(tmp_path / "nope.plan")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "no such engine" in r.stderr, r.stderr


def _gpu_ready() -> str:
    """'' when an engine can run here (TensorRT, torch CUDA, ORT CUDA EP), else why not."""
    if not _has_tensorrt():
        return "TensorRT not installed"
    try:
        import torch
    except ImportError:
        return "no torch"
    if not torch.cuda.is_available():
        return "no CUDA GPU"
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return "onnxruntime without the CUDA EP"
    return ""


@pytest.mark.skipif(bool(_gpu_ready()), reason=_gpu_ready() or "-")
@pytest.mark.skipif(not library_has_attention(), reason="custom-op library without TurboQuantAttention")
@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_engine_greedy_tokens_equal_ort_cuda(tmp_path, family):
    """GPU: 32 greedy tokens from the engine equal those of the ORT CUDA EP session (4-bit K+V). Where
    TensorRT cannot deserialize its engine on this GPU (TensorRT-RTX on Hopper), skipped with its error."""
    if _plugins() is None:
        pytest.skip("TensorRT plugin library libtq_trt_plugins.so not built")
    from tq_ort.session import DecoderSession
    from tq_ort.trt.session import TrtDecoderSession

    out = rewritten_folder(tmp_path, family)
    eng = tmp_path / "e.plan"
    assert main(["trt-build", str(out), "-o", str(eng), "--max-context", "64", "--compute-capability", "current",
                 "--quiet"]) == 0
    try:
        trt_sess = TrtDecoderSession(eng, max_length=40)
    except RuntimeError as e:
        if "deserialize" in str(e):
            pytest.skip(f"engine cannot run on this GPU: {e}")
        raise
    prompt = [int(t) for t in np.random.default_rng(0).integers(0, 256, 7)]
    want = DecoderSession(out, device="cuda", max_length=40).generate(prompt, 32)
    got = trt_sess.generate(prompt, 32)
    assert got == want, f"{family}: engine {got} vs ORT CUDA {want}"
    assert all(b.device.type == "cuda" for bufs in trt_sess._cache.values() for b in bufs)
    assert json.loads(eng.with_name(eng.name + ".json").read_text())["plugins"]


@needs_trt
def test_polygraphy_builds_with_tensorrt_rtx(tmp_path):
    """POLYGRAPHY_USE_TENSORRT_RTX=1 makes polygraphy import `tensorrt_rtx` (the [tensorrt] extra's
    tensorrt-rtx-cu13 package): `polygraphy convert` builds an engine of the float export on the CPU."""
    import importlib.util

    if importlib.util.find_spec("tensorrt_rtx") is None:
        pytest.skip("module tensorrt_rtx missing (package tensorrt-rtx-cu13 not installed)")
    import os

    src = tiny_export("llama")
    names = [f"past_key_values.{i}.{k}" for i in range(2) for k in ("key", "value")]
    shapes = {"min": (1, 0, 1), "opt": (1, 7, 8), "max": (16, 16, 32)}  # (new tokens, past, total)
    args = []
    for which, (s, p, t) in shapes.items():
        args += [f"--trt-{which}-shapes", f"input_ids:[1,{s}]", f"position_ids:[1,{s}]", f"attention_mask:[1,{t}]"]
        args += [f"{n}:[1,2,{p},64]" for n in names]
    r = subprocess.run([sys.executable, "-c", "import sys; from polygraphy.tools import main; sys.exit(main())",
                        "convert", str(src), "-o", str(tmp_path / "p.plan"), *args], capture_output=True, text=True,
                       env=dict(os.environ, POLYGRAPHY_USE_TENSORRT_RTX="1"), timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert (tmp_path / "p.plan").stat().st_size > 10000
