"""tq_ort.library: finding the built library and registering it with ONNX Runtime."""
from __future__ import annotations

import ctypes
import os
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest

import tq_ort
from tq_ort import codec, library


def test_library_path_is_a_loadable_file():
    path = library.library_path()
    assert os.path.isfile(path) and os.path.isabs(path)
    lib = ctypes.CDLL(path)
    assert hasattr(lib, "RegisterCustomOps")


def test_reexported_from_package():
    assert tq_ort.library_path() == library.library_path()


def test_session_options_registers_the_ops(ops):
    so = library.session_options()
    assert isinstance(so, ort.SessionOptions)
    d = 64
    model = ops.model("TurboQuantEncode", {"x": (np.float32, [3, d]), "rotation": (np.float32, [d]),
                                           "codebook": (np.float32, [16])}, {"rows": (np.uint8, None)}, {"bits": 4})
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((3, d)).astype(np.float32)
    rot, cb = codec.rotation(d, 0), codec.codebook(d, 4)
    rows = sess.run(None, {"x": x, "rotation": rot, "codebook": cb})[0]
    assert np.array_equal(rows[:, 4:], codec.encode(x, rot, cb)[:, 4:])


def test_session_options_reuses_given_options():
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    assert library.session_options(so) is so


def test_env_override_missing_file(monkeypatch, tmp_path):
    monkeypatch.setenv("TQ_ORT_LIBRARY", str(tmp_path / "nope.so"))
    monkeypatch.setattr(library, "_candidates", lambda: [tmp_path / "nope.so"])
    with pytest.raises(FileNotFoundError, match="not found.*pip install"):
        library.library_path()


def test_internal_symbols_hidden():
    out = subprocess.run(["nm", "-D", "--defined-only", library.library_path()], capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip("nm not available")
    names = {line.split()[-1] for line in out.stdout.splitlines() if line.strip()}
    assert "RegisterCustomOps" in names
    # C++ internals stay hidden (the CUDA part may export its extern "C" tq_cuda_* test API).
    internal = {n for n in names if n.startswith("_ZN2tq") or n.startswith("_ZN3Ort")}
    assert not internal, f"internal symbols exported: {sorted(internal)[:5]}"


def test_two_sessions_share_the_registration(ops):
    """Registering the library in many sessions (and in one process twice) is fine."""
    for _ in range(3):
        library.session_options()
    subprocess.run([sys.executable, "-c", "import tq_ort; tq_ort.session_options(); tq_ort.session_options()"],
                   check=True)
