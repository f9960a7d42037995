"""Drive the TensorRT plugins of libtq_trt_plugins.so directly (createPlugin -> getOutputDataTypes ->
getOutputShapes -> supportsFormatCombination -> configurePlugin -> getWorkspaceSize ->
getFieldsToSerialize -> createPlugin(runtime) -> attachToContext -> onShapeChange -> enqueue) through
the C++ stand-in tests/gpu/trt_harness.cc, and compare the outputs with the ORT CPU op (libtq_ort_ops)
on random inputs, with the tolerances of tests/test_cuda_ops.py. TensorRT-RTX engines do not run on
Hopper, so this is how the plugins' enqueue is checked on an H100/H200 (docs/tensorrt.md).

    python3 tests/gpu/trt_harness.py            # on the GPU machine (torch with CUDA): N/N passed
    python3 tests/gpu/trt_harness.py --cpu      # everything up to enqueue (no GPU), used by the CPU tests

Libraries: TQ_TRT_PLUGINS / TQ_ORT_LIBRARY override tq_ort.library's search; unset, copies in
build/trt-harness/ (put there by tests/gpu/trt_harness_build.sh, so that carrying that one folder to
a GPU machine is enough) are used first. The harness library is build/trt-harness/libtq_trt_harness.so
(built by tests/gpu/trt_harness_build.sh when missing).
"""
from __future__ import annotations

import argparse
import ctypes
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from tq_ort import codec  # noqa: E402
from tq_ort.library import library_path, trt_plugin_path  # noqa: E402

BUNDLE = ROOT / "build" / "trt-harness"
HARNESS = BUNDLE / "libtq_trt_harness.so"
for _env, _name in (("TQ_TRT_PLUGINS", "libtq_trt_plugins.so"), ("TQ_ORT_LIBRARY", "libtq_ort_ops.so")):
    if not os.environ.get(_env) and (BUNDLE / _name).is_file():
        os.environ[_env] = str(BUNDLE / _name)
# nvinfer1::DataType values
TRT_TYPE = {np.dtype(np.float32): 0, np.dtype(np.float16): 1, np.dtype(np.int8): 2, np.dtype(np.int32): 3,
            np.dtype(np.uint8): 5}
ORT_ATTN_IN = ["query", "key", "value", "past_key", "past_value", "seqlens_k", "total_sequence_length", "rotation",
               "key_codebook", "value_codebook", "qjl_matrix", "cos_cache", "sin_cache", "past_key_recent",
               "past_value_recent"]
I32, F32, I32S = 0, 1, 2


def load_harness() -> ctypes.CDLL:
    if not HARNESS.is_file():
        subprocess.run([str(ROOT / "tests" / "gpu" / "trt_harness_build.sh")], check=True)
    h = ctypes.CDLL(str(HARNESS))
    P, I, L = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64
    IP, LP = ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int64)
    h.h_init.argtypes = [ctypes.c_char_p]
    h.h_messages.restype = ctypes.c_char_p
    h.h_create.restype = P
    h.h_create.argtypes = [ctypes.c_char_p, I, ctypes.POINTER(ctypes.c_char_p), IP, IP,
                           ctypes.POINTER(ctypes.c_double), I]
    h.h_destroy.argtypes = [P]
    h.h_identity.restype = ctypes.c_char_p
    h.h_identity.argtypes = [P]
    h.h_nb_outputs.argtypes = [P]
    h.h_aliased_input.argtypes = [P, I]
    h.h_output_types.argtypes = [P, I, IP, I, IP]
    h.h_output_shapes.argtypes = [P, I, IP, LP, I, LP, I, IP, LP]
    h.h_configure.argtypes = [P, I, IP, IP, LP, I, IP, IP, LP, IP, ctypes.POINTER(ctypes.c_uint64)]
    h.h_runtime_copy.restype = P
    h.h_runtime_copy.argtypes = [P]
    h.h_clone.restype = P
    h.h_clone.argtypes = [P]
    h.h_fields.restype = ctypes.c_char_p
    h.h_fields.argtypes = [P]
    h.h_enqueue.argtypes = [P, I, IP, IP, LP, I, IP, IP, LP, ctypes.POINTER(P), ctypes.POINTER(P), P, P]
    h.h_allocations.restype = L
    if h.h_init(trt_plugin_path().encode()) != 0:
        raise RuntimeError("harness could not load the plugin library: " + h.h_messages().decode())
    return h


