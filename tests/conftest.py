"""Fixtures for the ORT custom-op tests: seeded RNGs, model builders, sessions with the library."""
from __future__ import annotations

import os
import zlib

import numpy as np
import onnx
import onnx.helper as oh
import onnxruntime as ort
import pytest

DOMAIN = "turboquant"
OPSET = 21
NP2ONNX = {np.dtype(np.float32): onnx.TensorProto.FLOAT, np.dtype(np.float16): onnx.TensorProto.FLOAT16,
           np.dtype(np.uint8): onnx.TensorProto.UINT8, np.dtype(np.int32): onnx.TensorProto.INT32,
           np.dtype(np.int64): onnx.TensorProto.INT64, np.dtype(np.float64): onnx.TensorProto.DOUBLE}


@pytest.fixture
def seed(request) -> int:
    """A per-test seed (stable per test id; TQ_TEST_SEED overrides). Put it in assertion messages."""
    env = os.environ.get("TQ_TEST_SEED")
    return int(env) if env else zlib.crc32(request.node.nodeid.encode())


@pytest.fixture
def rng(seed) -> np.random.Generator:
    return np.random.default_rng(seed)


@pytest.fixture(scope="session")
def lib_path() -> str:
    from tq_ort.library import library_path

    return library_path()


class Ops:
    """Builds single-node models of the turboquant ops and runs them with ORT."""

    def __init__(self, lib: str):
        self.lib = lib

    def session(self, model: onnx.ModelProto) -> ort.InferenceSession:
        so = ort.SessionOptions()
        so.register_custom_ops_library(self.lib)
        so.log_severity_level = 3
        return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])

    @staticmethod
    def model(op: str, inputs: dict, outputs: dict, attrs: dict, initializers: dict | None = None) -> onnx.ModelProto:
        """inputs: name -> (dtype, shape) or None for an omitted optional input (in order);
        outputs: name -> (dtype, shape or None); initializers: name -> array (those inputs become constants)."""
        initializers = initializers or {}
        names = [n if spec is not None else "" for n, spec in inputs.items()]
        node = oh.make_node(op, names, list(outputs), domain=DOMAIN, name=f"{op}_0", **attrs)
        g_in = [oh.make_tensor_value_info(n, NP2ONNX[np.dtype(spec[0])], spec[1])
                for n, spec in inputs.items() if spec is not None and n not in initializers]
        g_out = [oh.make_tensor_value_info(n, NP2ONNX[np.dtype(dt)], shp) for n, (dt, shp) in outputs.items()]
        inits = [onnx.numpy_helper.from_array(np.asarray(v), n) for n, v in initializers.items()]
        graph = oh.make_graph([node], op, g_in, g_out, initializer=inits)
        return oh.make_model(graph, opset_imports=[oh.make_opsetid("", OPSET), oh.make_opsetid(DOMAIN, 1)],
                             ir_version=10)

    def run(self, op: str, feeds: dict, outputs: dict, attrs: dict, initializers: dict | None = None):
        """feeds: name -> array or None (omitted optional); returns the list of outputs."""
        initializers = initializers or {}
        spec = {n: (None if a is None else (np.asarray(a).dtype, list(np.shape(a)))) for n, a in feeds.items()}
        model = self.model(op, spec, outputs, attrs, {n: feeds[n] for n in initializers})
        sess = self.session(model)
        return sess.run(None, {n: a for n, a in feeds.items() if a is not None and n not in initializers})

    def encode(self, x, rot, cb, qjl=None, *, bits, use_qjl=0, **extra_attrs):
        feeds = {"x": x, "rotation": rot, "codebook": cb}
        if qjl is not None:
            feeds["qjl_matrix"] = qjl
        return self.run("TurboQuantEncode", feeds, {"rows": (np.uint8, None)},
                        dict(bits=bits, use_qjl=use_qjl, **extra_attrs))[0]

    def decode(self, rows, rot, cb, qjl=None, *, use_qjl=0, out_dtype=np.float32, **extra_attrs):
        feeds = {"rows": rows, "rotation": rot, "codebook": cb}
        if qjl is not None:
            feeds["qjl_matrix"] = qjl
        od = 10 if np.dtype(out_dtype) == np.float16 else 1
        return self.run("TurboQuantDecode", feeds, {"x_hat": (out_dtype, None)},
                        dict(use_qjl=use_qjl, output_dtype=od, **extra_attrs))[0]


@pytest.fixture(scope="session")
def ops(lib_path) -> Ops:
    return Ops(lib_path)
