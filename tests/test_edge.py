"""--target edge models (docs/edge.md): standard ops only, run without the library, the same cache rows
as the custom-op model (codes byte-exact, scales within docs/ops.md 1.3's 1e-5), close logits; refusals."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from graph_passes import RewriteError, TQConfig, read_metadata, rewrite_file
from tests.tiny_exports import library_has_attention, tiny_export

ort = pytest.importorskip("onnxruntime")
STANDARD = {"", "ai.onnx"}
PROMPT = [256, 72, 101, 108, 108, 111, 32, 119, 111]
STEPS = [114, 108, 100, 33, 10, 65]  # fed to both models (no dependence on argmax ties)


def _edge(tmp_path: Path, family: str = "llama", source: str = "optimum", **kw) -> Path:
    return rewrite_file(tiny_export(family, source), tmp_path / f"{family}-{source}-edge.onnx",
                        TQConfig(target="edge", **kw))


def _standard_only(path: Path) -> set[str]:
    m = onnx.load(str(path))
    ops = {(n.domain, n.op_type) for n in m.graph.node}
    for f in m.functions:
        ops |= {(n.domain, n.op_type) for n in f.node}
    bad = {f"{d}.{o}" for d, o in ops if d not in STANDARD}
    assert not bad, f"non-standard ops in {path.name}: {sorted(bad)}"
    assert {o.domain for o in m.opset_import} <= STANDARD, m.opset_import
    return {o for _, o in ops}


def _run(path: Path, ids_per_step: list[list[int]], *, library: bool) -> tuple[list[np.ndarray], dict]:
    """Plain onnxruntime, concat mode: logits of the last position per step and the final cache."""
    so = ort.SessionOptions()
    if library:
        from tq_ort import session_options

        so = session_options(so)
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    ins = {i.name: i for i in sess.get_inputs()}
    cache = {}
    for name, i in ins.items():
        if name.startswith("past_key_values."):
            dtype = {"tensor(uint8)": np.uint8, "tensor(float)": np.float32}[i.type]
            cache[name] = np.zeros((1, i.shape[1], 0, i.shape[3]), dtype)
    outs_names = [o.name for o in sess.get_outputs()]
    n, logits = 0, []
    for ids in ids_per_step:
        feeds = {"input_ids": np.array([ids], np.int64), **cache}
        feeds["attention_mask"] = np.ones((1, n + len(ids)), np.int64)
        if "position_ids" in ins:
            feeds["position_ids"] = np.arange(n, n + len(ids), dtype=np.int64)[None]
        out = dict(zip(outs_names, sess.run(None, feeds)))
        n += len(ids)
        logits.append(out["logits"][0, -1])
        cache = {k: out[k.replace("past_key_values.", "present.")] for k in cache}
    return logits, cache


def _compare_rows(edge: np.ndarray, op: np.ndarray, name: str) -> None:
    assert edge.shape == op.shape, (name, edge.shape, op.shape)
    np.testing.assert_array_equal(edge[..., 4:], op[..., 4:], err_msg=f"{name}: codes/padding differ")
    se, so = (np.ascontiguousarray(r[..., :4]).view("<f4")[..., 0] for r in (edge, op))
    np.testing.assert_allclose(se, so, rtol=1e-5, atol=0, err_msg=f"{name}: scales")


def test_edge_model_is_standard_onnx(tmp_path):
    path = _edge(tmp_path)
    onnx.checker.check_model(str(path), full_check=True)
    ops = _standard_only(path)
    assert {"MatMul", "Softmax"} <= ops
    meta = read_metadata(onnx.load(str(path), load_external_data=False))
    assert meta["target"] == "edge" and meta["shared_buffer_ok"] is False
    m = onnx.load(str(path), load_external_data=False)
    assert {i.name: i.type.tensor_type.elem_type for i in m.graph.input}["past_key_values.0.key"] == onnx.TensorProto.UINT8


@pytest.mark.parametrize("family,source,kw", [
    ("llama", "optimum", {}),
    ("llama", "optimum", {"key_bits": 3, "value_bits": 2}),
    ("llama", "optimum", {"keys_only": True, "key_bits": 8}),
    ("gemma3", "optimum", {"protect_layers": (0,), "protect_bits": 8}),  # head_dim 256, sliding window
    ("llama", "dynamo", {}),
])
def test_edge_rows_and_logits_match_custom_op(tmp_path, family, source, kw):
    if not library_has_attention():
        pytest.skip("custom-op library not built/registered")
    src = tiny_export(family, source)
    edge = rewrite_file(src, tmp_path / "edge.onnx", TQConfig(target="edge", **kw))
    op = rewrite_file(src, tmp_path / "op.onnx", TQConfig(**kw))
    steps = [PROMPT] + [[t] for t in STEPS]
    le, ce = _run(edge, steps, library=False)
    lo, co = _run(op, steps, library=True)
    for name in ce:
        if ce[name].dtype == np.uint8:
            _compare_rows(ce[name], co[name], name)
        else:
            np.testing.assert_allclose(ce[name], co[name], rtol=1e-5, atol=1e-5, err_msg=name)
    for i, (a, b) in enumerate(zip(le, lo)):
        span = float(b.max() - b.min())
        assert float(np.abs(a - b).max()) <= 1e-4 * span + 1e-5, f"step {i}: logits differ by {np.abs(a - b).max()}"


def test_edge_runs_without_library(tmp_path, monkeypatch):
    """DecoderSession (tq-ort generate) on an edge model registers no custom-op library."""
    import tq_ort
    import tq_ort.library
    from tq_ort.session import DecoderSession

    path = _edge(tmp_path)
    monkeypatch.setenv("TQ_ORT_LIBRARY", str(tmp_path / "no-such-library.so"))

    def boom(*a, **k):
        raise AssertionError("the custom-op library was requested for an edge model")

    monkeypatch.setattr(tq_ort, "session_options", boom)
    monkeypatch.setattr(tq_ort.library, "session_options", boom)
    s = DecoderSession(path, max_length=32)
    assert s.target == "edge" and not s.shared
    toks = s.generate(PROMPT, 4)
    assert len(toks) == 4
    cache = s.cache_arrays()
    assert cache["past_key_values.0.key"].dtype == np.uint8
    assert cache["past_key_values.0.key"].shape[2] == len(PROMPT) + 4  # generate feeds every new token


def test_edge_generate_cli_without_library(tmp_path):
    """`tq-ort generate` on an edge model folder: the library's session options are never requested."""
    import shutil

    src = tiny_export("llama")
    for f in src.parent.iterdir():
        if f.is_file() and not f.name.startswith("model.onnx"):
            shutil.copy(f, tmp_path / f.name)
    rewrite_file(src, tmp_path / "model.onnx", TQConfig(target="edge"))
    code = ("import sys, tq_ort, tq_ort.library\n"
            "def boom(*a, **k): raise SystemExit('custom-op library requested')\n"
            "tq_ort.session_options = tq_ort.library.session_options = boom\n"
            "from tq_ort.cli.main import main\n"
            f"sys.exit(main(['generate', {str(tmp_path)!r}, '--prompt', 'Hello', '--max-new-tokens', '3']))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 0, (r.stdout[-1000:], r.stderr[-2000:])


@pytest.mark.parametrize("kw,flag", [({"use_qjl": True}, "--qjl"), ({"recent_window": 16}, "--recent-window")])
def test_edge_refuses_options(tmp_path, kw, flag):
    dst = tmp_path / "x.onnx"
    with pytest.raises(ValueError, match=flag):
        rewrite_file(tiny_export("llama"), dst, TQConfig(target="edge", **kw))
    assert not dst.exists() and not list(tmp_path.iterdir())


def test_edge_refuses_genai(tmp_path):
    """A GroupQueryAttention (onnxruntime-genai) graph is refused for edge, nothing written."""
    from onnx import TensorProto, helper

    f = TensorProto.FLOAT
    io = [helper.make_tensor_value_info(n, f, ["b", 2, "p", 64]) for n in ("past_key_values.0.key",
                                                                          "past_key_values.0.value")]
    outs = [helper.make_tensor_value_info(n, f, None) for n in ("y", "present.0.key", "present.0.value")]
    ins = [helper.make_tensor_value_info("qkv", f, ["b", "s", 512]),
           helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, ["b"]),
           helper.make_tensor_value_info("total_sequence_length", TensorProto.INT32, [])]
    node = helper.make_node("GroupQueryAttention", ["qkv", "", "", "past_key_values.0.key", "past_key_values.0.value",
                                                    "seqlens_k", "total_sequence_length"],
                            ["y", "present.0.key", "present.0.value"], domain="com.microsoft", num_heads=4,
                            kv_num_heads=2)
    m = helper.make_model(helper.make_graph([node], "gqa", ins + io, outs),
                          opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)])
    src = tmp_path / "src" / "model.onnx"
    src.parent.mkdir()
    onnx.save(m, src)
    dst = tmp_path / "out" / "model.onnx"
    with pytest.raises(RewriteError, match="GroupQueryAttention"):
        rewrite_file(src, dst, TQConfig(target="edge"), hf_config={"num_attention_heads": 4})
    assert not dst.parent.exists()