def _ints(v):
    return (ctypes.c_int * max(len(v), 1))(*v)


def _dims(shapes):
    flat = []
    for s in shapes:
        flat += list(s) + [0] * (8 - len(s))
    return (ctypes.c_int64 * max(len(flat), 1))(*flat), _ints([len(s) for s in shapes])


class Plugin:
    """One plugin object in the harness (build phase unless runtime=True)."""

    def __init__(self, h: ctypes.CDLL, name: str, fields: dict, handle: int | None = None):
        self.h, self.name = h, name
        if handle is None:
            names = list(fields)
            kinds = [F32 if isinstance(v, float) else I32S if isinstance(v, (list, tuple)) else I32 for v in fields.values()]
            counts = [len(v) if isinstance(v, (list, tuple)) else 1 for v in fields.values()]
            vals = [x for v in fields.values() for x in (v if isinstance(v, (list, tuple)) else [v])]
            handle = h.h_create(name.encode(), len(names), (ctypes.c_char_p * max(len(names), 1))(*[n.encode() for n in names]),
                                _ints(kinds), _ints(counts), (ctypes.c_double * max(len(vals), 1))(*vals), 0)
        self.p = handle

    def __bool__(self) -> bool:
        return bool(self.p)

    def output_types(self, in_types, nout):
        out = _ints([0] * nout)
        rc = self.h.h_output_types(self.p, len(in_types), _ints(in_types), nout, out)
        return rc, list(out)[:nout]

    def output_shapes(self, in_shapes, shape_vals, nout):
        dims, nb = _dims(in_shapes)
        onb, odims = _ints([0] * nout), (ctypes.c_int64 * (8 * nout))()
        sv = (ctypes.c_int64 * max(len(shape_vals), 1))(*shape_vals)
        rc = self.h.h_output_shapes(self.p, len(in_shapes), nb, dims, len(shape_vals), sv, nout, onb, odims)
        return rc, [tuple(odims[8 * i:8 * i + onb[i]]) for i in range(nout)] if rc == 0 else None

    def configure(self, in_types, in_shapes, out_types, out_shapes):
        idims, inb = _dims(in_shapes)
        odims, onb = _dims(out_shapes)
        bad, ws = ctypes.c_int(0), ctypes.c_uint64(0)
        rc = self.h.h_configure(self.p, len(in_types), _ints(in_types), inb, idims, len(out_types), _ints(out_types),
                                onb, odims, ctypes.byref(bad), ctypes.byref(ws))
        return rc, bad.value, ws.value

    def runtime_copy(self) -> "Plugin":
        return Plugin(self.h, self.name, {}, self.h.h_runtime_copy(self.p))

    def fields(self) -> str:
        return self.h.h_fields(self.p).decode()

    def enqueue(self, in_types, in_shapes, out_types, out_shapes, ins, outs, ws, stream) -> int:
        idims, inb = _dims(in_shapes)
        odims, onb = _dims(out_shapes)
        P = ctypes.c_void_p
        return self.h.h_enqueue(self.p, len(in_types), _ints(in_types), inb, idims, len(out_types), _ints(out_types),
                                onb, odims, (P * len(ins))(*ins), (P * len(outs))(*outs), ws, stream)

    def __del__(self):
        if getattr(self, "p", None):
            self.h.h_destroy(self.p)


# ------------------------------------------------------------------------------------ cases
ROWS_NP = {2: np.uint8, 3: np.int8, 6: np.int32}


def _as_words(rows: np.ndarray, rows_dtype: int = 6) -> np.ndarray:
    """uint8 [..., Rb] rows as the TensorRT path carries them: int32 words [..., Rb/4] (rows_dtype=6)
    or int8 bytes (3); the same memory."""
    return np.ascontiguousarray(rows).view(ROWS_NP[rows_dtype])


