"""A tiny --target edge model under Node with onnxruntime-web's wasm backend (examples/node/run_edge.mjs):
several decode steps with the uint8 cache kept between steps; logits compared with Python onnxruntime."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from graph_passes import TQConfig, rewrite_file
from tests.test_edge import _run
from tests.tiny_exports import tiny_export

NODE_DIR = Path(__file__).resolve().parents[1] / "examples" / "node"
PROMPT = [256, 84, 104, 101, 32]
STEPS = 6


def _node_or_skip() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    if not (NODE_DIR / "node_modules" / "onnxruntime-web").is_dir():
        pytest.skip(f"onnxruntime-web not installed: run `npm ci` in {NODE_DIR}")
    return node


@pytest.mark.parametrize("kw", [{}, {"key_bits": 3, "value_bits": 2}])
def test_edge_model_in_onnxruntime_web(tmp_path, kw):
    node = _node_or_skip()
    path = rewrite_file(tiny_export("llama"), tmp_path / "edge.onnx", TQConfig(target="edge", **kw))
    r = subprocess.run([node, "run_edge.mjs", str(path), "--prompt", ",".join(map(str, PROMPT)),
                        "--steps", str(STEPS), "--json"], capture_output=True, text=True, cwd=NODE_DIR, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    # Python onnxruntime on the same tokens (the ones Node chose greedily)
    steps = [PROMPT] + [[t] for t in got["tokens"]]
    ref, cache = _run(path, steps, library=False)
    assert len(got["logits"]) == len(ref) == STEPS + 1
    for i, (a, b) in enumerate(zip(got["logits"], ref)):
        a = np.asarray(a, np.float32)
        span = float(b.max() - b.min())
        assert float(np.abs(a - b).max()) <= 1e-4 * span + 1e-5, f"step {i}: wasm vs CPU logits differ"
    assert got["length"] == len(PROMPT) + STEPS
    assert got["cache_bytes"] == sum(v.nbytes for v in cache.values())
