"""Atomic outputs of `tq-ort export` and `tq-ort rewrite` (graph_passes/atomic.py): a child interrupted
by SIGINT or SIGKILL inside the write leaves the old output or none, never a half model; a refused
rewrite or export writes nothing; a later run cleans what a killed one left.

Deterministic: the child runs with TQ_ORT_TEST_PAUSE="<stage>:<marker>", writes the marker when it
reaches that point of the write and waits there; the test signals it then (no sleeping and hoping).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from graph_passes.atomic import TEST_PAUSE_ENV
from tiny_exports import tiny_export
from tq_ort.cli.main import main

ROOT = Path(__file__).resolve().parents[1]


def snapshot(target: Path) -> dict[str, str] | None:
    """{relative path: sha256} of a file or folder (None when absent)."""
    if not target.exists():
        return None
    files = [target] if target.is_file() else sorted(p for p in target.rglob("*") if p.is_file())
    return {str(p.relative_to(target.parent)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def sidecars(dst: Path) -> dict[str, dict | None]:
    """The model file and the files that belong to it (its data, its original-model record)."""
    return {n: snapshot(dst.with_name(n)) for n in (dst.name, dst.name + ".data", dst.name + ".original.json")}


def leftovers(target: Path) -> list[str]:
    return sorted(p.name for p in target.parent.glob(f".{target.name}.tq-*"))


def interrupted(args: list[str], stage: str, sig: int, tmp: Path, env: dict | None = None) -> int:
    """Run `tq-ort ARGS` in a child, wait until it pauses at `stage`, send `sig`; its exit status."""
    marker = tmp / f"paused-{stage}-{sig}"
    marker.unlink(missing_ok=True)
    env = {**os.environ, **(env or {}), TEST_PAUSE_ENV: f"{stage}:{marker}",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    # a job started in the background by a non-interactive shell (CI runners, nohup ... &) inherits
    # SIGINT ignored, and Python then keeps it ignored: give the child the default, as a terminal would
    p = subprocess.Popen([sys.executable, "-m", "tq_ort.cli", *args], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    end = time.monotonic() + 120
    while not marker.exists():
        if p.poll() is not None:
            out, err = p.communicate()
            pytest.fail(f"tq-ort {' '.join(args)} exited ({p.returncode}) before pausing at {stage}: {err[-2000:]}")
        if time.monotonic() > end:
            p.kill()
            pytest.fail(f"tq-ort {' '.join(args)}: never reached stage {stage}")
        time.sleep(0.02)
    p.send_signal(sig)
    p.communicate(timeout=60)
    return p.returncode


# -- rewrite ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("stage,sig", [("rewrite-staged", signal.SIGINT), ("rewrite-staged", signal.SIGKILL),
                                       ("rewrite-swap", signal.SIGINT), ("rewrite-swap", signal.SIGKILL)])
def test_interrupted_rewrite_leaves_the_old_model_or_none(tmp_path, stage, sig):
    src = tiny_export("llama")
    dst = tmp_path / "out" / "model.onnx"
    assert main(["rewrite", str(src), "-o", str(dst), "--key-bits", "8", "--value-bits", "8"]) == 0
    old = sidecars(dst)
    assert old[dst.name] and old[dst.name + ".original.json"]
    rc = interrupted(["rewrite", str(src), "-o", str(dst)], stage, sig, tmp_path)
    assert rc != 0
    now = sidecars(dst)
    if sig == signal.SIGKILL and stage == "rewrite-swap":
        # killed between moving the old files aside and renaming the new ones in: none
        assert now == {n: None for n in now}, f"expected no model at {dst} after the kill, found {now}"
    else:  # before the swap, or SIGINT during it (the old files are put back)
        assert now == old, f"{stage} + {signal.Signals(sig).name}: the old model changed: {now} vs {old}"
    if sig == signal.SIGINT:
        assert leftovers(dst) == [], "Ctrl-C left the staging folder behind"
    else:
        assert leftovers(dst), "a killed writer leaves its staging folder (removed by the next run)"
    # the next run completes and removes what the killed one left
    assert main(["rewrite", str(src), "-o", str(dst)]) == 0
    new = sidecars(dst)
    assert new[dst.name] and new[dst.name] != old[dst.name] and new[dst.name + ".original.json"]
    assert leftovers(dst) == []


def test_refused_rewrite_writes_nothing(tmp_path, capsys):
    src = tiny_export("llama")
    out = tmp_path / "new" / "deeper" / "model.onnx"
    refused = [["--target", "edge", "--qjl"], ["--key-bits", "7"], ["--target", "edge", "--recent-window", "4"]]
    for flags in refused:
        assert main(["rewrite", str(src), "-o", str(out), *flags]) == 2, flags
        assert not (tmp_path / "new").exists(), f"refused rewrite {flags} created {tmp_path / 'new'}"
    # a graph the passes refuse (already rewritten), over an existing output: the old one stays
    dst = tmp_path / "old" / "model.onnx"
    assert main(["rewrite", str(src), "-o", str(dst)]) == 0
    before = snapshot(dst.parent)
    assert main(["rewrite", str(dst), "-o", str(dst)]) == 2
    assert "rewritten before" in capsys.readouterr().err
    assert snapshot(dst.parent) == before
    # a folder given as the model file path
    assert main(["rewrite", str(src), "-o", str(tmp_path / "old")]) == 2
    assert snapshot(dst.parent) == before


# -- export ----------------------------------------------------------------------------------------------
@pytest.fixture
def export_env(tmp_path, monkeypatch) -> tuple[Path, dict]:
    """(tiny Hugging Face folder, env) with the tq-ort cache at tmp_path/cache already holding the tiny
    model's optimum export, so an export only rewrites (seconds, no torch)."""
    from tq_ort.export import export_cache_path

    src = tiny_export("llama")
    hf = src.parent.parent / "llama-hf"
    assert (hf / "config.json").exists(), hf
    env = {"TQ_ORT_CACHE": str(tmp_path / "cache")}
    monkeypatch.setenv("TQ_ORT_CACHE", env["TQ_ORT_CACHE"])
    cached = export_cache_path(hf, "optimum")
    shutil.copytree(src.parent, cached)
    return hf, env