def encode_case(rng, d, bits, dense, dt, qjl=False, rows_dtype=6):
    rot, cb = codec.rotation(d, 1, dense=dense), codec.codebook(d, bits)
    x = (rng.standard_normal((3, 17, d)) * 4).astype(dt)
    ins = [x, rot, cb] + ([codec.qjl_matrix(d, d, 2)] if qjl else [])
    fields = dict(bits=bits, use_qjl=int(qjl), rows_dtype=rows_dtype)
    return dict(op="TurboQuantEncode", ins=ins, fields=fields, ort_attrs=dict(bits=bits, use_qjl=int(qjl)),
                ort_in=["x", "rotation", "codebook", "qjl_matrix"][:len(ins)], ort_out={"rows": (np.uint8, None)},
                rows_out=[0] if rows_dtype != 2 else [], rows_dtype=rows_dtype, meta=dict(d=d, bits=bits, qjl=qjl))


def decode_case(rng, d, bits, out_dt, rows_dtype=6):
    rot, cb = codec.rotation(d, 3), codec.codebook(d, bits)
    rows = codec.encode(rng.standard_normal((40, d)).astype(np.float32), rot, cb)
    od = 10 if out_dt == np.float16 else 1
    return dict(op="TurboQuantDecode", ins=[_as_words(rows, rows_dtype), rot, cb],
                ort_ins=[rows, rot, cb], fields=dict(use_qjl=0, output_dtype=od, rows_dtype=rows_dtype),
                ort_attrs=dict(use_qjl=0, output_dtype=od), ort_in=["rows", "rotation", "codebook"],
                ort_out={"x_hat": (out_dt, None)}, rows_out=[], rows_dtype=rows_dtype, meta=dict(out_dt=out_dt))


def attention_case(rng, *, S, past, dt, d=128, Hq=8, Hkv=2, kb=4, vb=4, shape_total=False, rows_dtype=6,
                   shared=False):
    """shared: present_* written in place of past_* (field shared_buffer=1, capacity P = total)."""
    B = len(past)
    rot, kcb = codec.rotation(d, 4), codec.codebook(d, kb)
    vcb = codec.codebook(d, vb) if vb else None
    P = max(past) + (S + 7 if shared else 0)
    pk = codec.encode(rng.standard_normal((B, Hkv, P, d)).astype(np.float32), rot, kcb)
    pv = (codec.encode(rng.standard_normal((B, Hkv, P, d)).astype(np.float32), rot, vcb) if vb
          else rng.standard_normal((B, Hkv, P, d)).astype(dt))
    q = rng.standard_normal((B, S, Hq * d)).astype(dt)
    k = rng.standard_normal((B, S, Hkv * d)).astype(dt)
    v = rng.standard_normal((B, S, Hkv * d)).astype(dt)
    seqlens = np.array([p + S - 1 for p in past], np.int32)
    total = np.array([P if shared else P + S], np.int32)
    words = lambda a: _as_words(a, rows_dtype)  # noqa: E731
    ort_ins = [q, k, v, pk, pv, seqlens, total.reshape(()), rot, kcb] + ([vcb] if vb else [])
    ins = [q, k, v, words(pk), words(pv) if vb else pv, seqlens, total, rot, kcb] + ([vcb] if vb else [])
    fields = dict(num_heads=Hq, kv_num_heads=Hkv, key_bits=kb, value_bits=vb, rows_dtype=rows_dtype,
                  shared_buffer=int(shared))
    shape_vals = []
    if shape_total:
        fields["tensorrt_plugin_shape_input_indices"] = [6]
        shape_vals = [int(total[0])]
        del ins[6]
    rows_out = [] if rows_dtype == 2 else [1, 2] if vb else [1]
    return dict(op="TurboQuantAttention", ins=ins, ort_ins=ort_ins, fields=fields, shape_vals=shape_vals,
                ort_attrs=dict(num_heads=Hq, kv_num_heads=Hkv, key_bits=kb, value_bits=vb),
                ort_in=ORT_ATTN_IN[:len(ort_ins)],
                ort_out={"output": (dt, None), "present_key": (np.uint8, None), "present_value": (pv.dtype, None)},
                rows_out=rows_out, rows_dtype=rows_dtype, meta=dict(S=S, past=past, d=d, kb=kb, vb=vb, dt=dt))


