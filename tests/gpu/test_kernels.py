"""CUDA kernels (through the C ABI, no ONNX Runtime) against the numpy reference tq_ort.codec.

Run on a GPU machine after tests/gpu/build.sh:
    python tests/gpu/test_kernels.py [--quick]          (prints a summary, exit 1 on failure)
    pytest tests/gpu/test_kernels.py                     (skips without torch+CUDA or the library)
Codes are compared bit-exactly; scales to 1e-5 relative; QJL rnorm to 1e-4 and sign bits to a
2% flip budget (ops.md 1.3 step 6); attention outputs by relative L2 error (tolerances in TOL).
Inputs are fresh random data (never zeros); outputs are poisoned before every launch.
"""
from __future__ import annotations

import itertools
import os
import sys
import time

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.dirname(__file__))

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():  # pragma: no cover
    pytest.skip("no CUDA device", allow_module_level=True)

from tq_ort import codec  # noqa: E402

import tqcuda  # noqa: E402

_LIB = None


def lib():
    global _LIB
    if _LIB is None:
        try:
            _LIB = tqcuda.load()
        except OSError as e:  # pragma: no cover
            pytest.skip(f"CUDA kernel library not built: {e}")
    return _LIB


TDT = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# Attention output tolerances (relative L2 against the float64 reference on the same codes).
TOL = {("simple", "float32"): 2e-5, ("simple", "float16"): 2e-3, ("simple", "bfloat16"): 1e-2,
       ("fast", "float32"): 4e-3, ("fast", "float16"): 5e-3, ("fast", "bfloat16"): 1e-2}


def rel_l2(a, b):
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def dev(a, dtype=None):
    t = torch.from_numpy(np.ascontiguousarray(a))
    if dtype is not None:
        t = t.to(dtype)
    return t.cuda()


def rand_vectors(rng, shape, dtype, decades=3.0):
    """Gaussian vectors with per-vector magnitudes spread over `decades` decades, rounded to dtype.
    Returns (float32 numpy values exactly as the kernel sees them, torch tensor on the device)."""
    x = rng.standard_normal(shape).astype(np.float32)
    x *= (10.0 ** rng.uniform(-decades / 2, decades / 2, size=shape[:-1] + (1,))).astype(np.float32)
    t = torch.from_numpy(x).to(TDT[dtype])
    return t.float().numpy(), t.cuda()


def compare_rows(got, ref, d, bits, use_qjl, m, what):
    """Codes exact, scale 1e-5 rel, rnorm 1e-4 rel, signs <= 2% flipped. got/ref uint8 [..., R]."""
    lay = codec.layout(d, bits, use_qjl, m if use_qjl else None)
    got = np.asarray(got).reshape(-1, lay.row_bytes)
    ref = np.asarray(ref).reshape(-1, lay.row_bytes)
    gs = got[:, 0:4].copy().view(np.float32)[:, 0]
    rs = ref[:, 0:4].copy().view(np.float32)[:, 0]
    assert np.allclose(gs, rs, rtol=1e-5, atol=1e-30, equal_nan=True), \
        f"{what}: scale mismatch max rel {np.nanmax(np.abs(gs - rs) / np.maximum(np.abs(rs), 1e-30))}"
    cg = got[:, 4:4 + lay.code_bytes]
    cr = ref[:, 4:4 + lay.code_bytes]
    bad = np.argwhere(cg != cr)
    assert bad.size == 0, f"{what}: {len(bad)} code bytes differ, first at row {bad[0][0]} byte {bad[0][1]}"
    if use_qjl:
        o = lay.rnorm_offset
        gr = got[:, o:o + 4].copy().view(np.float32)[:, 0]
        rr = ref[:, o:o + 4].copy().view(np.float32)[:, 0]
        assert np.allclose(gr, rr, rtol=1e-4, atol=1e-6 * max(1.0, float(np.nanmax(np.abs(rr)))), equal_nan=True), \
            f"{what}: rnorm mismatch"
        so = lay.signs_offset
        sg = np.unpackbits(got[:, so:so + lay.sign_bytes], axis=1, bitorder="little")
        sr = np.unpackbits(ref[:, so:so + lay.sign_bytes], axis=1, bitorder="little")
        frac = float(np.mean(sg != sr))
        assert frac <= 0.02, f"{what}: {frac:.3%} sign bits flipped"
        # padding bits beyond m must be zero
        assert not np.any(sg[:, m:]), f"{what}: sign padding not zero"


# ------------------------------------------------------------------------------------------ encode
def run_encode(d, bits, use_qjl, dtype, dense, n=333, seed=0, misalign=False, close=False):
    L = lib()
    rng = np.random.default_rng([seed, d, bits, use_qjl, len(dtype), dense])
    rot = codec.rotation(d, seed, dense=dense)
    cb = codec.codebook(d, bits)
    if close:  # two boundaries 1e-3 apart near the middle: one grid cell holds both, the block searches
        c = cb.shape[0] // 2
        step = np.float32(1e-3) * (cb[c] - cb[c - 1])
        cb = cb.copy()
        cb[c], cb[c + 1] = cb[c - 1] + step, cb[c - 1] + 2 * step
    m = d if d <= 256 else 256
    S = codec.qjl_matrix(m, d, seed) if use_qjl else None
    xf, xt = rand_vectors(rng, (n, d), dtype)
    xf[5] = 0.0  # the zero vector round-trips to zero
    xt[5] = 0
    if misalign:  # x not 16-byte aligned: the fast kernel's cp.async tiles cannot be used
        buf = torch.empty(n * d + 1, dtype=xt.dtype, device="cuda")
        buf[1:].view(n, d).copy_(xt)
        xt = buf[1:].view(n, d)
    ref = codec.encode(xf, rot, cb, use_qjl, S)
    R = codec.row_bytes(d, bits, use_qjl, m if use_qjl else None)
    assert L.tq_cuda_row_bytes(d, bits, int(use_qjl), m) == R
    out = torch.full((n, R), 0xAB, dtype=torch.uint8, device="cuda")
    rt, ct = dev(rot), dev(cb)
    st = dev(S) if use_qjl else None
    tqcuda.check(L, L.tq_cuda_encode(tqcuda.ptr(xt), tqcuda.DT[dtype], n, d, tqcuda.ptr(rt), rot.ndim,
                                     tqcuda.ptr(ct), bits, int(use_qjl), tqcuda.ptr(st), m, tqcuda.ptr(out),
                                     tqcuda.stream_of(torch)), "encode")
    torch.cuda.synchronize()
    compare_rows(out.cpu().numpy(), ref, d, bits, use_qjl, m, f"encode d={d} b={bits} qjl={use_qjl} {dtype} dense={dense}")
    return out, rot, cb


