"""One fuzz case: the op, its attributes, inputs (in the op's order), declared outputs, and what is
expected of it. Builds the single-node ONNX model and the worker's request."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnx
import onnx.helper as oh

from fuzz.worker import EMPTY

DOMAIN = "turboquant"
OPSET = 21
F32, F16, U8, I32, I64, F64, I8 = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.UINT8,
                                   onnx.TensorProto.INT32, onnx.TensorProto.INT64, onnx.TensorProto.DOUBLE,
                                   onnx.TensorProto.INT8)
NP2ONNX = {np.dtype(np.float32): F32, np.dtype(np.float16): F16, np.dtype(np.uint8): U8, np.dtype(np.int32): I32,
           np.dtype(np.int64): I64, np.dtype(np.float64): F64, np.dtype(np.int8): I8}


@dataclass(frozen=True)
class Empty:
    """A zero-size tensor whose other dims may be huge (numpy refuses such shapes; ORT takes them)."""
    shape: tuple
    dtype: np.dtype
    size = 0

    def __post_init__(self):
        if 0 not in self.shape:  # else the worker would allocate it (and the case would test that)
            raise ValueError(f"Empty{tuple(self.shape)}: expected a zero dim")

    @property
    def ndim(self) -> int:
        return len(self.shape)


@dataclass
class FuzzCase:
    """A single-node model of one op with its feeds.

    inputs: name -> array, or None for an omitted optional input (in the op's input order).
    outputs: name -> declared ONNX element type (in the op's output order).
    valid: the case satisfies docs/ops.md, so ORT must return outputs equal to `reference()`.
    compare(got, ref) -> None or a description of the first difference.
    """
    op: str
    label: str
    attrs: dict
    inputs: dict
    outputs: dict
    valid: bool = False
    reference: Callable[[], list] | None = None
    compare: Callable[[list, list], str | None] | None = None
    initializers: tuple = ()
    shared: dict = field(default_factory=dict)  # input -> output bound to one buffer (IOBinding)
    threads: int = 1

    def model(self) -> onnx.ModelProto:
        names = list(self.inputs)
        while names and self.inputs[names[-1]] is None:  # trailing omitted optionals are dropped
            names.pop()
        node_in = [n if self.inputs[n] is not None else "" for n in names]
        node = oh.make_node(self.op, node_in, list(self.outputs), domain=DOMAIN, name=f"{self.op}_fuzz", **self.attrs)
        g_in = [oh.make_tensor_value_info(n, NP2ONNX[self.inputs[n].dtype], None)
                for n in names if self.inputs[n] is not None and n not in self.initializers]
        g_out = [oh.make_tensor_value_info(n, t, None) for n, t in self.outputs.items()]
        inits = [onnx.numpy_helper.from_array(self.inputs[n], n) for n in self.initializers
                 if self.inputs.get(n) is not None]
        graph = oh.make_graph([node], self.op, g_in, g_out, initializer=inits)
        return oh.make_model(graph, opset_imports=[oh.make_opsetid("", OPSET), oh.make_opsetid(DOMAIN, 1)],
                             ir_version=10)

    def feeds(self) -> dict:
        return {n: (EMPTY, a.shape, a.dtype.name) if isinstance(a, Empty) else a
                for n, a in self.inputs.items() if a is not None and n not in self.initializers}

    def request(self) -> dict:
        """The worker's request (tests/fuzz/worker.py)."""
        return {"model": self.model().SerializeToString(), "feeds": self.feeds(), "outputs": list(self.outputs),
                "shared": dict(self.shared), "threads": self.threads}

    def describe(self) -> str:
        def spec(a):
            return "absent" if a is None else f"{a.dtype} {list(a.shape)}"
        ins = ", ".join(f"{n}={spec(a)}" for n, a in self.inputs.items())
        return (f"{self.op} [{self.label}] attrs={self.attrs} inputs: {ins}; outputs={list(self.outputs)} "
                f"shared={self.shared} threads={self.threads}")

    def save(self, path_stem: str) -> None:
        """The model (.onnx), feeds (.npz) and zero-size feeds numpy cannot hold (.json: name -> shape,
        dtype), to reproduce a failure without this package."""
        onnx.save(self.model(), path_stem + ".onnx")
        feeds = self.feeds()
        np.savez(path_stem + ".npz", **{n: a for n, a in feeds.items() if not isinstance(a, tuple)})
        empties = {n: [list(a[1]), a[2]] for n, a in feeds.items() if isinstance(a, tuple)}
        if empties:
            with open(path_stem + ".json", "w") as f:
                json.dump({"empty_feeds": empties, "case": self.describe()}, f)