@pytest.mark.parametrize("stage,sig,with_old", [("export-staged", signal.SIGINT, False),
                                                ("export-staged", signal.SIGKILL, True),
                                                ("export-swap", signal.SIGINT, True),
                                                ("export-swap", signal.SIGKILL, True)])
def test_interrupted_export_leaves_the_old_folder_or_none(tmp_path, export_env, stage, sig, with_old):
    hf, env = export_env
    out = tmp_path / "models" / "tiny"
    if with_old:
        assert main(["export", str(hf), "-o", str(out), "--quiet", "--key-bits", "8", "--value-bits", "8"]) == 0
    old = snapshot(out)
    assert (old is not None) == with_old
    rc = interrupted(["export", str(hf), "-o", str(out), "--quiet"], stage, sig, tmp_path, env)
    assert rc != 0
    now = snapshot(out)
    if sig == signal.SIGKILL and stage == "export-swap":
        assert now is None, f"expected no folder at {out} after the kill, found {now}"
    else:
        assert now == old, f"{stage} + {signal.Signals(sig).name}: {out} is {now}, expected {old}"
    assert (leftovers(out) == []) == (sig == signal.SIGINT), leftovers(out)
    assert main(["export", str(hf), "-o", str(out), "--quiet"]) == 0
    new = snapshot(out)
    assert new and new != old and {"tiny/model.onnx", "tiny/model.onnx.original.json", "tiny/config.json",
                                   "tiny/tokenizer.json"} <= set(new), new
    assert leftovers(out) == []


def test_refused_export_writes_nothing(tmp_path, export_env):
    hf, _ = export_env
    cache = Path(os.environ["TQ_ORT_CACHE"])
    before_cache = snapshot(cache)
    out = tmp_path / "o" / "m"
    assert main(["export", str(hf), "-o", str(out), "--quiet", "--target", "edge", "--qjl"]) == 2
    assert main(["export", str(hf), "-o", str(out), "--quiet", "--value-bits", "7"]) == 2
    assert not (tmp_path / "o").exists()
    assert snapshot(cache) == before_cache
    # a non-empty folder that holds no model is not replaced
    keep = tmp_path / "mine"
    keep.mkdir()
    (keep / "notes.txt").write_text("not a model")
    assert main(["export", str(hf), "-o", str(keep), "--quiet"]) == 2
    assert snapshot(keep) == {"mine/notes.txt": snapshot(keep / "notes.txt")["notes.txt"]}