def run_encode_nonfinite(d=128, bits=4, dtype="float32"):
    L = lib()
    rot = codec.rotation(d, 1)
    cb = codec.codebook(d, bits)
    x = np.random.default_rng(3).standard_normal((4, d)).astype(np.float32)
    x[1, 7] = np.nan
    x[2, 0] = np.inf
    xt = dev(x).to(TDT[dtype])
    R = codec.row_bytes(d, bits)
    out = torch.full((4, R), 0xAB, dtype=torch.uint8, device="cuda")
    rt, ct = dev(rot), dev(cb)
    tqcuda.check(L, L.tq_cuda_encode(tqcuda.ptr(xt), tqcuda.DT[dtype], 4, d, tqcuda.ptr(rt), 1, tqcuda.ptr(ct), bits,
                                     0, None, 0, tqcuda.ptr(out), tqcuda.stream_of(torch)), "encode")
    torch.cuda.synchronize()
    o = out.cpu().numpy()
    sc = o[:, 0:4].copy().view(np.float32)[:, 0]
    assert np.isnan(sc[1]) and np.isnan(sc[2]) and np.isfinite(sc[0]) and np.isfinite(sc[3])
    assert not o[1, 4:].any() and not o[2, 4:].any(), "non-finite rows: codes must be 0"


def run_decode(d, bits, use_qjl, out_dtype, dense, n=200, seed=1):
    L = lib()
    rng = np.random.default_rng([seed, d, bits])
    rot = codec.rotation(d, seed, dense=dense)
    cb = codec.codebook(d, bits)
    m = d
    S = codec.qjl_matrix(m, d, seed) if use_qjl else None
    x = rng.standard_normal((n, d)).astype(np.float32) * 3
    rows = codec.encode(x, rot, cb, use_qjl, S)
    ref = codec.decode(rows, rot, cb, use_qjl, S, dtype=np.float64)
    out = torch.full((n, d), float("nan"), dtype=TDT[out_dtype], device="cuda")
    rt, ct, rw = dev(rot), dev(cb), dev(rows)
    tqcuda.check(L, L.tq_cuda_decode(tqcuda.ptr(rw), n, d, tqcuda.ptr(rt), rot.ndim, tqcuda.ptr(ct), bits,
                                     int(use_qjl), m, tqcuda.ptr(out), tqcuda.DT[out_dtype],
                                     tqcuda.stream_of(torch)), "decode")
    torch.cuda.synchronize()
    got = out.float().cpu().numpy()
    assert np.all(np.isfinite(got))
    tol = {"float32": 2e-6, "float16": 1e-3, "bfloat16": 8e-3}[out_dtype]
    e = rel_l2(got, ref)
    assert e <= tol, f"decode d={d} b={bits} {out_dtype}: rel L2 {e:.2e} > {tol}"


# --------------------------------------------------------------------------------------- attention
def uses_prefill_tc(S, force, qjl, vb, d, G, dense, m=0):
    """Whether the step runs prefill_tc_kernel (tensor cores: fp16 rounding of q, k and p, bf16 for bf16
    inputs; float32 inputs: the cached rows in fp16, the rest exact; the fast path's tolerances)."""
    return (S > 1 and force != 1 and (not qjl or (m % 16 == 0 and m <= 256)) and vb > 0 and d in (64, 80, 96, 128)
            and G <= 128 and (dense or d in (64, 128)))


