"""Loading bad model folders gives a clear error naming the file, never a traceback or a crash: a truncated
model file (or external-data file), a folder missing its model or its tokenizer/config files, a model
written with another row-layout version (turboquant.config layout_version, checked at load by the
session, inspect, generate and trt-build paths). Nothing in a model folder is executed or unpickled: a
static audit of the package's loaders and a folder planted with pickles and Python files that would
leave a marker if anything ran them.
"""
from __future__ import annotations

import ast
import json
import pickle
import shutil
import sys
from pathlib import Path

import onnx
import pytest

from tiny_exports import library_has_attention, rewritten_folder
from tq_ort import codec
from tq_ort.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
needs_ops = pytest.mark.skipif(not library_has_attention(), reason="custom-op library without TurboQuantAttention")


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    return rewritten_folder(tmp_path_factory.mktemp("good"), "llama")


def copy_folder(good: Path, dst: Path) -> Path:
    shutil.copytree(good, dst)
    return dst


def clear(capsys, *args: str) -> str:
    """Run tq-ort ARGS in process: exit code 2 and the error line, which is returned."""
    rc = main(list(args))
    err = capsys.readouterr().err
    assert rc == 2, f"tq-ort {' '.join(args)}: exit {rc}, stderr {err}"
    assert "Traceback" not in err
    return err


# -- truncated files -------------------------------------------------------------------------------------
@needs_ops
@pytest.mark.parametrize("keep", [0, 0.1, 0.5, 0.9, -1])
def test_truncated_model_file(good, tmp_path, capsys, keep):
    from tq_ort.session import DecoderSession

    folder = copy_folder(good, tmp_path / "m")
    data = (good / "model.onnx").read_bytes()
    n = len(data) - 1 if keep == -1 else int(len(data) * keep)
    (folder / "model.onnx").write_bytes(data[:n])
    path = str(folder / "model.onnx")
    with pytest.raises(ValueError) as e:
        DecoderSession(folder)
    msg = str(e.value)
    assert path in msg and f"{n} bytes" in msg, msg
    for cmd in (["inspect", str(folder)], ["generate", str(folder), "--max-new-tokens", "2"]):
        assert path in clear(capsys, *cmd)


@needs_ops
def test_truncated_external_data(good, tmp_path, capsys):
    from tq_ort.session import DecoderSession

    folder = copy_folder(good, tmp_path / "m")
    m = onnx.load(str(good / "model.onnx"))
    onnx.save_model(m, str(folder / "model.onnx"), save_as_external_data=True, location="model.onnx.data",
                    size_threshold=0)
    data = folder / "model.onnx.data"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    with pytest.raises(RuntimeError) as e:
        DecoderSession(folder)
    assert str(folder / "model.onnx") in str(e.value) and "could not load" in str(e.value), str(e.value)
    assert str(folder / "model.onnx") in clear(capsys, "generate", str(folder), "--max-new-tokens", "2")


# -- missing pieces ----------------------------------------------------------------------------------------
def test_folder_without_a_model(tmp_path, capsys):
    from tq_ort.session import DecoderSession

    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="no such model"):
        DecoderSession(tmp_path)
    for cmd in ("inspect", "generate"):
        assert str(tmp_path / "model.onnx") in clear(capsys, cmd, str(tmp_path))


@needs_ops
def test_folder_without_its_config_and_tokenizer(good, tmp_path, capsys):
    folder = tmp_path / "m"
    folder.mkdir()
    shutil.copy(good / "model.onnx", folder / "model.onnx")
    err = clear(capsys, "generate", str(folder), "--max-new-tokens", "2")
    assert str(folder) in err and "no tokenizer files" in err and "tokenizer.json" in err, err
    # with its tokenizer but without config.json the model still runs: config.json only supplies head_dim
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(good / f, folder / f)
    assert main(["generate", str(folder), "--max-new-tokens", "2"]) == 0


def test_model_not_rewritten(tmp_path, capsys):
    from tiny_exports import tiny_export

    src = tiny_export("llama")
    err = clear(capsys, "inspect", str(src))
    assert str(src) in err and "not rewritten by tq-ort" in err


# -- row-layout version ------------------------------------------------------------------------------------
def with_layout(good: Path, dst: Path, version) -> Path:
    """A copy of the model folder whose turboquant.config says layout_version = version (None: no key)."""
    folder = copy_folder(good, dst)
    m = onnx.load(str(folder / "model.onnx"))
    for p in m.metadata_props:
        if p.key == "turboquant.config":
            cfg = json.loads(p.value)
            assert cfg["layout_version"] == 1  # whole widths: version 1, readable by older tq-ort too
            if version is None:
                del cfg["layout_version"]
            else:
                cfg["layout_version"] = version
            p.value = json.dumps(cfg)
    onnx.save(m, str(folder / "model.onnx"))
    return folder


