"""TurboQuantAttention with an exact recent window (recent_window = R > 0, docs/ops.md section 4).

The C++ CPU op against the numpy reference (tq_ort.codec.attention) on random inputs, in concat
and shared-buffer (IOBinding) modes; multi-step decodes that prove the semantics against plain float
attention; R = 0 unchanged; the new errors.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort
import pytest

from tq_ort import codec
from test_cpu_ops_attention import INPUTS, check_rows  # tests/ is on sys.path under pytest

RING_INPUTS = ["past_key_recent", "past_value_recent"]
OUTPUTS = ["output", "present_key", "present_value", "present_key_recent", "present_value_recent"]


@dataclass
class RCase:
    """One attention step with rings: sizes, attributes and the generated tensors."""
    R: int = 4
    B: int = 2
    S: int = 1
    Hq: int = 4
    Hkv: int = 2
    d: int = 64
    key_bits: int = 4
    value_bits: int = 4
    use_qjl: bool = False
    dtype: type = np.float32
    P: int = 24                  # past capacity (rows in past_key)
    past_lens: tuple = (20, 3)   # cached tokens per batch row before this step
    seqlens: tuple | None = None  # override (right-padded first prompts)
    total: int | None = None
    do_rotary: bool = False
    window: int = -1
    softcap: float = 0.0
    value_ring: bool | None = None  # keys-only: feed a value ring anyway (default: only if values compressed)

    def build(self, rng):
        d, B, S, Hkv, R = self.d, self.B, self.S, self.Hkv, self.R
        self.keys_only = self.value_bits == 0
        if self.value_ring is None:
            self.value_ring = not self.keys_only
        self.rot = codec.rotation(d, int(rng.integers(1 << 16)))
        self.kcb = codec.codebook(d, self.key_bits)
        self.vcb = None if self.keys_only else codec.codebook(d, self.value_bits)
        self.qjl = codec.qjl_matrix(d, d, int(rng.integers(1 << 16))) if self.use_qjl else None
        f = lambda *s: (rng.standard_normal(s) * 1.5).astype(self.dtype)  # noqa: E731
        self.q, self.k, self.v = f(B, S, self.Hq * d), f(B, S, Hkv * d), f(B, S, Hkv * d)
        hist_k = rng.standard_normal((B, Hkv, self.P, d)).astype(np.float32)
        hist_v = rng.standard_normal((B, Hkv, self.P, d)).astype(np.float32)
        self.pk = codec.encode(hist_k, self.rot, self.kcb, self.use_qjl, self.qjl)
        self.pv = hist_v.astype(self.dtype) if self.keys_only else codec.encode(hist_v, self.rot, self.vcb)
        # Rings: independent random content (never the rows' decoded values), so that reading a
        # position from the wrong source (rows vs ring, or the wrong slot) cannot go unnoticed.
        self.pkr = f(B, Hkv, R, d)
        self.pvr = f(B, Hkv, R, d) if self.value_ring else None
        if self.seqlens is None:
            self.seqlens = tuple(p + S - 1 for p in self.past_lens)
        self.sl = np.asarray(self.seqlens, np.int32)
        tot = self.total if self.total is not None else int(self.sl.max()) + 1
        self.tot = np.asarray(tot, np.int32)
        self.cos = self.sin = None
        if self.do_rotary:
            npos = max(self.P, tot) + 4
            ang = np.arange(npos)[:, None] / (10000.0 ** (np.arange(d // 2) / (d // 2)))
            self.cos, self.sin = np.cos(ang).astype(self.dtype), np.sin(ang).astype(self.dtype)
        return self

    def attributes(self):
        return dict(num_heads=self.Hq, kv_num_heads=self.Hkv, key_bits=self.key_bits, value_bits=self.value_bits,
                    use_qjl=int(self.use_qjl), do_rotary=int(self.do_rotary), local_window_size=self.window,
                    softcap=float(self.softcap), recent_window=self.R)

    def feeds(self):
        return dict(zip(INPUTS + RING_INPUTS, [self.q, self.k, self.v, self.pk, self.pv, self.sl, self.tot, self.rot,
                                               self.kcb, self.vcb, self.qjl, self.cos, self.sin, self.pkr, self.pvr]))

    def outputs(self):
        spec = {"output": (self.dtype, None), "present_key": (np.uint8, None),
                "present_value": (self.dtype if self.keys_only else np.uint8, None),
                "present_key_recent": (self.dtype, None)}
        if self.value_ring:
            spec["present_value_recent"] = (self.dtype, None)
        return spec

    def reference(self):
        return codec.attention(self.q, self.k, self.v, self.pk, self.pv, self.sl, self.tot, self.rot, self.kcb,
                               self.vcb, self.qjl, num_heads=self.Hq, kv_num_heads=self.Hkv, use_qjl=self.use_qjl,
                               do_rotary=self.do_rotary, cos_cache=self.cos, sin_cache=self.sin,
                               local_window_size=self.window, softcap=self.softcap, recent_window=self.R,
                               past_key_recent=self.pkr, past_value_recent=self.pvr)


def session(ops, c: RCase, feeds: dict):
    spec = {n: (None if a is None else (np.asarray(a).dtype, list(np.shape(a)))) for n, a in feeds.items()}
    while spec and spec[list(spec)[-1]] is None:  # trailing absent optionals are dropped
        spec.pop(list(spec)[-1])
    return ops.session(ops.model("TurboQuantAttention", spec, c.outputs(), c.attributes()))


def run_concat(ops, c: RCase):
    feeds = c.feeds()
    sess = session(ops, c, feeds)
    return sess.run(None, {n: a for n, a in feeds.items() if a is not None})


def run_shared(ops, c: RCase):
    """Rows and rings bound past == present (the session's decode path); returns the buffers after the step."""
    feeds = c.feeds()
    sess = session(ops, c, feeds)
    pairs = {"past_key": "present_key", "past_value": "present_value", "past_key_recent": "present_key_recent"}
    if c.value_ring:
        pairs["past_value_recent"] = "present_value_recent"
    bufs = {n: np.array(feeds[n]) for n in pairs}  # OrtValue wraps (does not own) these: keep them alive
    vals = {n: ort.OrtValue.ortvalue_from_numpy(bufs[n]) for n in pairs}
    io = sess.io_binding()
    for n, a in feeds.items():
        if a is not None and n not in pairs:
            io.bind_cpu_input(n, np.asarray(a))
    io.bind_output("output")  # get_outputs() follows the binding order
    for n, o in pairs.items():
        io.bind_ortvalue_input(n, vals[n])
        io.bind_ortvalue_output(o, vals[n])
    sess.run_with_iobinding(io)
    for n in pairs:
        assert vals[n].data_ptr() == bufs[n].ctypes.data  # really in place
    return [io.get_outputs()[0].numpy()] + [bufs[n] for n in pairs]


def check(c: RCase, got, ref, seed):
    out, pk, pv, pkr = got[:4]
    r_out, r_pk, r_pv, r_pkr, r_pvr = ref
    assert out.dtype == c.dtype and out.shape == r_out.shape, f"seed={seed}"
    tol = 2e-3 if c.dtype == np.float16 else 1e-4
    scale = max(1.0, float(np.abs(r_out.astype(np.float32)).max()))
    err = np.abs(out.astype(np.float32) - r_out.astype(np.float32))
    assert err.max() <= tol * scale, f"seed={seed}: output max abs err {err.max():.3g} (tol {tol * scale:.3g}) " \
                                     f"at {np.unravel_index(err.argmax(), err.shape)}"
    check_rows(pk, r_pk, c.d, c.key_bits, c.use_qjl, "present_key", seed)
    if c.keys_only:
        assert pv.dtype == c.dtype and np.array_equal(pv, r_pv), f"present_value seed={seed}"
    else:
        check_rows(pv, r_pv, c.d, c.value_bits, False, "present_value", seed)
    assert pkr.dtype == c.dtype and np.array_equal(pkr, r_pkr), f"present_key_recent seed={seed}"
    if c.value_ring:
        assert got[4].dtype == c.dtype and np.array_equal(got[4], r_pvr), f"present_value_recent seed={seed}"


def check_case(ops, c: RCase, rng, seed, mode="concat"):
    c.build(rng)
    got = run_concat(ops, c) if mode == "concat" else run_shared(ops, c)
    check(c, got, c.reference(), seed)


# ---- op vs reference -----------------------------------------------------------------------------

@pytest.mark.parametrize("R", [1, 4, 16])
@pytest.mark.parametrize("d,key_bits,value_bits", [(64, 4, 4), (128, 2, 2), (64, 8, 8), (128, 4, 2)])
def test_decode_bits_dims_windows(ops, rng, seed, d, key_bits, value_bits, R):
    """past_len 20 > R and 3 (< R for R = 4, 16)."""
    check_case(ops, RCase(R=R, d=d, key_bits=key_bits, value_bits=value_bits), rng, seed)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("Hq,Hkv", [(2, 2), (6, 2)])
@pytest.mark.parametrize("mode", ["concat", "shared"])
@pytest.mark.parametrize("S", [1, 6])
def test_dtypes_gqa_modes_chunks(ops, rng, seed, dtype, Hq, Hkv, mode, S):
    """S = 6 > R = 4: the new tokens overwrite every ring slot, after all queries read the old ring."""
    check_case(ops, RCase(R=4, S=S, Hq=Hq, Hkv=Hkv, dtype=dtype, P=32, past_lens=(17, 2), d=128), rng, seed, mode)


@pytest.mark.parametrize("R", [1, 4, 16])
@pytest.mark.parametrize("mode", ["concat", "shared"])
def test_prefill_chunk_sizes(ops, rng, seed, R, mode):
    """S = 5 against R = 1, 4 (S > R) and 16 (S < R), past_len 0, 3 and 20."""
    check_case(ops, RCase(R=R, S=5, B=3, P=26, past_lens=(20, 3, 0), Hq=6, Hkv=2), rng, seed, mode)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("R", [2, 16])
def test_first_prompt_right_padded(ops, rng, seed, dtype, R):
    """P = 0; batch row 1 holds 3 valid tokens of 7: only valid positions reach the ring."""
    check_case(ops, RCase(R=R, S=7, P=0, past_lens=(0, 0), seqlens=(6, 2), total=7, dtype=dtype), rng, seed)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("mode", ["concat", "shared"])
@pytest.mark.parametrize("value_ring", [False, True])
def test_keys_only(ops, rng, seed, dtype, mode, value_ring):
    """value_bits = 0: the key ring is used, a value ring (if fed) is ignored and passed through."""
    check_case(ops, RCase(R=4, S=3, value_bits=0, dtype=dtype, value_ring=value_ring, Hq=6, Hkv=2), rng, seed, mode)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("S", [1, 5])
def test_rotary(ops, rng, seed, dtype, S):
    """The key ring holds keys after RoPE, exactly as they were encoded."""
    check_case(ops, RCase(R=4, S=S, do_rotary=True, dtype=dtype, d=128, Hq=6, Hkv=2, P=32), rng, seed, "shared")


def test_qjl_window_softcap(ops, rng, seed):
    """QJL applies to the compressed segment only; a local window cutting into the ring segment."""
    check_case(ops, RCase(R=8, S=3, use_qjl=True, key_bits=3, window=6, softcap=4.0, past_lens=(20, 5)), rng, seed)


def test_key_ring_without_present_rings(ops, rng, seed):
    """The ring outputs are optional: without them the step only reads the rings."""
    c = RCase(R=4, S=2).build(rng)
    feeds = c.feeds()
    spec = {n: (None if a is None else (np.asarray(a).dtype, list(np.shape(a)))) for n, a in feeds.items()}
    outs = {k: v for k, v in c.outputs().items() if k in OUTPUTS[:3]}
    sess = ops.session(ops.model("TurboQuantAttention", spec, outs, c.attributes()))
    got = sess.run(None, {n: a for n, a in feeds.items() if a is not None})
    ref = c.reference()
    np.testing.assert_allclose(got[0], ref[0], atol=1e-4, rtol=0, err_msg=f"seed={seed}")


def test_shared_ring_changes_only_new_slots(ops, rng, seed):
    """Shared buffers: only the slots of the last R valid new tokens change."""
    c = RCase(R=8, S=3, past_lens=(20, 3)).build(rng)
    before_k, before_v = c.pkr.copy(), c.pvr.copy()
    _, _, _, pkr, pvr = run_shared(ops, c)
    for b, pl in enumerate(c.past_lens):
        new = np.zeros(c.R, bool)
        new[[(pl + i) % c.R for i in range(c.S)]] = True
        for got, before in ((pkr, before_k), (pvr, before_v)):
            assert np.array_equal(got[b][:, ~new], before[b][:, ~new]), f"seed={seed}"
            assert not np.array_equal(got[b][:, new], before[b][:, new]), f"seed={seed}"
        assert np.array_equal(pvr[b][:, new], c.v[b].reshape(c.S, c.Hkv, c.d).transpose(1, 0, 2)), f"seed={seed}"


# ---- R = 0 is the op as before -------------------------------------------------------------------

@pytest.mark.parametrize("value_bits", [4, 0])
def test_recent_window_zero_unchanged(ops, rng, seed, value_bits):
    """R = 0: the same bits as the op without the new inputs/outputs, and the reference without the new args."""
    c = RCase(R=0, S=3, value_bits=value_bits).build(rng)
    c.pkr = np.asarray(rng.standard_normal((c.B, c.Hkv, 4, c.d)), c.dtype)  # ignored when R = 0
    c.pvr = c.pkr.copy() if value_bits else None
    with_rings = run_concat(ops, c)
    feeds = {n: a for n, a in zip(INPUTS, [c.q, c.k, c.v, c.pk, c.pv, c.sl, c.tot, c.rot, c.kcb, c.vcb])}
    spec = {n: (None if a is None else (np.asarray(a).dtype, list(np.shape(a)))) for n, a in feeds.items()}
    while spec[list(spec)[-1]] is None:
        spec.pop(list(spec)[-1])
    attrs = {k: v for k, v in c.attributes().items() if k != "recent_window"}
    outs = {k: v for k, v in c.outputs().items() if k in OUTPUTS[:3]}
    plain = ops.session(ops.model("TurboQuantAttention", spec, outs, attrs)).run(
        None, {n: a for n, a in feeds.items() if a is not None})
    for a, b in zip(with_rings[:3], plain):
        assert np.array_equal(a, b), f"seed={seed}"
    assert with_rings[3].shape == (c.B, c.Hkv, 0, c.d)  # ring outputs of an R = 0 node are empty
    ref = codec.attention(c.q, c.k, c.v, c.pk, c.pv, c.sl, c.tot, c.rot, c.kcb, c.vcb, num_heads=c.Hq,
                          kv_num_heads=c.Hkv)
    assert len(ref) == 3
    np.testing.assert_allclose(plain[0], ref[0], atol=1e-4, rtol=0, err_msg=f"seed={seed}")
    check_rows(plain[1], ref[1], c.d, c.key_bits, False, "present_key", seed)
    if value_bits:
        check_rows(plain[2], ref[2], c.d, value_bits, False, "present_value", seed)
    else:
        assert np.array_equal(plain[2], ref[2]), f"seed={seed}"
    ref_r0 = codec.attention(c.q, c.k, c.v, c.pk, c.pv, c.sl, c.tot, c.rot, c.kcb, c.vcb, num_heads=c.Hq,
                             kv_num_heads=c.Hkv, recent_window=0, past_key_recent=c.pkr, past_value_recent=c.pvr)
    assert len(ref_r0) == 3 and all(np.array_equal(a, b) for a, b in zip(ref, ref_r0))


# ---- semantics: multi-step decodes against plain float attention ---------------------------------

def float_attention(q, K, V, L, S, Hq, Hkv, window=-1):
    """Causal softmax attention in float64: q [S, Hq, d] at positions L - S .. L - 1 (only the first L
    when L < S), K/V [L, Hkv, d]; returns [S, Hq, d] (zeros for invalid queries)."""
    d = q.shape[-1]
    past_len = L - S if L >= S else 0
    out = np.zeros(q.shape)
    for i in range(min(S, L)):
        p = past_len + i
        lo = max(0, p - window + 1) if window > 0 else 0
        for h in range(Hq):
            g = h // (Hq // Hkv)
            s = K[lo:p + 1, g] @ q[i, h] / np.sqrt(d)
            w = np.exp(s - s.max())
            out[i, h] = (w / w.sum()) @ V[lo:p + 1, g]
    return out


class Decoder:
    """Runs prefill + single-token steps through one op session in shared-buffer mode, keeping float
    K/V histories (what exact attention would see) next to the compressed rows and rings."""

    def __init__(self, ops, rng, *, R, B=2, Hq=6, Hkv=2, d=64, kb=2, vb=2, cap=16, dtype=np.float32, window=-1):
        self.rng, self.R, self.B, self.Hq, self.Hkv, self.d, self.dtype = rng, R, B, Hq, Hkv, d, dtype
        self.kb, self.vb, self.window = kb, vb, window
        self.rot = codec.rotation(d, int(rng.integers(1 << 16)))
        self.kcb, self.vcb = codec.codebook(d, kb), (codec.codebook(d, vb) if vb else None)
        self.pk = np.zeros((B, Hkv, cap, codec.row_bytes(d, kb)), np.uint8)
        self.pv = np.zeros((B, Hkv, cap, codec.row_bytes(d, vb)), np.uint8) if vb else np.zeros((B, Hkv, cap, d), dtype)
        # rings start as garbage: no slot may be read before it was written
        self.pkr = (rng.standard_normal((B, Hkv, R, d)) * 100).astype(dtype)
        self.pvr = (rng.standard_normal((B, Hkv, R, d)) * 100).astype(dtype) if vb else None
        self.K = [np.zeros((0, Hkv, d)) for _ in range(B)]
        self.V = [np.zeros((0, Hkv, d)) for _ in range(B)]
        self.L = [0] * B
        attrs = dict(num_heads=Hq, kv_num_heads=Hkv, key_bits=kb, value_bits=vb, recent_window=R,
                     local_window_size=window)
        spec = {"query": (dtype, [B, None, Hq * d]), "key": (dtype, [B, None, Hkv * d]),
                "value": (dtype, [B, None, Hkv * d]), "past_key": (np.uint8, list(self.pk.shape)),
                "past_value": (self.pv.dtype, list(self.pv.shape)), "seqlens_k": (np.int32, [B]),
                "total_sequence_length": (np.int32, []), "rotation": (np.float32, list(self.rot.shape)),
                "key_codebook": (np.float32, [2 ** kb]), "value_codebook": (np.float32, [2 ** vb]) if vb else None,
                "qjl_matrix": None, "cos_cache": None, "sin_cache": None,
                "past_key_recent": (dtype, list(self.pkr.shape)),
                "past_value_recent": (dtype, list(self.pkr.shape)) if vb else None}
        outs = {"output": (dtype, None), "present_key": (np.uint8, None), "present_value": (self.pv.dtype, None),
                "present_key_recent": (dtype, None)}
        if vb:
            outs["present_value_recent"] = (dtype, None)
        self.sess = ops.session(ops.model("TurboQuantAttention", spec, outs, attrs))
        self.bufs = {"past_key": self.pk, "past_value": self.pv, "past_key_recent": self.pkr}
        if vb:
            self.bufs["past_value_recent"] = self.pvr
        self.vals = {n: ort.OrtValue.ortvalue_from_numpy(a) for n, a in self.bufs.items()}

    def step(self, S, n_valid):
        """S new tokens per row, n_valid[b] of them valid (< S only on a first prompt); returns
        (op output [B, S, Hq, d], exact float attention over the float history)."""
        B, Hq, Hkv, d = self.B, self.Hq, self.Hkv, self.d
        f = lambda *s: self.rng.standard_normal(s).astype(self.dtype)  # noqa: E731
        q, k, v = f(B, S, Hq * d), f(B, S, Hkv * d), f(B, S, Hkv * d)
        L = [self.L[b] + n_valid[b] for b in range(B)]
        feeds = {"query": q, "key": k, "value": v, "seqlens_k": np.asarray(L, np.int32) - 1,
                 "total_sequence_length": np.asarray(max(L), np.int32), "rotation": self.rot,
                 "key_codebook": self.kcb}
        if self.vb:
            feeds["value_codebook"] = self.vcb
        io = self.sess.io_binding()
        for n, a in feeds.items():
            io.bind_cpu_input(n, a)
        io.bind_output("output")  # get_outputs() follows the binding order
        for n, o in self.vals.items():
            io.bind_ortvalue_input(n, o)
            io.bind_ortvalue_output(n.replace("past_", "present_"), o)
        self.sess.run_with_iobinding(io)
        out = io.get_outputs()[0].numpy().reshape(B, S, Hq, d)
        self.q = q.reshape(B, S, Hq, d).astype(np.float64)
        exact = np.zeros(out.shape)
        for b in range(B):
            kb_ = k[b].reshape(S, Hkv, d)[:n_valid[b]].astype(np.float64)
            vb_ = v[b].reshape(S, Hkv, d)[:n_valid[b]].astype(np.float64)
            self.K[b] = np.concatenate([self.K[b], kb_])
            self.V[b] = np.concatenate([self.V[b], vb_])
            exact[b] = float_attention(q[b].reshape(S, Hq, d).astype(np.float64), self.K[b], self.V[b], L[b], S, Hq,
                                       Hkv, self.window)
        self.L = L
        return out, exact


@pytest.mark.parametrize("dtype,kb,vb", [(np.float32, 2, 2), (np.float32, 1, 0), (np.float16, 2, 2)])
def test_window_covering_everything_is_exact_attention(ops, rng, seed, dtype, kb, vb):
    """R >= the total length: a 2-bit (or 1-bit keys-only) cache gives float attention over the exact
    history, step after step (prefill with a right-padded row, then single-token decode steps)."""
    dec = Decoder(ops, rng, R=16, kb=kb, vb=vb, dtype=dtype)
    tol = 4e-3 if dtype == np.float16 else 2e-5
    steps = [(6, (6, 3))] + [(1, (1, 1))] * 7
    for n, (S, valid) in enumerate(steps):
        out, exact = dec.step(S, valid)
        err = np.abs(out - exact).max()
        assert err < tol, f"seed={seed} step {n}: max abs err {err:.3g} vs exact float attention"


@pytest.mark.parametrize("window", [-1, 5])
def test_window_boundary_semantics(ops, rng, seed, window):
    """R < the total length: cached positions before past_len - R attend through their decoded rows,
    the last R cached ones and the new ones exactly. Expected: float attention over the history with
    the old positions replaced by their decoded rows (2-bit codes, so a boundary off by one shows);
    the ring wraps several times, chunks of 2 and 4 tokens included."""
    R = 3
    dec = Decoder(ops, rng, R=R, kb=2, vb=2, window=window, cap=24)
    steps = [(4, (4, 2))] + [(1, (1, 1))] * 5 + [(2, (2, 2))] * 2 + [(4, (4, 4))]
    for n, (S, valid) in enumerate(steps):
        past = [min(x, y) for x, y in zip(dec.L, dec.L)]
        out, _ = dec.step(S, valid)
        for b in range(dec.B):
            e0 = max(0, past[b] - R)
            K, V = dec.K[b].copy(), dec.V[b].copy()
            if e0:
                K[:e0] = codec.decode(dec.pk[b, :, :e0], dec.rot, dec.kcb).transpose(1, 0, 2)
                V[:e0] = codec.decode(dec.pv[b, :, :e0], dec.rot, dec.vcb).transpose(1, 0, 2)
            want = float_attention(dec.q[b], K, V, dec.L[b], S, dec.Hq, dec.Hkv, window)
            err = np.abs(out[b] - want).max()
            assert err < 1e-4, f"seed={seed} step {n} batch {b}: max abs err {err:.3g} (e0={e0})"


# ---- errors --------------------------------------------------------------------------------------

def raises(match):
    return pytest.raises(Exception, match=match)


def test_error_negative_recent_window(ops, rng):
    c = RCase(R=0).build(rng)
    c.attributes = lambda: dict(num_heads=c.Hq, kv_num_heads=c.Hkv, key_bits=4, value_bits=4, recent_window=-2)
    with raises(re.escape("attribute recent_window=-2: expected >= 0 (0 = off)")):
        run_concat(ops, c)
    with raises(re.escape("recent_window=-2: expected >= 0 (0 = off)")):
        codec.attention(c.q, c.k, c.v, c.pk, c.pv, c.sl, c.tot, c.rot, c.kcb, c.vcb, num_heads=c.Hq,
                        kv_num_heads=c.Hkv, recent_window=-2)


@pytest.mark.parametrize("which", ["past_key_recent", "past_value_recent"])
def test_error_ring_missing(ops, rng, which):
    c = RCase(R=4).build(rng)
    setattr(c, "pkr" if which == "past_key_recent" else "pvr", None)
    if which == "past_value_recent":
        c.value_ring = False
    with raises(re.escape(f"input '{which}' (absent): expected a float32 [2, 2, 4, 64] = "
                          "[B, kv_num_heads, recent_window, d] (recent_window=4) ring buffer")):
        run_concat(ops, c)
    with raises(re.escape(f"{which}: required when recent_window=4 > 0")):
        c.reference()


@pytest.mark.parametrize("which", ["past_key_recent", "past_value_recent"])
def test_error_ring_dtype(ops, rng, which):
    c = RCase(R=4).build(rng)
    attr = "pkr" if which == "past_key_recent" else "pvr"
    setattr(c, attr, getattr(c, attr).astype(np.float16))
    with raises(re.escape(f"input '{which}' (float16 [2, 2, 4, 64]): expected dtype float32 (the query's)")):
        run_concat(ops, c)
    with raises(re.escape(f"{which} shape (2, 2, 4, 64) dtype float16: expected dtype float32 (the query's)")):
        c.reference()


@pytest.mark.parametrize("which", ["past_key_recent", "past_value_recent"])
@pytest.mark.parametrize("shape", [(2, 2, 5, 64), (2, 1, 4, 64), (2, 2, 4, 32), (2, 2, 4)])
def test_error_ring_shape(ops, rng, shape, which):
    c = RCase(R=4).build(rng)
    setattr(c, "pkr" if which == "past_key_recent" else "pvr", rng.standard_normal(shape).astype(np.float32))
    got = "[" + ", ".join(map(str, shape)) + "]"
    with raises(re.escape(f"input '{which}' (float32 {got}): expected [2, 2, 4, 64] = "
                          "[B, kv_num_heads, recent_window, d] (recent_window=4)")):
        run_concat(ops, c)
    with raises(re.escape(f"{which} shape {shape} dtype float32: expected [B, Hkv, R, d] = [2, 2, 4, 64]")):
        c.reference()


def test_keys_only_value_ring_not_required(ops, rng, seed):
    """value_bits = 0: no value ring needed (and a malformed one is ignored: its output is zeros)."""
    c = RCase(R=4, value_bits=0, value_ring=True).build(rng)
    c.pvr = c.pvr[:, :, :3].copy()
    got = run_concat(ops, c)
    assert got[4].shape == (c.B, c.Hkv, c.R, c.d) and not got[4].any(), f"seed={seed}"
    check(c, got, c.reference(), seed)
