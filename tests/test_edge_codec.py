"""--target edge codec subgraphs (graph_passes/edge_codec.py) against the numpy reference and the custom op.

Codes and padding must be byte-identical; the scale (docs/ops.md 1.3 step 5, not on the exact
path) within 1e-5 relative. The scale bytes <-> float conversions are exact.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from graph_passes import TQConfig
from graph_passes import edge_codec as ec
from graph_passes.builder import GraphBuilder
from tq_ort import codec

ort = pytest.importorskip("onnxruntime")


def _run(build, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Build a graph with `build(ops, *input_values) -> [outputs]`, run it in plain onnxruntime."""
    vals = [ir.Value(name=k, type=ir.TensorType(ir.DataType.from_numpy(v.dtype)), shape=ir.Shape(v.shape))
            for k, v in inputs.items()]
    g = ir.Graph(vals, [], nodes=[], opset_imports={"": 18}, name="edge_codec")
    outs = build(ec.EdgeOps(GraphBuilder(g, TQConfig())), *vals)
    for i, o in enumerate(outs):
        o.name = f"out{i}"
        g.outputs.append(o)
    proto = ir.serde.serialize_model(ir.Model(g, ir_version=10))
    proto = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    for o in proto.graph.output:
        o.type.CopyFrom(next(v.type for v in proto.graph.value_info if v.name == o.name))
    onnx.checker.check_model(proto, full_check=True)
    assert {n.domain for n in proto.graph.node} <= {""}
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, inputs)


def _vectors(d: int, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((1, 2, n, d)).astype(np.float32) * rng.uniform(0.01, 30, (1, 2, n, 1)).astype(np.float32)
    x[0, 0, 0] = 0.0  # the zero vector: codes K/2, scale 0
    x[0, 0, 1] = 1e-30  # ss underflows to 0: treated as zero too
    x[0, 1, 0, :] = 0.0
    x[0, 1, 0, 3] = -2.5  # one-hot: t hits the codebook's extreme cell
    return x


def _split(rows: np.ndarray, d: int, bits: int) -> tuple[np.ndarray, np.ndarray]:
    return codec.rows.bytes_to_f32(rows[..., :4]), rows[..., 4:]


@pytest.mark.parametrize("d,bits", [(64, 4), (64, 1), (64, 2), (64, 3), (64, 8), (128, 3), (256, 4), (80, 4),
                                    (96, 3), (112, 2), (64, 5), (128, 6), (80, 5), (96, 6)])
def test_encode_codes_bit_exact(d, bits):
    rot = codec.rotation(d, seed=d + bits)
    cb = codec.codebook(d, bits)
    x = _vectors(d, 40, d * 10 + bits)
    (rows,) = _run(lambda e, xv: [ec.encode_rows(e, xv, rot, cb)], {"x": x})
    ref = codec.encode(x, rot, cb)
    assert rows.shape == ref.shape == (1, 2, 40, codec.row_bytes(d, bits))
    s_edge, c_edge = _split(rows, d, bits)
    s_ref, c_ref = _split(ref, d, bits)
    np.testing.assert_array_equal(c_edge, c_ref)  # codes + zero padding, byte for byte
    np.testing.assert_allclose(s_edge, s_ref, rtol=1e-5, atol=0)
    assert np.all(rows[0, 0, :2, :4] == 0)  # +0.0 scale for the zero / underflowing vectors


def test_encode_matches_custom_op():
    """The same inputs through TurboQuantEncode (the built library): the same codes."""
    from tests.tiny_exports import library_has_attention

    if not library_has_attention():
        pytest.skip("custom-op library not built/registered")
    from onnx import TensorProto, helper

    from tq_ort import session_options

    for d, bits in ((64, 4), (64, 3), (96, 4), (256, 2)):
        rot, cb = codec.rotation(d, seed=7), codec.codebook(d, bits)
        x = _vectors(d, 64, d + bits)
        node = helper.make_node("TurboQuantEncode", ["x", "rot", "cb"], ["rows"], domain="turboquant", bits=bits)
        g = helper.make_graph([node], "enc", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                              [helper.make_tensor_value_info("rows", TensorProto.UINT8, None)],
                              initializer=[onnx.numpy_helper.from_array(rot, "rot"),
                                           onnx.numpy_helper.from_array(cb, "cb")])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("turboquant", 1)])
        op_rows = ort.InferenceSession(m.SerializeToString(), session_options(),
                                       providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        (rows,) = _run(lambda e, xv: [ec.encode_rows(e, xv, rot, cb)], {"x": x})
        np.testing.assert_array_equal(rows[..., 4:], op_rows[..., 4:])
        s, s_op = codec.rows.bytes_to_f32(rows[..., :4]), codec.rows.bytes_to_f32(op_rows[..., :4])
        np.testing.assert_allclose(s, s_op, rtol=1e-5, atol=0)


def test_scale_bytes_roundtrip_exact():
    rng = np.random.default_rng(0)
    v = np.concatenate([rng.standard_normal(200) * 10.0 ** rng.integers(-40, 38, 200),
                        [0.0, 1.0, 2.0 ** -126, 2.0 ** -149, 3e-42, 3.4e38, -1.5, -2.0 ** -140]]).astype(np.float32)
    v = v.reshape(1, 1, -1, 1)
    b, back = _run(lambda e, s: [ec.f32_to_bytes(e, s), ec.bytes_to_f32(e, ec.f32_to_bytes(e, s))], {"s": v})
    np.testing.assert_array_equal(b, codec.rows.f32_to_bytes(v[..., 0]))
    np.testing.assert_array_equal(back.view(np.uint32), v.view(np.uint32))


@pytest.mark.parametrize("d,bits", [(64, 4), (64, 3), (128, 1), (80, 2), (64, 8), (64, 5), (128, 6), (80, 5)])
def test_decode_matches_reference(d, bits):
    rot, cb = codec.rotation(d, seed=3), codec.codebook(d, bits)
    rows = codec.encode(_vectors(d, 30, 5), rot, cb)
    scale, cent = _run(lambda e, r: list(ec.decode_rotated(e, r, d, cb)), {"rows": rows})
    _, s_ref, codes, _, _ = codec.row_fields(rows, rot, cb)
    np.testing.assert_array_equal(scale[..., 0], s_ref)
    np.testing.assert_array_equal(cent, cb[codes])