def cases(rng) -> dict:
    return {
        "encode_d128_b4_f16": encode_case(rng, 128, 4, False, np.float16),
        "encode_d96_b3_dense_f32": encode_case(rng, 96, 3, True, np.float32),
        "encode_d64_b2_f32_uint8rows": encode_case(rng, 64, 2, False, np.float32, rows_dtype=2),
        "encode_d256_b8_f16": encode_case(rng, 256, 8, False, np.float16),
        "encode_d128_b3_qjl": encode_case(rng, 128, 3, False, np.float32, qjl=True),
        "decode_f32": decode_case(rng, 128, 4, np.float32),
        "decode_f16_uint8rows": decode_case(rng, 128, 4, np.float16, rows_dtype=2),
        "attention_decode_f16": attention_case(rng, S=1, past=[30, 200], dt=np.float16),
        "attention_decode_f32": attention_case(rng, S=1, past=[0, 65], dt=np.float32),
        "attention_prefill_f16": attention_case(rng, S=5, past=[0, 12], dt=np.float16),
        "attention_decode_shape_input": attention_case(rng, S=1, past=[17, 40], dt=np.float16, shape_total=True),
        "attention_keys_only": attention_case(rng, S=3, past=[9, 20], dt=np.float16, d=64, Hq=6, vb=0),
        "attention_uint8rows": attention_case(rng, S=1, past=[5, 33], dt=np.float32, d=64, Hq=4, rows_dtype=2),
        "attention_int8rows_prefill": attention_case(rng, S=4, past=[3, 21], dt=np.float16, rows_dtype=3),
        "encode_int8rows": encode_case(rng, 128, 4, False, np.float32, rows_dtype=3),
        "attention_shared_buffer_decode": attention_case(rng, S=1, past=[10, 40], dt=np.float16, shared=True),
        "attention_shared_buffer_prefill": attention_case(rng, S=6, past=[0, 9], dt=np.float16, shared=True,
                                                          rows_dtype=3),
    }


# --------------------------------------------------------------------------------- running
def reference(case, lib: str):
    from conftest import Ops  # tests/conftest.py: one-node models on the ORT CPU EP

    ops = Ops(lib)
    arrs = case.get("ort_ins", case["ins"])
    feeds = dict(zip(case["ort_in"], arrs))
    init_names = {"rotation", "codebook", "key_codebook", "value_codebook", "qjl_matrix"} & set(feeds)
    return ops.run(case["op"], feeds, case["ort_out"], case["ort_attrs"], initializers={n: feeds[n] for n in init_names})