def run_attention(*, B=2, S=1, Hq=8, Hkv=2, d=128, kb=4, vb=4, qjl=False, dtype="float16", dense=False,
                  shared=True, past_lens=None, P=None, window=-1, softcap=0.0, rotary=False, force=0, m=None,
                  seed=0, scale=0.0, check_path=None, R=0, ring_shared=None, ring_out=True, value_ring=None):
    """One TurboQuantAttention step against the reference. R > 0: recent window with random ring
    contents (independent of the rows, so reading a position from the wrong place shows); the rings
    are shared (present == past) like the rows unless ring_shared says otherwise; ring_out=False
    passes no present rings; value_ring (keys-only) feeds a value ring anyway (None: only when
    values are compressed; False with vb = 0 and ring_out: the present value ring must be zeros)."""
    L = lib()
    rng = np.random.default_rng([seed, B, S, Hq, Hkv, d, kb, vb, int(qjl), len(dtype), R])
    rot = codec.rotation(d, seed, dense=dense)
    kcb = codec.codebook(d, kb)
    vcb = codec.codebook(d, vb) if vb else None
    m = m or d
    Smat = codec.qjl_matrix(m, d, seed) if qjl else None
    if past_lens is None:
        past_lens = [int(x) for x in rng.integers(0, 40, size=B)]
    # seqlens: L = past + S normally; a negative past means a right-padded first prompt (L < S).
    Ls = [pl + S if pl >= 0 else S + pl for pl in past_lens]
    seqlens = np.array([x - 1 for x in Ls], np.int32)
    total = max(Ls)
    if shared:
        Pcap = P or (total + 3)
        P_ = Pp = Pcap
    else:
        P_ = P if P is not None else max(max(0, pl) for pl in past_lens)
        Pp = max(P_, total)
    Rk = codec.row_bytes(d, kb, qjl, m if qjl else None)
    tdt = TDT[dtype]
    # past cache content (random vectors, encoded by the reference)
    pkf = rng.standard_normal((B, Hkv, P_, d)).astype(np.float32) * 2
    pvf, _ = rand_vectors(rng, (B, Hkv, P_, d), dtype)
    past_k = codec.encode(pkf, rot, kcb, qjl, Smat) if P_ else np.zeros((B, Hkv, 0, Rk), np.uint8)
    if vb:
        Rv = codec.row_bytes(d, vb)
        past_v = codec.encode(pvf, rot, vcb) if P_ else np.zeros((B, Hkv, 0, Rv), np.uint8)
    else:
        past_v = pvf
    # queries/keys of realistic logit size (|scale * q.k| up to ~20); values keep the 3-decade spread
    qf, qt = rand_vectors(rng, (B, S, Hq * d), dtype, decades=0.6)
    kf, kt = rand_vectors(rng, (B, S, Hkv * d), dtype, decades=0.6)
    vf, vt = rand_vectors(rng, (B, S, Hkv * d), dtype)
    cos = sin = None
    cost = sint = None
    if rotary:
        maxpos = Pp + 4
        ang = np.outer(np.arange(maxpos), 1.0 / (10000 ** (np.arange(d // 2) * 2.0 / d)))
        cost = torch.from_numpy(np.cos(ang).astype(np.float32)).to(tdt)
        sint = torch.from_numpy(np.sin(ang).astype(np.float32)).to(tdt)
        cos, sin = cost.float().numpy(), sint.float().numpy()
        cost, sint = cost.cuda(), sint.cuda()
    np_dt = {"float32": np.float32, "float16": np.float16, "bfloat16": np.float32}[dtype]
    ring_kw = {}
    pkrf = pvrf = pkrt = pvrt = None
    want_vr_out = bool(vb) or value_ring is not None
    if value_ring is None:
        value_ring = bool(vb)
    if R:
        pkrf, pkrt = rand_vectors(rng, (B, Hkv, R, d), dtype, decades=0.6)
        if value_ring:
            pvrf, pvrt = rand_vectors(rng, (B, Hkv, R, d), dtype)
        ring_kw = dict(recent_window=R, past_key_recent=pkrf.astype(np_dt),
                       past_value_recent=None if pvrf is None else pvrf.astype(np_dt))
    res = codec.attention(
        qf.astype(np_dt), kf.astype(np_dt), vf.astype(np_dt), past_k, past_v.astype(np_dt) if not vb else past_v,
        seqlens, np.array([total], np.int32), rot, kcb, vcb, Smat, num_heads=Hq, kv_num_heads=Hkv, scale=scale,
        use_qjl=qjl, do_rotary=rotary, cos_cache=cos, sin_cache=sin, local_window_size=window, softcap=softcap,
        **ring_kw)
    ref_out, ref_pk, ref_pv = res[:3]
    # device buffers
    if vb:
        pvt = dev(past_v)
    else:
        pvt = torch.from_numpy(pvf).to(tdt).cuda()
    pkt = dev(past_k)
    if shared:
        prk, prv = pkt, pvt
    else:
        prk = torch.full((B, Hkv, Pp, Rk), 0xAB, dtype=torch.uint8, device="cuda")
        prv = (torch.full((B, Hkv, Pp, Rv), 0xCD, dtype=torch.uint8, device="cuda") if vb
               else torch.full((B, Hkv, Pp, d), float("nan"), dtype=tdt, device="cuda"))
    out = torch.full((B, S, Hq * d), float("nan"), dtype=tdt, device="cuda")
    prkr = prvr = None
    if R:
        if ring_shared is None:
            ring_shared = shared
        if ring_out:
            prkr = pkrt if ring_shared else torch.full((B, Hkv, R, d), float("nan"), dtype=tdt, device="cuda")
            if want_vr_out:
                prvr = (pvrt if ring_shared and pvrt is not None
                        else torch.full((B, Hkv, R, d), float("nan"), dtype=tdt, device="cuda"))
        pkr_before = pkrt.clone()
        pvr_before = None if pvrt is None else pvrt.clone()
    rt, kct = dev(rot), dev(kcb)
    vct = dev(vcb) if vb else None
    st = dev(Smat) if qjl else None
    sl = dev(seqlens)
    p = tqcuda.attention_params(
        query=tqcuda.ptr(qt), key=tqcuda.ptr(kt), value=tqcuda.ptr(vt), past_key=tqcuda.ptr(pkt),
        past_value=tqcuda.ptr(pvt), present_key=tqcuda.ptr(prk), present_value=tqcuda.ptr(prv),
        seqlens_k=tqcuda.ptr(sl), rotation=tqcuda.ptr(rt), key_codebook=tqcuda.ptr(kct),
        value_codebook=tqcuda.ptr(vct), qjl=tqcuda.ptr(st), cos_cache=tqcuda.ptr(cost), sin_cache=tqcuda.ptr(sint),
        output=tqcuda.ptr(out), dtype=tqcuda.DT[dtype], B=B, S=S, Hq=Hq, Hkv=Hkv, d=d, P=P_, Pp=Pp,
        rot_rank=rot.ndim, key_bits=kb, value_bits=vb, use_qjl=int(qjl), m=m, do_rotary=int(rotary),
        max_pos=(Pp + 4) if rotary else 0, local_window=window, scale=scale, softcap=softcap, force_path=force,
        recent_window=R, past_key_recent=tqcuda.ptr(pkrt), past_value_recent=tqcuda.ptr(pvrt),
        present_key_recent=tqcuda.ptr(prkr), present_value_recent=tqcuda.ptr(prvr))
    wsb = L.tq_cuda_attention_workspace(p)
    ws = torch.empty(max(wsb, 256), dtype=torch.uint8, device="cuda")
    tqcuda.check(L, L.tq_cuda_attention(p, tqcuda.ptr(ws), wsb, tqcuda.stream_of(torch)), "attention")
    torch.cuda.synchronize()
    got = out.float().cpu().numpy()
    what = (f"attn B={B} S={S} Hq={Hq} Hkv={Hkv} d={d} kb={kb} vb={vb} qjl={qjl} {dtype} dense={dense} "
            f"shared={shared} past={past_lens} win={window} cap={softcap} rope={rotary} force={force} R={R}")
    assert np.all(np.isfinite(got)), f"{what}: non-finite output"
    fast = (S == 1 and force != 1 and 1 <= vb <= 4 and kb <= 4 and d in (64, 80, 96, 128, 256)
            and Hq // Hkv <= 16 and (not qjl or m % 32 == 0))
    path = "fast" if fast or uses_prefill_tc(S, force, qjl, vb, d, Hq // Hkv, dense, m) else "simple"
    e = rel_l2(got, ref_out.astype(np.float64))
    tol = TOL[(path, dtype)]
    assert e <= tol, f"{what}: rel L2 {e:.2e} > {tol} ({path})"
    # present caches: rows [0, past_len + S) of each batch row
    gk = prk.cpu().numpy()
    gv = prv.cpu().numpy() if vb else prv.float().cpu().numpy()
    for b in range(B):
        Lb = int(seqlens[b]) + 1
        past = Lb - S if Lb >= S else 0
        n = past + S
        compare_rows(gk[b, :, :n], ref_pk[b, :, :n], d, kb, qjl, m, what + f" present_key b={b}")
        if vb:
            compare_rows(gv[b, :, :n], ref_pv[b, :, :n], d, vb, False, 0, what + f" present_value b={b}")
        else:
            assert np.array_equal(gv[b, :, :n], np.asarray(ref_pv[b, :, :n], np.float32)), what + " present_value"
    if R:
        # the past rings are read-only unless shared; present rings exactly the reference's (keys are
        # written as T: the bf16 reference ring is float32, rounded here)
        def as_t(a):
            return torch.from_numpy(np.ascontiguousarray(np.asarray(a, np.float32))).to(tdt).float().numpy()
        if not ring_shared or not ring_out:
            assert torch.equal(pkrt, pkr_before), what + ": past_key_recent modified"
            if pvrt is not None:
                assert torch.equal(pvrt, pvr_before), what + ": past_value_recent modified"
        if prkr is not None:
            assert np.array_equal(prkr.float().cpu().numpy(), as_t(res[3])), what + ": present_key_recent"
        if prvr is not None:
            got_vr = prvr.float().cpu().numpy()
            if vb or value_ring:
                assert np.array_equal(got_vr, as_t(res[4])), what + ": present_value_recent"
            else:
                assert not got_vr.any(), what + ": present_value_recent must be zeros (keys-only, no value ring)"
    return e, path


def float_attention(q, K, V, L, S, Hq, Hkv):
    """Causal softmax attention in float64: q [S, Hq, d] at positions L - S .. L - 1 (the first L when
    L < S), K/V [L, Hkv, d]; zeros for invalid queries."""
    d = q.shape[-1]
    past = L - S if L >= S else 0
    out = np.zeros(q.shape)
    for i in range(min(S, L)):
        p = past + i
        for h in range(Hq):
            g = h // (Hq // Hkv)
            s = K[:p + 1, g] @ q[i, h] / np.sqrt(d)
            w = np.exp(s - s.max())
            out[i, h] = (w / w.sum()) @ V[:p + 1, g]
    return out


def run_ring_steps(*, R, steps, B=2, Hq=6, Hkv=2, d=64, kb=2, vb=2, dtype="float32", cap=24, shared=True,
                   against="reference", seed=0):
    """Several steps through one set of device buffers (rows and rings; shared: present == past, else
    fresh present buffers each step that become the next step's past), like a generation session.
    against="float": R covers the whole history, so every step must be plain float attention over the
    exact (T-rounded) history, whatever the rows hold. against="reference": each step against
    tq_ort.codec.attention on the device state before it (rows and rings compared exactly after it).
    steps: [(S, [valid tokens per batch row])]."""
    L_ = lib()
    rng = np.random.default_rng([seed, R, B, Hq, Hkv, d, kb, vb, len(dtype), int(shared)])
    tdt = TDT[dtype]
    np_dt = {"float32": np.float32, "float16": np.float16, "bfloat16": np.float32}[dtype]
    rot, kcb = codec.rotation(d, seed), codec.codebook(d, kb)
    vcb = codec.codebook(d, vb) if vb else None
    Rk = codec.row_bytes(d, kb)
    pk = torch.zeros((B, Hkv, cap, Rk), dtype=torch.uint8, device="cuda")
    pv = (torch.zeros((B, Hkv, cap, codec.row_bytes(d, vb)), dtype=torch.uint8, device="cuda") if vb
          else torch.zeros((B, Hkv, cap, d), dtype=tdt, device="cuda"))
    # rings start as garbage: no slot may be read before a step wrote it
    pkr = (torch.randn((B, Hkv, R, d), device="cuda") * 100).to(tdt)
    pvr = (torch.randn((B, Hkv, R, d), device="cuda") * 100).to(tdt) if vb else None
    rt, kct = dev(rot), dev(kcb)
    vct = dev(vcb) if vb else None
    K = [np.zeros((0, Hkv, d)) for _ in range(B)]
    V = [np.zeros((0, Hkv, d)) for _ in range(B)]
    Ls = [0] * B
    errs = []
    for n, (S, valid) in enumerate(steps):
        qf, qt = rand_vectors(rng, (B, S, Hq * d), dtype, decades=0.6)
        kf, kt = rand_vectors(rng, (B, S, Hkv * d), dtype, decades=0.6)
        vf, vt = rand_vectors(rng, (B, S, Hkv * d), dtype, decades=0.6)
        Ls = [Ls[b] + valid[b] for b in range(B)]
        seqlens = np.array([x - 1 for x in Ls], np.int32)
        total = max(Ls)
        state = [x.float().cpu().numpy() if x.dtype != torch.uint8 else x.cpu().numpy() for x in (pk, pv, pkr)]
        pvr_np = None if pvr is None else pvr.float().cpu().numpy()
        if shared:
            prk, prv, prkr, prvr = pk, pv, pkr, pvr
        else:
            prk, prv = torch.full_like(pk, 0xAB), torch.full_like(pv, float("nan") if not vb else 0xCD)
            prkr = torch.full_like(pkr, float("nan"))
            prvr = None if pvr is None else torch.full_like(pvr, float("nan"))
        out = torch.full((B, S, Hq * d), float("nan"), dtype=tdt, device="cuda")
        sl = dev(seqlens)
        p = tqcuda.attention_params(
            query=tqcuda.ptr(qt), key=tqcuda.ptr(kt), value=tqcuda.ptr(vt), past_key=tqcuda.ptr(pk),
            past_value=tqcuda.ptr(pv), present_key=tqcuda.ptr(prk), present_value=tqcuda.ptr(prv),
            seqlens_k=tqcuda.ptr(sl), rotation=tqcuda.ptr(rt), key_codebook=tqcuda.ptr(kct),
            value_codebook=tqcuda.ptr(vct), output=tqcuda.ptr(out), dtype=tqcuda.DT[dtype], B=B, S=S, Hq=Hq,
            Hkv=Hkv, d=d, P=cap, Pp=cap, rot_rank=rot.ndim, key_bits=kb, value_bits=vb, m=d, local_window=-1,
            recent_window=R, past_key_recent=tqcuda.ptr(pkr), past_value_recent=tqcuda.ptr(pvr),
            present_key_recent=tqcuda.ptr(prkr), present_value_recent=tqcuda.ptr(prvr))
        wsb = L_.tq_cuda_attention_workspace(p)
        ws = torch.empty(max(wsb, 256), dtype=torch.uint8, device="cuda")
        tqcuda.check(L_, L_.tq_cuda_attention(p, tqcuda.ptr(ws), wsb, tqcuda.stream_of(torch)), "attention")
        torch.cuda.synchronize()
        got = out.float().cpu().numpy()
        what = f"ring steps R={R} step {n} S={S} kb={kb} vb={vb} {dtype} shared={shared} vs {against}"
        assert np.all(np.isfinite(got)), what + ": non-finite output"
        fast = (S == 1 and 1 <= vb <= 4 and kb <= 4) or uses_prefill_tc(S, 0, False, vb, d, Hq // Hkv, False)
        tol = TOL[("fast" if fast else "simple", dtype)]
        if against == "float":
            want = np.zeros((B, S, Hq, d))
            for b in range(B):
                K[b] = np.concatenate([K[b], kf[b].reshape(S, Hkv, d)[:valid[b]].astype(np.float64)])
                V[b] = np.concatenate([V[b], vf[b].reshape(S, Hkv, d)[:valid[b]].astype(np.float64)])
                want[b] = float_attention(qf[b].reshape(S, Hq, d).astype(np.float64), K[b], V[b], Ls[b], S, Hq, Hkv)
            # exact path everywhere: only the output rounding and float32 sums remain
            tol = TOL[("fast", dtype)] if fast and S > 1 else {"float32": 1e-5, "float16": 2e-3, "bfloat16": 1e-2}[dtype]
            e = rel_l2(got, want.reshape(got.shape))
        else:
            ref = codec.attention(qf.astype(np_dt), kf.astype(np_dt), vf.astype(np_dt), state[0],
                                  state[1] if vb else state[1].astype(np_dt), seqlens, np.array([total], np.int32),
                                  rot, kcb, vcb, num_heads=Hq, kv_num_heads=Hkv, recent_window=R,
                                  past_key_recent=state[2].astype(np_dt),
                                  past_value_recent=None if pvr_np is None else pvr_np.astype(np_dt))
            e = rel_l2(got, ref[0].astype(np.float64))
            gk = prk.cpu().numpy()
            for b in range(B):
                nb = (Ls[b] - S if Ls[b] >= S else 0) + S  # rows [0, past_len + S)
                compare_rows(gk[b, :, :nb], ref[1][b, :, :nb], d, kb, False, 0, what + f" present_key b={b}")
            def as_t(a):
                return torch.from_numpy(np.ascontiguousarray(np.asarray(a, np.float32))).to(tdt).float().numpy()
            assert np.array_equal(prkr.float().cpu().numpy(), as_t(ref[3])), what + ": present_key_recent"
            if vb:
                assert np.array_equal(prvr.float().cpu().numpy(), as_t(ref[4])), what + ": present_value_recent"
        assert e <= tol, f"{what}: rel L2 {e:.2e} > {tol}"
        errs.append(e)
        pk, pv, pkr, pvr = prk, prv, prkr, prvr
    return max(errs), "steps"


def ring_step_cases(quick):
    """Multi-step (prefill with a right-padded row, then decode steps, chunks)."""
    first = [(6, (6, 3))]
    yield dict(R=16, steps=first + [(1, (1, 1))] * 7, against="float", dtype="float32", seed=1)
    yield dict(R=16, steps=first + [(1, (1, 1))] * 7, against="float", dtype="float16", shared=False, seed=2)
    yield dict(R=16, steps=first + [(1, (1, 1))] * 7, against="float", dtype="bfloat16", kb=1, vb=0, seed=3)
    if quick:
        yield dict(R=3, steps=[(4, (4, 2))] + [(1, (1, 1))] * 5 + [(2, (2, 2))] * 2 + [(4, (4, 4))], seed=4)
        return
    for R, shared, dt in ((3, True, "float32"), (3, False, "float16"), (5, True, "bfloat16"), (1, False, "float32")):
        yield dict(R=R, steps=[(4, (4, 2))] + [(1, (1, 1))] * 5 + [(2, (2, 2))] * 2 + [(4, (4, 4))] + [(1, (1, 1))] * 3,
                   shared=shared, dtype=dt, d=128, Hq=8, kb=4, vb=4, seed=10 + R)
    yield dict(R=4, steps=[(5, (5, 5))] + [(1, (1, 1))] * 6, kb=4, vb=0, dtype="float16", seed=20)


def ring_cases(quick):
    """Single steps with random rings against the reference (docs/ops.md 4, recent window)."""
    dts = ("float16", "bfloat16", "float32")
    i = 0
    # decode step (S = 1): fast path (bits <= 4) and simple kernel (8-bit); past_len below and above R
    for d in (64, 128):
        for kb, vb in ((4, 4), (2, 2), (4, 2), (8, 8)):
            for R in (1, 4, 16, 64):
                i += 1
                g = (1, 3, 4)[i % 3]
                if quick and not (d == 128 and R in (4, 64) and kb != 2):
                    continue
                yield dict(B=2, S=1, Hq=2 * g, Hkv=2, d=d, kb=kb, vb=vb, dtype=dts[i % 3], shared=bool(i % 2),
                           past_lens=[R // 2, R + 37 + i], rotary=(i % 4 == 0), R=R, seed=500 + i)
    # many splits, past_len == R, 0 and 1 (no compressed rows), GQA 4 at the benchmark's shape
    yield dict(B=3, S=1, Hq=32, Hkv=8, d=128, kb=4, vb=4, dtype="float16", shared=True, past_lens=[64, 3000, 0],
               R=64, seed=540)
    yield dict(B=2, S=1, Hq=8, Hkv=2, d=128, kb=4, vb=4, dtype="float16", shared=False, past_lens=[1, 65], R=64,
               seed=541)
    # window cutting into the compressed part / lying inside the ring; softcap; QJL on the rows only
    yield dict(B=2, S=1, Hq=8, Hkv=2, d=128, kb=3, vb=3, qjl=True, dtype="float16", past_lens=[40, 300], R=16,
               window=30, softcap=20.0, seed=542)
    yield dict(B=2, S=1, Hq=6, Hkv=2, d=64, kb=4, vb=4, dtype="bfloat16", past_lens=[40, 300], R=16, window=10,
               seed=543)
    # ring outputs absent (the step only reads the rings); rings concat with shared rows and vice versa
    yield dict(B=2, S=1, Hq=8, Hkv=2, d=128, kb=4, vb=4, dtype="float16", past_lens=[10, 90], R=16, ring_out=False,
               seed=544)
    yield dict(B=2, S=3, Hq=8, Hkv=2, d=128, kb=4, vb=4, dtype="float16", past_lens=[10, 90], R=16, ring_out=False,
               seed=545)
    yield dict(B=2, S=1, Hq=8, Hkv=2, d=128, kb=4, vb=4, dtype="float32", shared=True, ring_shared=False,
               past_lens=[10, 90], R=8, seed=546)
    yield dict(B=2, S=4, Hq=8, Hkv=2, d=128, kb=4, vb=4, dtype="float32", shared=False, ring_shared=True,
               past_lens=[10, 90], R=8, seed=547)
    # prefill (S > 1): S > R and S < R, right padding (negative past), RoPE, GQA 1/3/4, 8/2-bit
    j = 0
    for S, R in ((5, 4), (7, 1), (5, 16), (6, 64), (9, 4)):
        for kb, vb, d in ((4, 4, 128), (2, 2, 64), (8, 8, 128)):
            j += 1
            if quick and j % 4:
                continue
            g = (1, 3, 4)[j % 3]
            yield dict(B=2, S=S, Hq=2 * g, Hkv=2, d=d, kb=kb, vb=vb, dtype=dts[j % 3], shared=bool(j % 2),
                       past_lens=[20 + 3 * j, -2], rotary=(j % 2 == 0), R=R, seed=600 + j)
    # keys-only: key ring only; a value ring of the ring's shape passes through, none gives zeros
    for S in (1, 5):
        for value_ring in (None, True, False):
            yield dict(B=2, S=S, Hq=8, Hkv=2, d=128, kb=4, vb=0, dtype="float16", shared=(S == 1), past_lens=[3, 44],
                       R=8, value_ring=value_ring, seed=700 + S)


# ------------------------------------------------------------------------------------------ cases
DIMS = (64, 80, 96, 128, 256)


def encode_cases(quick):
    for d, bits, q in itertools.product(DIMS, (1, 2, 3, 4, 5, 6, 8), (False, True)):
        if quick and (bits not in (3, 4) or d not in (80, 128)):
            continue
        for dt in (("float32",) if quick else ("float32", "float16", "bfloat16")):
            yield dict(d=d, bits=bits, use_qjl=q, dtype=dt, dense=(d in (80, 96)) or (d == 64 and bits == 2))
    # the throughput kernel (Hadamard, no QJL, d in {32, 64, 128, 256}, b in {2, 3, 4}): many tiles per
    # warp, every input dtype, a ragged last tile, and the misaligned fallback
    for d, bits, dt, n in ((128, 4, "float16", 40001), (64, 3, "bfloat16", 30007), (256, 2, "float32", 9001),
                           (32, 4, "float16", 20005), (32, 3, "float32", 333), (128, 3, "float16", 777)):
        if quick and n > 10000:
            continue
        yield dict(d=d, bits=bits, use_qjl=False, dtype=dt, dense=False, n=n)
    yield dict(d=128, bits=4, use_qjl=False, dtype="float16", dense=False, n=1001, misalign=True)
    # a codebook whose boundaries no grid of 32 cells separates: the binary-search fallback
    yield dict(d=128, bits=4, use_qjl=False, dtype="float16", dense=False, n=5001, close=True)
    yield dict(d=64, bits=3, use_qjl=False, dtype="float32", dense=False, n=777, close=True)


def decode_cases(quick):
    for d, bits in itertools.product(DIMS, (1, 2, 3, 4, 5, 6, 8)):
        if quick and bits != 3:
            continue
        for od in ("float32", "float16", "bfloat16"):
            yield dict(d=d, bits=bits, use_qjl=(bits == 3), out_dtype=od, dense=d in (80, 96))


def attention_cases(quick):
    dts = ("float16", "bfloat16", "float32")
    G = (1, 3, 4, 8, 16)
    i = 0
    # decode step (S = 1): fast path and the simple kernel on the same inputs
    for d in DIMS:
        for kb, vb, q in ((4, 4, False), (3, 3, False), (4, 3, False), (2, 4, False), (3, 4, True), (1, 2, False),
                          (4, 2, True)):
            i += 1
            g = G[i % len(G)]
            hkv = 2 if g != 16 else 1
            base = dict(B=3, S=1, Hq=g * hkv, Hkv=hkv, d=d, kb=kb, vb=vb, qjl=q, dtype=dts[i % 3],
                        dense=d in (80, 96), shared=bool(i % 2), past_lens=[0, 37 + i, 190 + 7 * i],
                        window=(-1 if i % 4 else 50), softcap=(30.0 if i % 5 == 0 else 0.0), seed=i)
            if quick and not (d == 128 or (d == 80 and kb == 3)):
                continue
            yield dict(base)
            if not quick and i % 2 == 0:
                yield dict(base, force=1)
    # decode step with RoPE (queries roped by the split kernel or, dense + QJL, by the pre-pass; keys by the merge)
    yield dict(B=3, S=1, Hq=8, Hkv=2, d=128, kb=4, vb=4, dtype="float16", shared=True, past_lens=[0, 17, 140],
               rotary=True, seed=50)
    yield dict(B=2, S=1, Hq=12, Hkv=4, d=96, kb=3, vb=3, qjl=True, dtype="bfloat16", dense=True, shared=False,
               past_lens=[33, 70], rotary=True, seed=51)
    # long contexts (many tiles and splits), GQA 4
    for d, kb, vb in ((128, 4, 4), (128, 3, 3), (128, 4, 3), (64, 4, 4)):
        yield dict(B=2, S=1, Hq=32, Hkv=8, d=d, kb=kb, vb=vb, dtype="float16", shared=True,
                   past_lens=[3001, 4500], seed=100 + kb + vb)
    # prefill over many cached rows (prefill_tc_kernel; written for v14's prefill_rows_kernel: several
    # query tiles, window, padding, G from 1 to 16, dense rotation, 8-bit codes, float32 partials)
    long_prefill = [dict(B=2, S=70, Hq=32, Hkv=8, d=128, kb=4, vb=4, dtype="float16", shared=True,
                         past_lens=[1000, 333], seed=600),
                    dict(B=2, S=45, Hq=12, Hkv=4, d=64, kb=3, vb=2, dtype="bfloat16", shared=False,
                         past_lens=[517, -5], window=100, softcap=25.0, rotary=True, seed=601),
                    dict(B=1, S=9, Hq=16, Hkv=1, d=128, kb=4, vb=3, dtype="float32", shared=True, past_lens=[700],
                         seed=602),
                    dict(B=1, S=100, Hq=4, Hkv=4, d=96, kb=4, vb=4, dtype="float16", dense=True, shared=True,
                         past_lens=[300], seed=603),
                    dict(B=2, S=33, Hq=8, Hkv=2, d=128, kb=8, vb=8, dtype="float16", shared=False,
                         past_lens=[95, 0], window=40, seed=604)]
    # prefill_tc_kernel: long new-token runs (causal across 64-key chunks and 128-slot tiles), a ring
    # with S > R, the simple kernel (force=1) on the same inputs, G = 2 / 8 / 128
    long_prefill += [dict(B=2, S=300, Hq=32, Hkv=8, d=128, kb=4, vb=4, dtype="float16", shared=True,
                          past_lens=[0, -37], rotary=True, seed=605),
                     dict(B=2, S=300, Hq=32, Hkv=8, d=128, kb=4, vb=4, dtype="float16", shared=True,
                          past_lens=[0, -37], rotary=True, force=1, seed=605),
                     dict(B=1, S=150, Hq=4, Hkv=2, d=64, kb=4, vb=4, dtype="bfloat16", shared=False,
                          past_lens=[260], window=90, softcap=30.0, seed=606),
                     dict(B=2, S=77, Hq=16, Hkv=2, d=80, kb=3, vb=3, dtype="float16", dense=True, shared=True,
                          past_lens=[129, 64], R=48, seed=607),
                     dict(B=1, S=3, Hq=128, Hkv=1, d=128, kb=4, vb=3, dtype="bfloat16", shared=True,
                          past_lens=[200], seed=608),
                     # few query tiles over long caches: split-K over the cached rows + prefill_merge_kernel
                     # (different lengths per batch row, window, ring, padding)
                     dict(B=1, S=4, Hq=32, Hkv=8, d=128, kb=4, vb=4, dtype="float16", shared=True,
                          past_lens=[5000], rotary=True, seed=609),
                     dict(B=3, S=2, Hq=16, Hkv=4, d=64, kb=3, vb=3, dtype="bfloat16", shared=False,
                          past_lens=[3000, 700, -1], window=1000, R=32, seed=610),
                     # QJL: the sketch columns as one more mma chain (m = d, m = 2d up to 256, m = 48; split-K;
                     # float32 partials; m = 72 is not a multiple of 16: the simple kernel)
                     dict(B=2, S=70, Hq=32, Hkv=8, d=128, kb=3, vb=4, qjl=True, dtype="float16", shared=True,
                          past_lens=[1000, 333], seed=611),
                     dict(B=2, S=40, Hq=12, Hkv=4, d=64, kb=2, vb=2, qjl=True, m=128, dtype="bfloat16",
                          shared=False, past_lens=[400, -3], window=150, softcap=30.0, rotary=True, seed=612),
                     dict(B=1, S=3, Hq=8, Hkv=2, d=128, kb=4, vb=4, qjl=True, m=256, dtype="float16", shared=True,
                          past_lens=[4000], seed=613),
                     dict(B=2, S=9, Hq=8, Hkv=2, d=96, kb=3, vb=3, qjl=True, m=48, dtype="float32", dense=True,
                          shared=True, past_lens=[300, 77], R=16, seed=614),
                     dict(B=1, S=5, Hq=8, Hkv=2, d=128, kb=3, vb=3, qjl=True, m=72, dtype="float16", shared=True,
                          past_lens=[150], seed=615)]
    yield from (long_prefill[:1] + long_prefill[5:6] + long_prefill[10:11] + long_prefill[12:13] if quick
                else long_prefill)
    if quick:
        yield dict(B=3, S=6, Hq=8, Hkv=2, d=128, kb=4, vb=4, dtype="float16", shared=False, past_lens=[0, 20, -2],
                   rotary=True, seed=7)
        yield dict(B=2, S=1, Hq=8, Hkv=2, d=128, kb=4, vb=0, dtype="float16", shared=True, past_lens=[5, 60], seed=8)
        return
    # prefill (S > 1): causal, padding (negative past = right-padded first prompt), RoPE, window, softcap
    for j, (d, kb, vb, q) in enumerate(((128, 4, 4, False), (96, 3, 3, True), (64, 2, 4, False), (256, 4, 3, False),
                                        (80, 4, 4, False), (128, 8, 8, False))):
        yield dict(B=3, S=7, Hq=12, Hkv=4, d=d, kb=kb, vb=vb, qjl=q, dtype=dts[j % 3], dense=d in (80, 96),
                   shared=bool(j % 2), past_lens=[0, 25, -3], rotary=(j % 2 == 0), window=(-1 if j != 2 else 9),
                   softcap=(0.0 if j != 3 else 20.0), seed=200 + j)
    # keys-only (value_bits = 0), decode and prefill
    for s in (1, 5):
        for dt in ("float16", "bfloat16"):
            yield dict(B=2, S=s, Hq=8, Hkv=2, d=128, kb=4, vb=0, dtype=dt, shared=(s == 1), past_lens=[3, 44],
                       seed=300 + s)
    # bits 8 and 1 decode (simple path) and QJL with m != d
    yield dict(B=2, S=1, Hq=8, Hkv=8, d=128, kb=8, vb=8, dtype="float16", past_lens=[10, 99], seed=400)
    yield dict(B=2, S=1, Hq=8, Hkv=2, d=128, kb=2, vb=1, qjl=True, m=64, dtype="float16", past_lens=[10, 99],
               seed=401)
    yield dict(B=1, S=1, Hq=4, Hkv=1, d=128, kb=3, vb=3, qjl=True, m=72, dtype="float16", past_lens=[77], seed=402)
    # scale attribute, non-shared with P > past
    yield dict(B=2, S=1, Hq=6, Hkv=2, d=64, kb=4, vb=4, dtype="float32", shared=False, P=50,
               past_lens=[12, 40], scale=0.3, seed=403)


# pytest entry points (a light subset; the full sweep runs through __main__)
@pytest.mark.parametrize("case", list(encode_cases(True)), ids=str)
def test_encode(case):
    run_encode(**case)


NONFINITE_CASES = [dict(), dict(d=64, bits=3, dtype="float16"), dict(d=128, bits=8, dtype="bfloat16")]


@pytest.mark.parametrize("case", NONFINITE_CASES, ids=str)
def test_encode_nonfinite(case):
    run_encode_nonfinite(**case)


@pytest.mark.parametrize("case", list(decode_cases(True)), ids=str)
def test_decode(case):
    run_decode(**case)


@pytest.mark.parametrize("case", list(attention_cases(True)), ids=str)
def test_attention(case):
    run_attention(**case)


@pytest.mark.parametrize("case", list(ring_cases(True)), ids=str)
def test_attention_recent_window(case):
    run_attention(**case)


@pytest.mark.parametrize("case", list(ring_step_cases(True)), ids=str)
def test_attention_recent_window_steps(case):
    run_ring_steps(**case)


def main(argv):
    quick = "--quick" in argv
    fails, n = [], 0
    t0 = time.time()
    groups = [("encode", run_encode, encode_cases(quick)), ("decode", run_decode, decode_cases(quick)),
              ("encode_nonfinite", run_encode_nonfinite, NONFINITE_CASES),
              ("attention", run_attention, attention_cases(quick)),
              ("ring", run_attention, ring_cases(quick)), ("ring_steps", run_ring_steps, ring_step_cases(quick))]
    only = [a.split("=", 1)[1] for a in argv if a.startswith("--only=")]
    if only:
        groups = [g for g in groups if g[0] in only[0].split(",")]
    for name, fn, cases in groups:
        for c in cases:
            n += 1
            try:
                r = fn(**c)
                if name in ("attention", "ring", "ring_steps"):
                    print(f"ok   {name} err={r[0]:.2e} path={r[1]} {c}", flush=True)
            except Exception as ex:  # noqa: BLE001
                fails.append((name, c, repr(ex)))
                print(f"FAIL {name} {c}\n     {ex!r}", flush=True)
    print(f"\n{n - len(fails)}/{n} passed in {time.time() - t0:.1f}s" + (" (quick)" if quick else ""))
    for name, c, ex in fails[:30]:
        print("FAIL", name, c, ex[:300])
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
