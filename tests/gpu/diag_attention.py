"""Diagnose TurboQuantAttention on the CUDA EP against the numpy reference at small model shapes.
    PYTHONPATH=/tmp/ortgpu:. TQ_ORT_LIBRARY=... python3 tests/gpu/diag_attention.py"""
import numpy as np
import onnxruntime as ort
from onnx import TensorProto as TP, helper

from tq_ort import codec as C, session_options


def model(B, Hq, Hkv, d, kb, vb, cap, dt=TP.FLOAT):
    ins = [("q", dt, [B, None, Hq * d]), ("k", dt, [B, None, Hkv * d]), ("v", dt, [B, None, Hkv * d]),
           ("pk", TP.UINT8, [B, Hkv, cap, C.row_bytes(d, kb)]), ("pv", TP.UINT8, [B, Hkv, cap, C.row_bytes(d, vb)]),
           ("sl", TP.INT32, [B]), ("t", TP.INT32, []), ("rot", TP.FLOAT, [d]), ("kc", TP.FLOAT, [1 << kb]),
           ("vc", TP.FLOAT, [1 << vb])]
    n = helper.make_node("TurboQuantAttention", [i[0] for i in ins], ["o", "pk2", "pv2"], domain="turboquant",
                         num_heads=Hq, kv_num_heads=Hkv, key_bits=kb, value_bits=vb)
    g = helper.make_graph([n], "g", [helper.make_tensor_value_info(*i) for i in ins],
                          [helper.make_tensor_value_info("o", dt, None), helper.make_tensor_value_info("pk2", TP.UINT8, None), helper.make_tensor_value_info("pv2", TP.UINT8, None)])
    return helper.make_model(g, ir_version=9, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("turboquant", 1)])


def case(B, Hq, Hkv, d, kb, vb, P0, S, cap=64, ep="CUDAExecutionProvider", seed=0):
    rng = np.random.default_rng(seed)
    rot, kc, vc = C.rotation(d, 1), C.codebook(d, kb), C.codebook(d, vb)
    kp = rng.standard_normal((B, Hkv, P0, d)).astype(np.float32)
    vp = rng.standard_normal((B, Hkv, P0, d)).astype(np.float32)
    pk = np.zeros((B, Hkv, cap, C.row_bytes(d, kb)), np.uint8)
    pv = np.zeros((B, Hkv, cap, C.row_bytes(d, vb)), np.uint8)
    pk[:, :, :P0] = C.encode(kp, rot, kc)
    pv[:, :, :P0] = C.encode(vp, rot, vc)
    q = (rng.standard_normal((B, S, Hq * d)) * 0.3).astype(np.float32)
    k = rng.standard_normal((B, S, Hkv * d)).astype(np.float32)
    v = rng.standard_normal((B, S, Hkv * d)).astype(np.float32)
    sl = np.full(B, P0 + S - 1, np.int32)
    feeds = dict(q=q, k=k, v=v, pk=pk, pv=pv, sl=sl, t=np.array(P0 + S, np.int32), rot=rot, kc=kc, vc=vc)
    ref = C.attention(q, k, v, pk, pv, sl, P0 + S, rot, kc, vc, num_heads=Hq, kv_num_heads=Hkv)
    out = {}
    for e in (ep, "CPUExecutionProvider"):
        so = session_options()
        s = ort.InferenceSession(model(B, Hq, Hkv, d, kb, vb, cap).SerializeToString(), so, providers=[e])
        out[e] = s.run(None, feeds)
    for e, o in out.items():
        err = np.linalg.norm(o[0] - ref[0]) / np.linalg.norm(ref[0])
        kbytes = np.array_equal(o[1][:, :, :P0 + S, 4:], ref[1][:, :, :P0 + S, 4:])
        print(f"  {e[:4]} B{B} Hq{Hq} Hkv{Hkv} d{d} K{kb}V{vb} P0={P0} S={S}: rel err {err:.2e} present_k codes exact {kbytes}")


for kb, vb in ((8, 8), (4, 4), (3, 3)):
    for P0, S in ((0, 7), (7, 1), (30, 1)):
        case(1, 4, 2, 64, kb, vb, P0, S)
case(1, 9, 3, 64, 4, 4, 30, 1)
case(1, 32, 8, 128, 4, 4, 30, 1)