def test_target_validated():
    with pytest.raises(ValueError, match="target"):
        TQConfig(target="coreml").validate()


def test_import_graph_passes_stays_light():
    code = ("import sys, graph_passes, graph_passes.edge_attention, graph_passes.edge_codec; "
            "bad = [m for m in ('onnxruntime', 'torch', 'transformers') if m in sys.modules]; print(json.dumps(bad))")
    r = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True, text=True,
                       cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == []


def test_cli_refusals_write_nothing(tmp_path, capsys):
    """`tq-ort rewrite/export --target edge` with an unsupported flag or source: exit 2, naming it, no output."""
    from tq_ort.cli.main import main

    src = tiny_export("llama")
    out = tmp_path / "out" / "model.onnx"
    assert main(["rewrite", str(src), "-o", str(out), "--target", "edge", "--qjl"]) == 2
    assert "--qjl" in capsys.readouterr().err
    assert main(["rewrite", str(src), "-o", str(out), "--target", "edge", "--recent-window", "8"]) == 2
    assert "--recent-window" in capsys.readouterr().err
    assert main(["export", str(src.parent), "-o", str(tmp_path / "exp"), "--target", "edge", "--source", "genai",
                 "--quiet"]) == 2
    assert "--source genai" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_cli_rewrite_edge(tmp_path):
    from tq_ort.cli.main import main

    out = tmp_path / "model.onnx"
    assert main(["rewrite", str(tiny_export("llama")), "-o", str(out), "--target", "edge", "--value-bits", "3"]) == 0
    _standard_only(out)
    meta = read_metadata(onnx.load(str(out), load_external_data=False))
    assert meta["target"] == "edge" and meta["layers"][0]["value_bits"] == 3


def test_coreml_report(tmp_path, capsys):
    """`tq-ort inspect --target coreml`: every op type listed; the attention MatMul/Softmax CoreML-eligible."""
    from tq_ort.cli.main import main
    from tq_ort.coreml_report import COREML_SOURCE, coreml_report

    path = _edge(tmp_path)
    r = coreml_report(path)
    m = onnx.load(str(path), load_external_data=False)
    assert set(r["ops"]) == {n.op_type for n in m.graph.node} - {"Constant"}
    assert r["coreml_nodes"] + r["cpu_nodes"] == r["nodes"] > 0
    assert r["attention_matmul_softmax_on_coreml"] == r["attention_matmul_softmax_total"] > 0
    assert r["ops"]["Gather"]["cpu"] == r["ops"]["Gather"]["count"]  # not in the EP's list
    assert main(["inspect", "--target", "coreml", str(path)]) == 0
    out = capsys.readouterr().out
    assert COREML_SOURCE in out and "MatMul" in out
