"""The attention reference against plain float attention where the math says they must agree."""
from __future__ import annotations

import numpy as np
import pytest

from tq_ort import codec as C


def exact_attention(q, k, v, num_heads, kv_heads, window=-1):
    """Causal float64 attention, q [S, Hq, d] at the last S of T positions, k/v [T, Hkv, d]."""
    S, T, d = q.shape[0], k.shape[0], q.shape[2]
    g = num_heads // kv_heads
    out = np.zeros(q.shape)
    for h in range(num_heads):
        for i in range(S):
            p = T - S + i
            lo = max(0, p - window + 1) if window > 0 else 0
            s = k[lo:p + 1, h // g] @ q[i, h] / np.sqrt(d)
            w = np.exp(s - s.max())
            out[i, h] = (w / w.sum()) @ v[lo:p + 1, h // g]
    return out


def setup(rng, B=2, S=5, Hq=4, Hkv=2, d=64, kb=4, vb=4, cap=16, P0=0):
    rot = C.rotation(d, 3)
    kcb = C.codebook(d, kb)
    vcb = C.codebook(d, vb) if vb else None
    q = rng.standard_normal((B, S, Hq * d)).astype(np.float32)
    k = rng.standard_normal((B, P0 + S, Hkv, d)).astype(np.float32)
    v = rng.standard_normal((B, P0 + S, Hkv, d)).astype(np.float32)
    pk = np.zeros((B, Hkv, cap, C.row_bytes(d, kb)), np.uint8)
    pk[:, :, :P0] = C.encode(k[:, :P0].transpose(0, 2, 1, 3), rot, kcb)
    if vb:
        pv = np.zeros((B, Hkv, cap, C.row_bytes(d, vb)), np.uint8)
        pv[:, :, :P0] = C.encode(v[:, :P0].transpose(0, 2, 1, 3), rot, vcb)
    else:
        pv = np.zeros((B, Hkv, cap, d), np.float32)
        pv[:, :, :P0] = v[:, :P0].transpose(0, 2, 1, 3)
    return dict(rot=rot, kcb=kcb, vcb=vcb, q=q, k=k, v=v, pk=pk, pv=pv, B=B, S=S, Hq=Hq, Hkv=Hkv, d=d, P0=P0)


def run(t, seqlens, total, **kw):
    B, S, P0 = t["B"], t["S"], t["P0"]
    return C.attention(t["q"], t["k"][:, P0:].reshape(B, S, -1), t["v"][:, P0:].reshape(B, S, -1), t["pk"], t["pv"],
                       np.asarray(seqlens, np.int32), total, t["rot"], t["kcb"], t["vcb"],
                       num_heads=t["Hq"], kv_num_heads=t["Hkv"], **kw)


def test_prefill_attends_exactly_and_writes_encoded_rows():
    rng = np.random.default_rng(11)
    t = setup(rng, S=6)
    out, pk, pv = run(t, [5, 5], 6)
    for b in range(2):
        ref = exact_attention(t["q"][b].reshape(6, 4, 64).astype(np.float64), t["k"][b], t["v"][b], 4, 2)
        assert np.allclose(out[b].reshape(6, 4, 64), ref, atol=1e-5)
    assert np.array_equal(pk[:, :, :6], C.encode(t["k"].transpose(0, 2, 1, 3), t["rot"], t["kcb"]))
    assert np.array_equal(pv[:, :, :6], C.encode(t["v"].transpose(0, 2, 1, 3), t["rot"], t["vcb"]))
    assert not pk[:, :, 6:].any()


@pytest.mark.parametrize("kb,vb,tol", [(8, 8, 0.03), (4, 4, 0.25), (8, 0, 0.03)])
def test_decode_step_tracks_float_attention(kb, vb, tol):
    rng = np.random.default_rng(kb * 10 + vb)
    t = setup(rng, S=1, kb=kb, vb=vb, P0=12, cap=16)
    out, pk, _ = run(t, [12, 12], 13)
    for b in range(2):
        ref = exact_attention(t["q"][b].reshape(1, 4, 64).astype(np.float64), t["k"][b], t["v"][b], 4, 2)
        err = np.linalg.norm(out[b].reshape(1, 4, 64) - ref) / np.linalg.norm(ref)
        assert err < tol, err
    assert np.array_equal(pk[:, :, 12], C.encode(t["k"][:, 12], t["rot"], t["kcb"]))


def test_right_padded_prompt():
    rng = np.random.default_rng(3)
    t = setup(rng, S=6)
    out, _, _ = run(t, [5, 2], 6)  # batch 1 holds 3 valid tokens
    assert not out[1, 3:].any()
    ref = exact_attention(t["q"][1, :3].reshape(3, 4, 64).astype(np.float64), t["k"][1, :3], t["v"][1, :3], 4, 2)
    assert np.allclose(out[1, :3].reshape(3, 4, 64), ref, atol=1e-5)


def test_local_window_prefill():
    rng = np.random.default_rng(4)
    t = setup(rng, S=8)
    out, _, _ = run(t, [7, 7], 8, local_window_size=3)
    ref = exact_attention(t["q"][0].reshape(8, 4, 64).astype(np.float64), t["k"][0], t["v"][0], 4, 2, window=3)
    assert np.allclose(out[0].reshape(8, 4, 64), ref, atol=1e-5)


def test_rotary_matches_pre_rotated_inputs():
    rng = np.random.default_rng(5)
    t = setup(rng, S=4)
    pos = np.arange(16)[:, None] / (10000 ** (np.arange(32) / 32))[None, :]
    cos, sin = np.cos(pos).astype(np.float32), np.sin(pos).astype(np.float32)
    out, _, _ = run(t, [3, 3], 4, do_rotary=True, cos_cache=cos, sin_cache=sin)
    q = C.apply_rotary(t["q"][0].reshape(4, 4, 64), np.arange(4), cos, sin).astype(np.float64)
    k = C.apply_rotary(t["k"][0], np.arange(4), cos, sin).astype(np.float64)
    assert np.allclose(out[0].reshape(4, 4, 64), exact_attention(q, k, t["v"][0], 4, 2), atol=1e-5)


def test_errors_name_the_tensor():
    rng = np.random.default_rng(6)
    t = setup(rng, S=5, cap=4)
    with pytest.raises(ValueError, match="present_key capacity"):
        run(t, [3, 3], 4)
    t = setup(rng, S=2)
    with pytest.raises(ValueError, match=r"seqlens_k\[0\]"):
        run(t, [40, 1], 2)
    t["q"][0, 0, 0] = np.inf
    with pytest.raises(ValueError, match="query shape"):
        run(t, [1, 1], 2)


# ---- recent window (recent_window = R > 0) -------------------------------------------------------

def _decode_with_rings(rng, R, steps, *, B=2, Hq=4, Hkv=2, d=64, kb=2, vb=2, cap=24, window=-1):
    """Prefill + steps through the reference, feeding present rows/rings back; yields per step
    (output [B, S, Hq, d], q, float K/V histories, past lengths before the step, rows)."""
    rot, kcb = C.rotation(d, 7), C.codebook(d, kb)
    vcb = C.codebook(d, vb) if vb else None
    pk = np.zeros((B, Hkv, cap, C.row_bytes(d, kb)), np.uint8)
    pv = np.zeros((B, Hkv, cap, C.row_bytes(d, vb)), np.uint8) if vb else np.zeros((B, Hkv, cap, d), np.float32)
    pkr = rng.standard_normal((B, Hkv, R, d)).astype(np.float32) * 100  # garbage until written
    pvr = rng.standard_normal((B, Hkv, R, d)).astype(np.float32) * 100 if vb else None
    K = [np.zeros((0, Hkv, d)) for _ in range(B)]
    V = [np.zeros((0, Hkv, d)) for _ in range(B)]
    L = [0] * B
    for S, valid in steps:
        q = rng.standard_normal((B, S, Hq * d)).astype(np.float32)
        k = rng.standard_normal((B, S, Hkv * d)).astype(np.float32)
        v = rng.standard_normal((B, S, Hkv * d)).astype(np.float32)
        past = list(L)
        L = [L[b] + valid[b] for b in range(B)]
        out, pk, pv, pkr, pvr_new = C.attention(q, k, v, pk, pv, np.asarray(L, np.int32) - 1, max(L), rot, kcb, vcb,
                                                num_heads=Hq, kv_num_heads=Hkv, local_window_size=window,
                                                recent_window=R, past_key_recent=pkr, past_value_recent=pvr)
        pvr = pvr_new if vb else None
        for b in range(B):
            K[b] = np.concatenate([K[b], k[b].reshape(S, Hkv, d)[:valid[b]]])
            V[b] = np.concatenate([V[b], v[b].reshape(S, Hkv, d)[:valid[b]]])
        yield out.reshape(B, S, Hq, d), q.reshape(B, S, Hq, d).astype(np.float64), K, V, past, L, pk, pv, rot, kcb, vcb


@pytest.mark.parametrize("vb", [2, 0])
def test_recent_window_covering_everything_is_exact(vb):
    """R >= the total length: a 2-bit cache gives float attention over the exact history."""
    rng = np.random.default_rng(21)
    steps = [(5, (5, 2))] + [(1, (1, 1))] * 4 + [(3, (3, 3))]
    for out, q, K, V, past, L, *_ in _decode_with_rings(rng, 16, steps, vb=vb):
        for b in range(2):
            S = q.shape[1]
            n = min(S, L[b])
            ref = exact_attention(q[b, :n], K[b][:L[b]], V[b][:L[b]], 4, 2)
            assert np.allclose(out[b, :n], ref, atol=1e-5)
            assert not out[b, n:].any()


@pytest.mark.parametrize("window", [-1, 4])
def test_recent_window_boundary(window):
    """R < the total length: positions before past_len - R are the decoded rows, the rest exact."""
    rng = np.random.default_rng(22)
    R = 3
    steps = [(4, (4, 2))] + [(1, (1, 1))] * 5 + [(2, (2, 2)), (4, (4, 4))]
    for out, q, K, V, past, L, pk, pv, rot, kcb, vcb in _decode_with_rings(rng, R, steps, window=window):
        for b in range(2):
            e0 = max(0, past[b] - R)
            Kb, Vb = K[b].copy(), V[b].copy()
            Kb[:e0] = C.decode(pk[b, :, :e0], rot, kcb).transpose(1, 0, 2)
            Vb[:e0] = C.decode(pv[b, :, :e0], rot, vcb).transpose(1, 0, 2)
            n = min(q.shape[1], L[b])
            ref = exact_attention(q[b, :n], Kb, Vb, 4, 2, window=window)
            assert np.allclose(out[b, :n], ref, atol=1e-5)


def test_recent_window_ring_writes_and_tuple_sizes():
    rng = np.random.default_rng(23)
    t = setup(rng, S=6)
    R = 4
    pkr = rng.standard_normal((2, 2, R, 64)).astype(np.float32)
    pvr = rng.standard_normal((2, 2, R, 64)).astype(np.float32)
    res = run(t, [5, 2], 6, recent_window=R, past_key_recent=pkr, past_value_recent=pvr)
    assert len(res) == 5 and len(run(t, [5, 2], 6)) == 3
    _, _, _, kr, vr = res
    k, v = t["k"], t["v"]  # [B, S, Hkv, d]
    # row 0: L = 6, positions 2..5 -> slots 2, 3, 0, 1; row 1: L = 3, positions 0..2 -> slots 0..2, slot 3 kept
    for p in range(2, 6):
        assert np.array_equal(kr[0, :, p % R], k[0, p]) and np.array_equal(vr[0, :, p % R], v[0, p])
    for p in range(3):
        assert np.array_equal(kr[1, :, p], k[1, p]) and np.array_equal(vr[1, :, p], v[1, p])
    assert np.array_equal(kr[1, :, 3], pkr[1, :, 3]) and np.array_equal(vr[1, :, 3], pvr[1, :, 3])


def test_recent_window_errors():
    rng = np.random.default_rng(24)
    t = setup(rng, S=2)
    ring = np.zeros((2, 2, 4, 64), np.float32)
    with pytest.raises(ValueError, match=r"recent_window=-1: expected >= 0"):
        run(t, [1, 1], 2, recent_window=-1)
    with pytest.raises(ValueError, match=r"past_key_recent: required when recent_window=4 > 0"):
        run(t, [1, 1], 2, recent_window=4, past_value_recent=ring)
    with pytest.raises(ValueError, match=r"past_value_recent: required when recent_window=4 > 0"):
        run(t, [1, 1], 2, recent_window=4, past_key_recent=ring)
    with pytest.raises(ValueError, match=r"past_key_recent shape \(2, 2, 4, 64\) dtype float16"):
        run(t, [1, 1], 2, recent_window=4, past_key_recent=ring.astype(np.float16), past_value_recent=ring)
    with pytest.raises(ValueError, match=r"past_value_recent shape \(2, 2, 3, 64\)"):
        run(t, [1, 1], 2, recent_window=4, past_key_recent=ring, past_value_recent=ring[:, :, :3])