def prepare(h, case, ref):
    """Everything before enqueue; returns (runtime plugin, in/out types and shapes, workspace) or raises."""
    ins = case["ins"]
    in_types = [TRT_TYPE[np.dtype(a.dtype)] for a in ins]
    in_shapes = [a.shape for a in ins]
    p = Plugin(h, case["op"], case["fields"])
    assert p, f"createPlugin failed: {h.h_messages().decode()}"
    assert h.h_identity(p.p).decode() == f"{case['op']}/1/", h.h_identity(p.p)
    nout = h.h_nb_outputs(p.p)
    want = [r.view(ROWS_NP[case["rows_dtype"]]) if i in case["rows_out"] else r for i, r in enumerate(ref)]
    assert nout == len(want), f"getNbOutputs {nout}, the ORT op has {len(want)}"
    rc, out_types = p.output_types(in_types, nout)
    assert rc == 0, h.h_messages().decode()
    assert out_types == [TRT_TYPE[np.dtype(w.dtype)] for w in want], f"output types {out_types}"
    rc, out_shapes = p.output_shapes(in_shapes, case.get("shape_vals", []), nout)
    assert rc == 0, h.h_messages().decode()
    assert out_shapes == [w.shape for w in want], f"output shapes {out_shapes} vs ORT {[w.shape for w in want]}"
    rc, bad, ws = p.configure(in_types, in_shapes, out_types, out_shapes)
    assert rc == 1, f"supportsFormatCombination refused position {bad} / configurePlugin failed: {h.h_messages().decode()}"
    alias = [h.h_aliased_input(p.p, o) for o in range(nout)]
    want_alias = ([-1, 3, 4] if case["fields"].get("shared_buffer") else [-1, -1, -1]) if case["op"] == "TurboQuantAttention" \
        else [-1] * nout
    assert alias == want_alias, f"getAliasedInput {alias}, expected {want_alias}"
    case["alias"] = alias
    rt = p.runtime_copy()
    assert rt, f"serialize -> createPlugin(runtime) -> attachToContext failed: {h.h_messages().decode()}"
    assert rt.fields() == p.fields(), f"fields differ after the round trip: {rt.fields()} vs {p.fields()}"
    return rt, in_types, in_shapes, out_types, out_shapes, ws, want


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def _rows_ok(got, ref, d, bits, qjl=False):
    lay = codec.layout(d, bits, qjl, d if qjl else None)
    cs = slice(4, 4 + lay.code_bytes)
    assert np.array_equal(got[..., cs], ref[..., cs]), "codes differ"
    np.testing.assert_allclose(got[..., :4].copy().view(np.float32), ref[..., :4].copy().view(np.float32), rtol=1e-5)
    if qjl:
        so = lay.signs_offset
        flips = np.mean(np.unpackbits(got[..., so:], axis=-1) != np.unpackbits(ref[..., so:], axis=-1))
        assert flips <= 0.02, f"QJL sign flips {flips:.3f}"


def compare(case, got, ref):
    """Tolerances of tests/test_cuda_ops.py."""
    m = case["meta"]
    if case["op"] == "TurboQuantEncode":
        _rows_ok(got[0], ref[0], m["d"], m["bits"], m["qjl"])
    elif case["op"] == "TurboQuantDecode":
        tol = 1e-5 if m["out_dt"] == np.float32 else 2e-3
        assert _rel(got[0], ref[0]) < tol, f"rel L2 {_rel(got[0], ref[0]):.2e}"
    else:
        fast = m["S"] == 1 and 1 <= m["vb"] <= 4 and m["kb"] <= 4
        fast = fast or (m["S"] > 1 and m["vb"] > 0 and m["d"] in (64, 80, 96, 128))
        tol = 5e-3 if fast else 2e-3 if m["dt"] == np.float16 else 2e-5
        assert got[0].dtype == ref[0].dtype and got[0].shape == ref[0].shape
        err = _rel(got[0], ref[0])
        assert err < tol, f"output rel L2 {err:.2e} (tol {tol})"
        for b, p in enumerate(m["past"]):
            n = p + m["S"]
            _rows_ok(got[1][b, :, :n], ref[1][b, :, :n], m["d"], m["kb"])
            if m["vb"]:
                _rows_ok(got[2][b, :, :n], ref[2][b, :, :n], m["d"], m["vb"])
            else:
                assert np.array_equal(got[2][b, :, :n], ref[2][b, :, :n]), "present_value (keys-only)"


def run_gpu(rt, case, in_types, in_shapes, out_types, out_shapes, ws_bytes, want):
    import torch

    to_t = {np.dtype(np.float32): torch.float32, np.dtype(np.float16): torch.float16,
            np.dtype(np.int32): torch.int32, np.dtype(np.uint8): torch.uint8, np.dtype(np.int8): torch.int8}
    dev_in = [torch.from_numpy(np.ascontiguousarray(a)).cuda() for a in case["ins"]]
    # an aliased output is its input's buffer (shared buffer: only the new rows are written)
    dev_out = [dev_in[a] if a >= 0 else torch.full(w.shape, 0, dtype=to_t[np.dtype(w.dtype)], device="cuda")
               for w, a in zip(want, case.get("alias", [-1] * len(want)))]
    ws = torch.empty(max(ws_bytes, 1), dtype=torch.uint8, device="cuda")
    stream = torch.cuda.current_stream()
    rc = rt.enqueue(in_types, in_shapes, out_types, out_shapes, [t.data_ptr() for t in dev_in],
                    [t.data_ptr() for t in dev_out], ws.data_ptr(), stream.cuda_stream)
    assert rc == 0, f"enqueue returned {rc}: {rt.h.h_messages().decode()}"
    torch.cuda.synchronize()
    got = [t.cpu().numpy() for t in dev_out]
    return [g.view(np.uint8) if i in case["rows_out"] else g for i, g in enumerate(got)]


