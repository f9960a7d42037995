"""The rewrite passes on optimum exports of each tiny family: structure, checker, refusals, and
(with the custom-op library) next-token logits against the original model over a greedy run."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from graph_passes import RewriteError, TQConfig, read_metadata, rewrite_file
from tiny_exports import tiny_export

FAMILIES = ["llama", "qwen2", "qwen3", "mistral", "phi3", "gpt2", "gemma3"]
HEADS = {"gpt2": (4, 4, 64), "gemma3": (4, 2, 256)}


@pytest.fixture(scope="module", params=FAMILIES)
def rewritten8(request, tmp_path_factory):
    src = tiny_export(request.param)
    dst = tmp_path_factory.mktemp(request.param) / "model.onnx"
    rewrite_file(src, dst, TQConfig(key_bits=8, value_bits=8))
    return request.param, src, dst


def test_rewrite_structure_and_metadata(rewritten8):
    family, src, dst = rewritten8
    m = onnx.load(dst)
    onnx.checker.check_model(m, full_check=True)
    ops = [n.op_type for n in m.graph.node]
    assert ops.count("TurboQuantAttention") == 2
    assert "Softmax" not in ops
    past = {i.name for i in m.graph.input if i.name.startswith("past_key_values.")}
    readers = {n.op_type for n in m.graph.node for i in n.input if i in past}
    # gemma3's export derives positions from the past length: Shape(past) survives, nothing else
    assert readers == ({"TurboQuantAttention", "Shape"} if family == "gemma3" else {"TurboQuantAttention"}), readers
    cfg = read_metadata(m)
    hq, hkv, d = HEADS.get(family, (4, 2, 64))
    assert [(layer["num_heads"], layer["kv_heads"], layer["head_dim"]) for layer in cfg["layers"]] == [(hq, hkv, d)] * 2
    ins = {i.name: i for i in m.graph.input}
    k = ins["past_key_values.0.key"].type.tensor_type
    assert k.elem_type == onnx.TensorProto.UINT8
    dims = [dd.dim_value for dd in k.shape.dim]
    assert (dims[1], dims[3]) == (hkv, cfg["layers"][0]["key_row_bytes"])
    if family == "gemma3":  # sliding layer 0 (window 8 in the tiny config), global layer 1
        assert [layer["window"] for layer in cfg["layers"]] == [8, -1]
        assert cfg["shared_buffer_ok"] is False  # gemma3 derives positions from the past length
    else:
        assert cfg["shared_buffer_ok"] is True


def test_options_reach_the_metadata(tmp_path):
    src = tiny_export("llama")
    dst = rewrite_file(src, tmp_path / "m.onnx", TQConfig(key_bits=4, value_bits=3, use_qjl=True,
                                                          protect_layers=(-1,), protect_bits=8, seed=7))
    cfg = read_metadata(onnx.load(dst))
    l0, l1 = cfg["layers"]
    assert (l0["key_bits"], l0["use_qjl"], l0["value_bits"], l0["key_row_bytes"]) == (3, True, 3, 4 + 24 + 4 + 8)
    assert (l1["key_bits"], l1["use_qjl"], l1["value_bits"]) == (8, False, 8)
    assert cfg["seed"] == 7
    keys_only = read_metadata(onnx.load(rewrite_file(src, tmp_path / "k.onnx", TQConfig(keys_only=True))))
    assert all(layer["value_bits"] == 0 for layer in keys_only["layers"])
    m = onnx.load(tmp_path / "k.onnx")
    v = {i.name: i for i in m.graph.input}["past_key_values.0.value"]
    assert v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def test_refusals_leave_no_half_rewritten_model(tmp_path):
    src = tiny_export("llama")
    # an unknown attention form: break layer 1's Softmax into something else
    m = onnx.load(src)
    for n in m.graph.node:
        if n.op_type == "Softmax" and "layers.1" in n.name:
            n.op_type = "LogSoftmax"
    bad = tmp_path / "bad.onnx"
    onnx.save(m, bad)
    (tmp_path / "config.json").write_text((src.parent / "config.json").read_text())
    with pytest.raises(RewriteError, match=r"(?s)matched layers \[0\] of 2.*layer 1: scores do not reach Softmax"):
        rewrite_file(bad, tmp_path / "out.onnx", TQConfig())
    assert not (tmp_path / "out.onnx").exists()
    # no KV cache at all
    g = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "g",
                               [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                               [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    onnx.save(onnx.helper.make_model(g), tmp_path / "nocache.onnx")
    with pytest.raises(RewriteError, match="no KV cache"):
        rewrite_file(tmp_path / "nocache.onnx", tmp_path / "o.onnx", TQConfig())
    with pytest.raises(ValueError, match="key_bits=7"):
        rewrite_file(src, tmp_path / "o.onnx", TQConfig(key_bits=7))
    # rewriting twice is refused
    once = rewrite_file(src, tmp_path / "once.onnx", TQConfig())
    with pytest.raises(RewriteError, match="rewritten before|no KV cache|expected"):
        rewrite_file(once, tmp_path / "twice.onnx", TQConfig())


def test_unsupported_head_dim_is_refused(tmp_path):
    src = tiny_export("llama")
    m = onnx.load(src)
    hf = json.loads((src.parent / "config.json").read_text())
    from graph_passes.config import plan_layer

    with pytest.raises(ValueError, match="head_dim 48 unsupported"):
        plan_layer(TQConfig(), 0, 2, head_dim=48, kv_heads=2, num_heads=4, names=("a", "b", "c", "d"))
    assert hf["num_attention_heads"] == 4 and m is not None
