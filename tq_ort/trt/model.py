"""The model as TensorRT is given it by `tq-ort trt-build`: the rewritten graph with three changes
TensorRT needs (the model on disk is not touched; external weights stay where they are).

1. Compressed-cache I/O as int8. TensorRT has no uint8 tensors except network I/O next to a cast or
   identity layer ("Tensor ... has datatype UInt8 but is not network-level IO"), so a plugin can
   neither read nor write uint8: past_key_values.* / present.* rows of type uint8 become int8 (same
   shape, same bytes; the engine binds the same buffers), and every turboquant node gets the plugin
   field rows_dtype = 3 (int8).
2. Absent optional inputs. TensorRT's addPluginV3 rejects a missing input in the middle of a node's
   inputs: each "" before a given input becomes an empty initializer ([0], float32; the attention's
   cos/sin caches and recent-window rings: its float dtype), which the plugins treat as absent; the
   absent inputs at the end are dropped.
3. Shared buffer (optional): TurboQuantAttention field shared_buffer = 1 declares each present output an
   alias of its past input (IPluginV3OneBuildV2::getAliasedInput; present has the past's capacity).
   The builder must then enable PreviewFeature.ALIASED_PLUGIN_IO_10_03. Without it, present = past ++
   the step's rows (P + S rows).
"""
from __future__ import annotations

from pathlib import Path

DOMAIN = "turboquant"
ROWS_INT8 = 3  # ONNX TensorProto.INT8, the plugins' rows_dtype code
CACHE_PREFIXES = ("past_key_values.", "present.")
#: TurboQuantAttention inputs in the float dtype T (docs/ops.md 4): cos/sin caches, recent-window rings
_T_INPUTS = (11, 12, 13, 14)


def _set_attr(node, name: str, value) -> None:
    from onnx import helper

    for i, a in enumerate(node.attribute):
        if a.name == name:
            del node.attribute[i]
            break
    node.attribute.append(helper.make_attribute(name, value))


def tensorrt_model(onnx_path: Path, *, shared_buffer: bool) -> tuple[bytes, dict]:
    """(serialized model for TensorRT's parser, what was changed: int8_rows names, shared_buffer)."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(onnx_path), load_external_data=False)
    g = m.graph
    try:
        inferred = onnx.shape_inference.infer_shapes(m)
        types = {v.name: v.type.tensor_type.elem_type for v in list(inferred.graph.value_info) + list(g.input)}
    except Exception:  # a model shape inference cannot handle: float32 is the fallback
        types = {}
    int8_rows = []
    for v in list(g.input) + list(g.output) + list(g.value_info):
        if v.type.tensor_type.elem_type == onnx.TensorProto.UINT8 and v.name.startswith(CACHE_PREFIXES):
            v.type.tensor_type.elem_type = onnx.TensorProto.INT8
            int8_rows.append(v.name)
    empties: dict[int, str] = {}
    n_tq = 0
    for node in g.node:
        if node.domain != DOMAIN:
            continue
        n_tq += 1
        _set_attr(node, "rows_dtype", ROWS_INT8)
        if node.op_type == "TurboQuantAttention" and shared_buffer:
            _set_attr(node, "shared_buffer", 1)
        inputs = list(node.input)
        while inputs and inputs[-1] == "":
            inputs.pop()
        t = types.get(inputs[0], onnx.TensorProto.FLOAT) if inputs else onnx.TensorProto.FLOAT
        for k, name in enumerate(inputs):
            if name:
                continue
            dt = t if node.op_type == "TurboQuantAttention" and k in _T_INPUTS else onnx.TensorProto.FLOAT
            if dt not in empties:
                empties[dt] = f"tq.trt.empty.{onnx.TensorProto.DataType.Name(dt).lower()}"
                g.initializer.append(numpy_helper.from_array(
                    np.zeros([0], dtype=onnx.helper.tensor_dtype_to_np_dtype(dt)), empties[dt]))
            inputs[k] = empties[dt]
        del node.input[:]
        node.input.extend(inputs)
    return m.SerializeToString(), {"int8_rows": sorted(set(int8_rows)), "shared_buffer": bool(shared_buffer and n_tq),
                                   "turboquant_nodes": n_tq}
