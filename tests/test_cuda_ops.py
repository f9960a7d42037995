"""The three ops on ORT's CUDAExecutionProvider: ORT CUDA vs ORT CPU vs the numpy reference.

Skips cleanly without onnxruntime's CUDA EP (onnxruntime-gpu and a GPU) or without a library built
with CUDA. Codes bit-exact, scales 1e-5 relative; attention outputs by relative L2 (the CUDA
decode kernel uses fp16 tensor-core products: docs/cuda.md).
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from tq_ort import codec

from conftest import Ops  # tests/ is on sys.path (rootdir conftest)

pytestmark = pytest.mark.skipif("CUDAExecutionProvider" not in ort.get_available_providers(),
                                reason="onnxruntime CUDA EP not available")

CUDA = ["CUDAExecutionProvider", "CPUExecutionProvider"]


class CudaOps(Ops):
    def __init__(self, lib, providers):
        super().__init__(lib)
        self.providers = providers

    def session(self, model: onnx.ModelProto) -> ort.InferenceSession:
        so = ort.SessionOptions()
        so.register_custom_ops_library(self.lib)
        so.log_severity_level = 3
        # No silent fallback of our nodes to the CPU kernels: the CUDA session must place them on CUDA.
        if self.providers == CUDA[:1]:
            so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
        return ort.InferenceSession(model.SerializeToString(), so, providers=self.providers)


@pytest.fixture(scope="module")
def gpu(lib_path):
    o = CudaOps(lib_path, CUDA[:1])
    # the library must carry CUDA kernels: an encode on the CUDA EP alone must create a session
    d = 64
    try:
        o.encode(np.ones((1, d), np.float32), codec.rotation(d, 0), codec.codebook(d, 4), bits=4)
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"library without CUDA kernels ({str(e)[:200]})")
    return o


@pytest.fixture(scope="module")
def cpu(lib_path):
    return CudaOps(lib_path, ["CPUExecutionProvider"])


def fields(rows, d, bits, use_qjl=False, m=None):
    lay = codec.layout(d, bits, use_qjl, m)
    rows = rows.reshape(-1, lay.row_bytes)
    return rows[:, :4].copy().view(np.float32)[:, 0], rows[:, 4:4 + lay.code_bytes]


@pytest.mark.parametrize("d,bits,dense,dt", [(128, 4, False, np.float16), (96, 3, True, np.float32),
                                              (64, 2, False, np.float32), (256, 8, False, np.float16)])
def test_encode_cuda_cpu_reference(gpu, cpu, rng, d, bits, dense, dt):
    rot, cb = codec.rotation(d, 1, dense=dense), codec.codebook(d, bits)
    x = (rng.standard_normal((3, 17, d)) * 4).astype(dt)
    ref = codec.encode(x.astype(np.float32), rot, cb)
    g = gpu.encode(x, rot, cb, bits=bits)
    c = cpu.encode(x, rot, cb, bits=bits)
    for got in (g, c):
        s, k = fields(got, d, bits)
        rs, rk = fields(ref, d, bits)
        assert np.array_equal(k, rk)
        np.testing.assert_allclose(s, rs, rtol=1e-5)


def test_encode_qjl_cuda(gpu, rng):
    d, bits, m = 128, 3, 128
    rot, cb, S = codec.rotation(d, 2), codec.codebook(d, bits), codec.qjl_matrix(m, d, 2)
    x = rng.standard_normal((50, d)).astype(np.float32)
    ref = codec.encode(x, rot, cb, True, S)
    got = gpu.encode(x, rot, cb, S, bits=bits, use_qjl=1)
    lay = codec.layout(d, bits, True, m)
    assert np.array_equal(got[:, 4:4 + lay.code_bytes], ref[:, 4:4 + lay.code_bytes])
    so = lay.signs_offset
    flips = np.mean(np.unpackbits(got[:, so:], axis=1) != np.unpackbits(ref[:, so:], axis=1))
    assert flips <= 0.02


@pytest.mark.parametrize("out_dtype", [np.float32, np.float16])
def test_decode_cuda(gpu, cpu, rng, out_dtype):
    d, bits = 128, 4
    rot, cb = codec.rotation(d, 3), codec.codebook(d, bits)
    rows = codec.encode(rng.standard_normal((40, d)).astype(np.float32), rot, cb)
    ref = codec.decode(rows, rot, cb, dtype=np.float64)
    g = gpu.decode(rows, rot, cb, out_dtype=out_dtype).astype(np.float64)
    c = cpu.decode(rows, rot, cb, out_dtype=out_dtype).astype(np.float64)
    tol = 1e-5 if out_dtype == np.float32 else 2e-3
    for got in (g, c):
        assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < tol


def _attention(ops, q, k, v, pk, pv, seqlens, total, rot, kcb, vcb, *, Hq, Hkv, kb, vb):
    feeds = {"query": q, "key": k, "value": v, "past_key": pk, "past_value": pv, "seqlens_k": seqlens,
             "total_sequence_length": np.array(total, np.int32), "rotation": rot, "key_codebook": kcb,
             "value_codebook": vcb}
    B, S = q.shape[:2]
    Pp = max(pk.shape[2], total)
    outs = {"output": (q.dtype, list(q.shape)), "present_key": (np.uint8, [B, Hkv, Pp, pk.shape[3]]),
            "present_value": (pv.dtype, [B, Hkv, Pp, pv.shape[3]])}
    return ops.run("TurboQuantAttention", feeds, outs,
                   dict(num_heads=Hq, kv_num_heads=Hkv, key_bits=kb, value_bits=vb),
                   initializers={"rotation": rot, "key_codebook": kcb, "value_codebook": vcb})


@pytest.mark.parametrize("S,past,dt", [(1, [30, 200], np.float16), (1, [0, 65], np.float32),
                                       (5, [0, 12], np.float16)])
def test_attention_cuda_cpu_reference(gpu, cpu, rng, S, past, dt):
    d, Hq, Hkv, kb, vb = 128, 8, 2, 4, 4
    B = len(past)
    rot, kcb, vcb = codec.rotation(d, 4), codec.codebook(d, kb), codec.codebook(d, vb)
    P = max(past)
    pk = codec.encode(rng.standard_normal((B, Hkv, P, d)).astype(np.float32), rot, kcb)
    pv = codec.encode(rng.standard_normal((B, Hkv, P, d)).astype(np.float32), rot, vcb)
    q = rng.standard_normal((B, S, Hq * d)).astype(dt)
    k = rng.standard_normal((B, S, Hkv * d)).astype(dt)
    v = rng.standard_normal((B, S, Hkv * d)).astype(dt)
    seqlens = np.array([p + S - 1 for p in past], np.int32)
    total = P + S
    ref, rpk, rpv = codec.attention(q, k, v, pk, pv, seqlens, np.array([total], np.int32), rot, kcb, vcb,
                                    num_heads=Hq, kv_num_heads=Hkv)
    g = _attention(gpu, q, k, v, pk, pv, seqlens, total, rot, kcb, vcb, Hq=Hq, Hkv=Hkv, kb=kb, vb=vb)
    c = _attention(cpu, q, k, v, pk, pv, seqlens, total, rot, kcb, vcb, Hq=Hq, Hkv=Hkv, kb=kb, vb=vb)
    r64 = ref.astype(np.float64)
    for name, got, tol in (("cuda", g, 5e-3), ("cpu", c, 5e-3)):
        err = np.linalg.norm(got[0].astype(np.float64) - r64) / np.linalg.norm(r64)
        assert err < tol, f"{name}: rel L2 {err:.2e}"
    for b in range(B):
        n = past[b] + S
        for got_pk, got_pv in ((g[1], g[2]), (c[1], c[2])):
            assert np.array_equal(fields(got_pk[b, :, :n], d, kb)[1], fields(rpk[b, :, :n], d, kb)[1])
            assert np.array_equal(fields(got_pv[b, :, :n], d, vb)[1], fields(rpv[b, :, :n], d, vb)[1])


def test_attention_cuda_shared_buffer_iobinding(gpu, rng):
    """past_key/present_key bound to one device buffer: only the new row is written."""
    d, Hq, Hkv, kb, vb, B, cap = 128, 8, 2, 4, 4, 2, 64
    rot, kcb, vcb = codec.rotation(d, 5), codec.codebook(d, kb), codec.codebook(d, vb)
    pk = codec.encode(rng.standard_normal((B, Hkv, cap, d)).astype(np.float32), rot, kcb)
    pv = codec.encode(rng.standard_normal((B, Hkv, cap, d)).astype(np.float32), rot, vcb)
    q = rng.standard_normal((B, 1, Hq * d)).astype(np.float16)
    k = rng.standard_normal((B, 1, Hkv * d)).astype(np.float16)
    v = rng.standard_normal((B, 1, Hkv * d)).astype(np.float16)
    seqlens = np.array([10, 40], np.int32)
    ref, rpk, rpv = codec.attention(q, k, v, pk, pv, seqlens, np.array([cap], np.int32), rot, kcb, vcb,
                                    num_heads=Hq, kv_num_heads=Hkv)
    feeds = {"query": q, "key": k, "value": v, "past_key": pk, "past_value": pv, "seqlens_k": seqlens,
             "total_sequence_length": np.array(cap, np.int32)}
    spec = {n: (a.dtype, list(a.shape)) for n, a in feeds.items()}
    spec.update({"rotation": (np.float32, [d]), "key_codebook": (np.float32, [16]), "value_codebook": (np.float32, [16])})
    outs = {"output": (np.float16, list(q.shape)), "present_key": (np.uint8, list(pk.shape)),
            "present_value": (np.uint8, list(pv.shape))}
    model = gpu.model("TurboQuantAttention", spec, outs, dict(num_heads=Hq, kv_num_heads=Hkv, key_bits=kb, value_bits=vb),
                      {"rotation": rot, "key_codebook": kcb, "value_codebook": vcb})
    sess = gpu.session(model)
    io = sess.io_binding()
    kv = {n: ort.OrtValue.ortvalue_from_numpy(feeds[n], "cuda", 0) for n in ("past_key", "past_value")}
    out = ort.OrtValue.ortvalue_from_numpy(np.full(q.shape, np.nan, np.float16), "cuda", 0)
    for n in ("query", "key", "value", "seqlens_k"):
        io.bind_ortvalue_input(n, ort.OrtValue.ortvalue_from_numpy(feeds[n], "cuda", 0))
    io.bind_cpu_input("total_sequence_length", feeds["total_sequence_length"])
    io.bind_ortvalue_input("past_key", kv["past_key"])
    io.bind_ortvalue_input("past_value", kv["past_value"])
    io.bind_ortvalue_output("output", out)
    io.bind_ortvalue_output("present_key", kv["past_key"])
    io.bind_ortvalue_output("present_value", kv["past_value"])
    sess.run_with_iobinding(io)
    got = out.numpy().astype(np.float64)
    r64 = ref.astype(np.float64)
    assert np.linalg.norm(got - r64) / np.linalg.norm(r64) < 5e-3
    gk = kv["past_key"].numpy()
    for b in range(B):
        n = int(seqlens[b]) + 1
        assert np.array_equal(fields(gk[b, :, :n], d, kb)[1], fields(rpk[b, :, :n], d, kb)[1])
        # rows past the new one are untouched (shared buffer: only the new row is written)
        assert np.array_equal(gk[b, :, n:], pk[b, :, n:])


# ---- recent window (recent_window = R > 0, docs/ops.md 4) ----------------------------------------

from test_cpu_ops_recent_window import OUTPUTS, Decoder, RCase, float_attention, run_concat, session  # noqa: E402


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def _fast(c: RCase) -> bool:
    """fp16 tensor cores run this case: the split-K decode kernel (S = 1) or prefill_tc_kernel (S > 1,
    compressed values, d in 64/80/96/128; float32 inputs: its cached rows); else the exact simple kernel."""
    if c.S == 1:
        return 1 <= c.value_bits <= 4 and c.key_bits <= 4
    return c.value_bits > 0 and c.d in (64, 80, 96, 128) and (not c.use_qjl or c.d % 16 == 0)


def _tol(c: RCase) -> float:
    if _fast(c):
        return 5e-3
    return 2e-3 if c.dtype == np.float16 else 2e-5


def _rows(got, ref, d, bits, use_qjl, what):
    """Codes exact, scales 1e-5 relative (QJL sign bits are checked by the encode tests)."""
    lay = codec.layout(d, bits, use_qjl, d if use_qjl else None)
    assert got.shape == ref.shape, what
    cs = slice(4, 4 + lay.code_bytes)
    assert np.array_equal(got[..., cs], ref[..., cs]), f"{what}: codes differ"
    np.testing.assert_allclose(got[..., :4].copy().view(np.float32), ref[..., :4].copy().view(np.float32),
                               rtol=1e-5, err_msg=what)


def _check_ring(c: RCase, got, ref, what):
    assert got[0].dtype == c.dtype and got[0].shape == ref[0].shape, what
    err = _rel(got[0], ref[0])
    assert err < _tol(c), f"{what}: output rel L2 {err:.2e} (tol {_tol(c)})"
    _rows(got[1], ref[1], c.d, c.key_bits, c.use_qjl, what + " present_key")
    if c.keys_only:
        assert np.array_equal(got[2], ref[2]), what + " present_value"
    else:
        _rows(got[2], ref[2], c.d, c.value_bits, False, what + " present_value")
    assert got[3].dtype == c.dtype and np.array_equal(got[3], ref[3]), what + " present_key_recent"
    if c.value_ring:
        assert np.array_equal(got[4], ref[4]), what + " present_value_recent"
    return err


RING_CASES = {
    "decode_fast_R4": dict(R=4, d=128, dtype=np.float16, Hq=8),
    "decode_fast_R64_below_above": dict(R=64, d=128, dtype=np.float16, Hq=8, P=200, past_lens=(150, 40)),
    "decode_fast_R1_2bit_gqa3": dict(R=1, key_bits=2, value_bits=2, Hq=6),
    "decode_fast_rotary": dict(R=4, do_rotary=True, dtype=np.float16, d=128, Hq=6, P=32),
    "decode_fast_qjl_window_softcap": dict(R=8, use_qjl=True, key_bits=3, window=6, softcap=4.0, past_lens=(20, 5),
                                           d=128),
    "decode_8bit": dict(R=16, key_bits=8, value_bits=8),
    "prefill_S_gt_R": dict(R=4, S=6, d=128, dtype=np.float16, Hq=6, P=32, past_lens=(17, 2)),
    "prefill_padded_first_prompt": dict(R=16, S=7, P=0, past_lens=(0, 0), seqlens=(6, 2), total=7,
                                        dtype=np.float16),
    "prefill_qjl_window_softcap": dict(R=8, S=3, use_qjl=True, key_bits=3, window=6, softcap=4.0,
                                       past_lens=(20, 5)),
    "keys_only": dict(R=4, S=3, value_bits=0, Hq=6),
    "keys_only_decode_value_ring": dict(R=4, value_bits=0, Hq=6, value_ring=True, dtype=np.float16),
}


@pytest.mark.parametrize("name", list(RING_CASES))
def test_recent_window_cuda_cpu_reference(gpu, cpu, rng, seed, name):
    """Concat mode: ORT CUDA and ORT CPU against tq_ort.codec (rings random, unrelated to the rows)."""
    c = RCase(**RING_CASES[name]).build(rng)
    ref = c.reference()
    g = run_concat(gpu, c)
    _check_ring(c, g, ref, f"cuda {name} seed={seed}")
    cp = run_concat(cpu, c)
    err = _rel(g[0], cp[0])
    assert err < _tol(c), f"cuda vs cpu {name} seed={seed}: rel L2 {err:.2e}"
    assert np.array_equal(g[3], cp[3]), f"cuda vs cpu {name} seed={seed}: present_key_recent"


def _run_shared_cuda(gpu, c: RCase):
    """Rows and rings in device OrtValues bound as past and present (the session's decode path)."""
    feeds = c.feeds()
    sess = session(gpu, c, feeds)
    pairs = {"past_key": "present_key", "past_value": "present_value", "past_key_recent": "present_key_recent"}
    if c.value_ring:
        pairs["past_value_recent"] = "present_value_recent"
    vals = {n: ort.OrtValue.ortvalue_from_numpy(np.asarray(feeds[n]), "cuda", 0) for n in pairs}
    io = sess.io_binding()
    for n, a in feeds.items():
        if a is not None and n not in pairs:
            io.bind_cpu_input(n, np.asarray(a))
    io.bind_output("output")
    for n, o in pairs.items():
        io.bind_ortvalue_input(n, vals[n])
        io.bind_ortvalue_output(o, vals[n])
    sess.run_with_iobinding(io)
    ptrs = {n: vals[n].data_ptr() for n in pairs}
    got = [io.get_outputs()[0].numpy()] + [vals[n].numpy() for n in pairs]
    assert all(vals[n].data_ptr() == ptrs[n] for n in pairs)
    return got


@pytest.mark.parametrize("S,dtype", [(1, np.float16), (3, np.float32), (6, np.float16)])
def test_recent_window_cuda_shared_buffers(gpu, rng, seed, S, dtype):
    """Shared device buffers: the rings are read before they are written; only the slots of the last
    R valid new tokens change (S = 6 > R = 4 overwrites every slot after all queries read them)."""
    c = RCase(R=4 if S == 6 else 8, S=S, d=128, Hq=8, dtype=dtype, P=32, past_lens=(20, 3)).build(rng)
    before_k, before_v = c.pkr.copy(), c.pvr.copy()
    got = _run_shared_cuda(gpu, c)
    _check_ring(c, got, c.reference(), f"shared S={S} seed={seed}")
    pkr, pvr = got[3], got[4]
    vnew = c.v.reshape(c.B, S, c.Hkv, c.d)
    for b, pl in enumerate(c.past_lens):
        L = pl + S
        written = {(pl + i) % c.R: i for i in range(S) if pl + i >= L - c.R}
        new = np.zeros(c.R, bool)
        new[list(written)] = True
        for g_, before in ((pkr, before_k), (pvr, before_v)):
            assert np.array_equal(g_[b][:, ~new], before[b][:, ~new]), f"seed={seed}: a slot not due changed"
        for slot, i in written.items():
            assert np.array_equal(pvr[b][:, slot], vnew[b, i]), f"seed={seed}: value ring slot {slot}"


def test_recent_window_cuda_without_ring_outputs(gpu, rng, seed):
    """The ring outputs are optional: without them the step only reads the rings."""
    for S in (1, 3):
        c = RCase(R=4, S=S, d=128, dtype=np.float16, Hq=8).build(rng)
        feeds = c.feeds()
        spec = {n: (None if a is None else (np.asarray(a).dtype, list(np.shape(a)))) for n, a in feeds.items()}
        outs = {k: v for k, v in c.outputs().items() if k in OUTPUTS[:3]}
        sess = gpu.session(gpu.model("TurboQuantAttention", spec, outs, c.attributes()))
        got = sess.run(None, {n: a for n, a in feeds.items() if a is not None})
        err = _rel(got[0], c.reference()[0])
        assert err < _tol(c), f"S={S} seed={seed}: rel L2 {err:.2e}"


@pytest.mark.parametrize("value_bits", [4, 0])
def test_recent_window_zero_cuda_unchanged(gpu, rng, seed, value_bits):
    """R = 0: ring inputs ignored, ring outputs [B, Hkv, 0, d], the same bits as the op without them."""
    c = RCase(R=0, S=1, d=128, dtype=np.float16, Hq=8, value_bits=value_bits).build(rng)
    c.pkr = np.asarray(rng.standard_normal((c.B, c.Hkv, 4, c.d)), c.dtype)
    c.pvr = c.pkr.copy() if value_bits else None
    with_rings = run_concat(gpu, c)
    assert with_rings[3].shape == (c.B, c.Hkv, 0, c.d)
    feeds = dict(zip(["query", "key", "value", "past_key", "past_value", "seqlens_k", "total_sequence_length",
                      "rotation", "key_codebook", "value_codebook"],
                     [c.q, c.k, c.v, c.pk, c.pv, c.sl, c.tot, c.rot, c.kcb, c.vcb]))
    spec = {n: (None if a is None else (np.asarray(a).dtype, list(np.shape(a)))) for n, a in feeds.items()}
    while spec[list(spec)[-1]] is None:
        spec.pop(list(spec)[-1])
    attrs = {k: v for k, v in c.attributes().items() if k != "recent_window"}
    outs = {k: v for k, v in c.outputs().items() if k in OUTPUTS[:3]}
    plain = gpu.session(gpu.model("TurboQuantAttention", spec, outs, attrs)).run(
        None, {n: a for n, a in feeds.items() if a is not None})
    for a, b in zip(with_rings[:3], plain):
        assert np.array_equal(a, b), f"seed={seed}"


@pytest.mark.parametrize("dtype,kb,vb", [(np.float32, 2, 2), (np.float32, 1, 0), (np.float16, 2, 2)])
def test_recent_window_cuda_covering_everything_is_exact(gpu, rng, seed, dtype, kb, vb):
    """R >= the total length, step after step (prefill with a right-padded row, then decode steps on
    the split-K path): float attention over the exact history, whatever the 1/2-bit rows hold."""
    dec = Decoder(gpu, rng, R=16, kb=kb, vb=vb, dtype=dtype)
    tol = 4e-3 if dtype == np.float16 else 2e-5
    for n, (S, valid) in enumerate([(6, (6, 3))] + [(1, (1, 1))] * 7):
        out, exact = dec.step(S, valid)
        err = np.abs(out - exact).max()
        assert err < tol, f"seed={seed} step {n}: max abs err {err:.3g} vs exact float attention"


@pytest.mark.parametrize("window", [-1, 5])
def test_recent_window_cuda_boundary(gpu, rng, seed, window):
    """R < the total length: positions before past_len - R through their decoded 2-bit rows (an
    off-by-one boundary costs ~1e-2 here), the last R and the new ones exactly; the ring wraps."""
    R = 3
    dec = Decoder(gpu, rng, R=R, kb=2, vb=2, window=window, cap=24)
    steps = [(4, (4, 2))] + [(1, (1, 1))] * 5 + [(2, (2, 2))] * 2 + [(4, (4, 4))] + [(1, (1, 1))] * 2
    for n, (S, valid) in enumerate(steps):
        past = list(dec.L)
        out, _ = dec.step(S, valid)
        for b in range(dec.B):
            e0 = max(0, past[b] - R)
            K, V = dec.K[b].copy(), dec.V[b].copy()
            if e0:
                K[:e0] = codec.decode(dec.pk[b, :, :e0], dec.rot, dec.kcb).transpose(1, 0, 2)
                V[:e0] = codec.decode(dec.pv[b, :, :e0], dec.rot, dec.vcb).transpose(1, 0, 2)
            want = float_attention(dec.q[b], K, V, dec.L[b], S, dec.Hq, dec.Hkv, window)
            err = np.abs(out[b] - want).max()
            tol = 4e-3  # fp16 tensor cores: the decode kernel (S = 1) and prefill_tc_kernel's cached rows
            assert err < tol, f"seed={seed} step {n} batch {b}: max abs err {err:.3g} (e0={e0})"


def test_recent_window_cuda_errors(gpu, rng):
    c = RCase(R=4).build(rng)
    c.pkr = None
    with pytest.raises(Exception, match=r"input 'past_key_recent' \(absent\): expected a float32 \[2, 2, 4, 64\] = "
                                        r"\[B, kv_num_heads, recent_window, d\] \(recent_window=4\) ring buffer"):
        run_concat(gpu, c)
    c = RCase(R=4).build(rng)
    c.pvr = c.pvr.astype(np.float16)
    with pytest.raises(Exception, match=r"input 'past_value_recent' \(float16 \[2, 2, 4, 64\]\): expected dtype "
                                        r"float32 \(the query's\)"):
        run_concat(gpu, c)
    c = RCase(R=4).build(rng)
    c.pkr = c.pkr[:, :, :3].copy()
    with pytest.raises(Exception, match=r"input 'past_key_recent' \(float32 \[2, 2, 3, 64\]\): expected "
                                        r"\[2, 2, 4, 64\] = \[B, kv_num_heads, recent_window, d\]"):
        run_concat(gpu, c)


def test_recent_window_cuda_keys_only_malformed_value_ring(gpu, rng, seed):
    """value_bits = 0: a value ring not of the ring's shape is ignored and its output is zeros."""
    c = RCase(R=4, value_bits=0, value_ring=True).build(rng)
    c.pvr = c.pvr[:, :, :3].copy()
    got = run_concat(gpu, c)
    assert got[4].shape == (c.B, c.Hkv, c.R, c.d) and not got[4].any(), f"seed={seed}"
    _check_ring(c, got, c.reference(), f"seed={seed}")