@needs_ops
@pytest.mark.parametrize("version", [codec.LAYOUT_VERSION + 1, 0, None])
def test_incompatible_layout_version(good, tmp_path, capsys, version):
    from tq_ort.session import DecoderSession
    from tq_ort.trt.build import _model_info

    folder = with_layout(good, tmp_path / "m", version)
    path = str(folder / "model.onnx")
    expect = [path, f"layout version {version!r}", "reads layout versions 1, 2"]
    with pytest.raises(ValueError) as e:
        DecoderSession(folder)
    assert all(s in str(e.value) for s in expect), str(e.value)
    with pytest.raises(ValueError) as e:
        _model_info(Path(path))  # tq-ort trt-build reads the model here
    assert all(s in str(e.value) for s in expect), str(e.value)
    for cmd in (["inspect", str(folder)], ["generate", str(folder), "--max-new-tokens", "2"]):
        err = clear(capsys, *cmd)
        assert all(s in err for s in expect), err


# -- nothing in a model folder is executed or unpickled ---------------------------------------------------
PICKLERS = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}
BANNED_CALLS = {"eval", "exec", "compile", "torch.load", "yaml.load", "yaml.unsafe_load", "yaml.full_load",
                "runpy.run_path", "importlib.util.spec_from_file_location", "spec_from_file_location",
                "SourceFileLoader", "importlib.machinery.SourceFileLoader", "sys.path.insert", "sys.path.append",
                "sys.path.extend"}


def _dotted(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return ""  # a method of a call's result (model.eval() of torch modules): not a module function
    parts.append(node.id)
    return ".".join(reversed(parts))


def audit(paths: list[Path], root: Path = ROOT) -> list[str]:
    """Code-loading or unpickling calls in the given sources: pickle-family imports, eval / exec / compile,
    torch.load, yaml.load, path-based module loading, sys.path edits, allow_pickle=True, trust_remote_code=True."""
    found = []
    for f in paths:
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            where = f"{f.relative_to(root)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Import):
                found += [f"{where} import {a.name}" for a in node.names if a.name.split(".")[0] in PICKLERS]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PICKLERS:
                found.append(f"{where} from {node.module} import")
            elif isinstance(node, ast.Call):
                name = _dotted(node.func)
                if name in BANNED_CALLS:
                    found.append(f"{where} {name}(...)")
                for kw in node.keywords:
                    if kw.arg in ("allow_pickle", "trust_remote_code") and not (
                            isinstance(kw.value, ast.Constant) and kw.value.value in (False, None)):
                        found.append(f"{where} {name}({kw.arg}={ast.unparse(kw.value)})")
    return found


def test_audit_no_code_loading_in_the_package(tmp_path):
    sources = [f for pkg in ("tq_ort", "graph_passes", "models") for f in sorted((ROOT / pkg).rglob("*.py"))]
    assert len(sources) > 40
    assert audit(sources) == []
    # the audit finds what it looks for
    bad = tmp_path / "bad.py"
    bad.write_text("import pickle\nimport torch\nx = torch.load('m.bin')\neval('1')\n"
                   "import numpy as np\nnp.load('a.npy', allow_pickle=True)\n"
                   "from transformers import AutoTokenizer\n"
                   "AutoTokenizer.from_pretrained('.', trust_remote_code=True)\n")
    found = audit([bad], tmp_path)
    assert len(found) == 5, found


class _Payload:
    """Unpickling this runs code that creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('unpickled')",))


def planted_folder(good: Path, dst: Path, marker: Path) -> Path:
    """The model folder plus pickles under the usual weight/tokenizer names and Python files that
    transformers' remote-code hooks (auto_map in config.json / tokenizer_config.json) would import."""
    folder = copy_folder(good, dst)
    blob = pickle.dumps(_Payload(marker))
    for name in ("pytorch_model.bin", "model.pkl", "tokenizer.pkl", "training_args.bin", "model.onnx.pkl"):
        (folder / name).write_bytes(blob)
    code = f"open({str(marker)!r}, 'w').write('imported')\n"
    for name in ("tokenization_evil.py", "configuration_evil.py", "modeling_evil.py", "onnx.py", "tokenizers.py"):
        (folder / name).write_text(code)
    for cfg_name, auto in (("config.json", {"AutoConfig": "configuration_evil.EvilConfig",
                                            "AutoModelForCausalLM": "modeling_evil.Evil"}),
                           ("tokenizer_config.json", {"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]})):
        cfg = json.loads((folder / cfg_name).read_text())
        cfg["auto_map"] = auto
        (folder / cfg_name).write_text(json.dumps(cfg))
    return folder


@needs_ops
def test_nothing_in_a_model_folder_runs(good, tmp_path):
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(_Payload(marker)))  # the payload works when unpickled
    assert marker.read_text() == "unpickled"
    marker.unlink()
    folder = planted_folder(good, tmp_path / "m", marker)
    # in this process (a model folder is never put on sys.path; note that `python -m` and `-c` put the
    # working directory there themselves: do not run them from inside an untrusted folder)
    from tq_ort.session import DecoderSession

    assert main(["inspect", str(folder)]) == 0
    assert main(["generate", str(folder), "--max-new-tokens", "3"]) == 0
    assert len(DecoderSession(folder, max_length=16).generate([1, 2, 3], 4)) == 4
    assert str(folder) not in sys.path and not any(Path(p or ".").resolve() == folder.resolve() for p in sys.path)
    assert not marker.exists(), f"something in the model folder ran: {marker.read_text()}"
