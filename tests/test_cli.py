"""The tq-ort command line: help on every subcommand, rewrite + inspect + generate on a tiny model,
and clear errors (exit code 2, no traceback) for bad input."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tiny_exports import library_has_attention, tiny_export
from tq_ort.cli.main import build_parser, main

SUBCOMMANDS = ["export", "rewrite", "generate", "inspect", "eval", "trt-build", "check", "serve"]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tq_ort.cli", *args], capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("cmd", SUBCOMMANDS)
def test_every_subcommand_has_help(cmd):
    r = run_cli(cmd, "--help")
    assert r.returncode == 0 and "usage: tq-ort " + cmd in r.stdout
    # every option is documented
    sub = build_parser()._subparsers._group_actions[0].choices[cmd]
    assert all(a.help for a in sub._actions if a.option_strings and a.dest != "help")


def test_rewrite_then_inspect(tmp_path, capsys):
    src = tiny_export("llama")
    out = tmp_path / "m" / "model.onnx"
    assert main(["rewrite", str(src), "-o", str(out), "--key-bits", "4", "--value-bits", "3",
                 "--protect-layers", "-1"]) == 0
    assert main(["inspect", str(out), "--context", "1000", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    layers = rep["memory"]["layers"]
    assert [(r["key_bits"], r["value_bits"]) for r in layers] == [(4, 3), (8, 8)]
    # 2 kv heads: layer 0 K rows 36 B, V rows 28 B; layer 1 (protected) 68 + 68
    assert rep["memory"]["bytes_per_token"] == 2 * (36 + 28) + 2 * (68 + 68)
    assert rep["memory"]["cache_bytes"] == rep["memory"]["bytes_per_token"] * 1000
    assert main(["inspect", str(out)]) == 0
    assert "smaller" in capsys.readouterr().out


def test_bad_input_gives_a_clear_error(tmp_path):
    r = run_cli("rewrite", str(tmp_path / "missing.onnx"), "-o", str(tmp_path / "o.onnx"))
    assert r.returncode == 2 and "no such model" in r.stderr and "Traceback" not in r.stderr
    src = tiny_export("llama")
    r = run_cli("rewrite", str(src), "-o", str(tmp_path / "o.onnx"), "--key-bits", "7")
    assert r.returncode == 2 and "key_bits=7" in r.stderr
    r = run_cli("inspect", str(src))
    assert r.returncode == 2 and "not rewritten by tq-ort" in r.stderr


@pytest.mark.skipif(not library_has_attention(), reason="custom-op library without TurboQuantAttention")
def test_generate_on_a_tiny_model(tmp_path):
    src = tiny_export("llama")
    out = tmp_path / "m"
    out.mkdir()
    for f in src.parent.glob("*.json"):
        (out / f.name).write_bytes(f.read_bytes())
    assert main(["rewrite", str(src), "-o", str(out / "model.onnx")]) == 0
    r = run_cli("generate", str(out), "--prompt", "hello", "--max-new-tokens", "8")
    assert r.returncode == 0, r.stderr
    assert "8 tokens" in r.stdout and "KV cache at" in r.stdout
    r = run_cli("generate", str(out), "--prompt", "hello", "--max-new-tokens", "8", "--max-length", "4")
    assert r.returncode == 2 and "exceeds the cache capacity" in r.stderr