def bad_input_checks(h) -> list[tuple[str, str | None]]:
    """Creator and shape errors: (name, failure or None)."""
    out = []

    def expect(name, ok, msg_part):
        msgs = h.h_messages().decode()
        out.append((name, None if ok and msg_part in msgs else f"ok={ok}, messages: {msgs[-400:]!r}"))
        h.h_clear()

    h.h_clear()
    expect("encode_missing_bits", not Plugin(h, "TurboQuantEncode", {}), "field 'bits' is required")
    expect("encode_bits_5", not Plugin(h, "TurboQuantEncode", {"bits": 5}), "field 'bits'=5")
    expect("encode_bits_float", not Plugin(h, "TurboQuantEncode", {"bits": 4.0}), "field 'bits': expected an integer")
    expect("attention_heads", not Plugin(h, "TurboQuantAttention", {"num_heads": 6, "kv_num_heads": 4}),
           "num_heads a multiple of kv_num_heads")
    expect("decode_output_dtype", not Plugin(h, "TurboQuantDecode", {"output_dtype": 7}), "field 'output_dtype'=7")
    expect("rows_dtype", not Plugin(h, "TurboQuantDecode", {"rows_dtype": 5}), "field 'rows_dtype'=5")
    p = Plugin(h, "TurboQuantEncode", {"bits": 4})
    rc, _ = p.output_shapes([(5, 60), (64,), (16,)], [], 1)
    expect("encode_x_not_d", rc != 0, "x: got shape [5, 60], expected [..., 64]")
    rc, _ = p.output_shapes([(5, 64), (64,), (8,)], [], 1)
    expect("encode_codebook_not_bits", rc != 0, "codebook: got shape [8], expected [16]")
    rt = p.runtime_copy()
    rc = rt.enqueue([0, 0, 0], [(5, 60), (64,), (16,)], [3], [(5, 9)], [0, 0, 0], [0], 0, 0)
    expect("runtime_shape_recorder", rc != 0, "[recorder] tq-ort TensorRT plugin: TurboQuantEncode")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cpu", action="store_true", help="stop before enqueue (no GPU needed)")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--only", default="", help="comma-separated case names")
    a = ap.parse_args(argv)
    h = load_harness()
    lib = library_path()
    print(f"plugins: {trt_plugin_path()}\nORT op library: {lib}")
    results = []
    for name, failure in bad_input_checks(h):
        results.append((name, failure))
    all_cases = cases(np.random.default_rng(a.seed))
    for name, case in all_cases.items():
        if a.only and name not in a.only.split(","):
            continue
        try:
            ref = reference(case, lib)
            prep = prepare(h, case, ref)
            if not a.cpu:
                compare(case, run_gpu(*prep[:1], case, *prep[1:]), ref)
            results.append((name, None))
        except AssertionError as e:
            results.append((name, str(e)[:600] or "assertion failed"))
        except Exception as e:  # noqa: BLE001
            results.append((name, f"{type(e).__name__}: {str(e)[:600]}"))
        h.h_clear()
    for name, failure in results:
        print(f"{'ok  ' if failure is None else 'FAIL'} {name}" + ("" if failure is None else f": {failure}"))
    n_ok = sum(f is None for _, f in results)
    print(f"{n_ok}/{len(results)} passed" + (" (CPU: up to enqueue)" if a.cpu else ""))
    if not a.cpu:
        print(f"harness GPU allocations (plugin scratch beyond the workspace): {h.h_allocations()}")
    return 0 if n_ok == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
