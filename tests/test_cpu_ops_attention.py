"""TurboQuantAttention on the ORT CPU EP against the numpy reference (tq_ort.codec.attention)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnxruntime as ort
import pytest

from tq_ort import codec

INPUTS = ["query", "key", "value", "past_key", "past_value", "seqlens_k", "total_sequence_length", "rotation",
          "key_codebook", "value_codebook", "qjl_matrix", "cos_cache", "sin_cache"]


@dataclass
class Case:
    """One attention step: sizes, attributes and the generated tensors."""
    B: int = 2
    S: int = 1
    Hq: int = 8
    Hkv: int = 2
    d: int = 64
    key_bits: int = 4
    value_bits: int = 4
    use_qjl: bool = False
    dtype: type = np.float32
    P: int = 24                  # past capacity (rows in past_key)
    past_lens: tuple = (20, 13)  # cached tokens per batch row before this step
    total: int | None = None     # total_sequence_length (default: max L)
    do_rotary: bool = False
    window: int = -1
    softcap: float = 0.0
    scale: float = 0.0
    seqlens: tuple | None = None  # override (first prompts with padding)
    m: int | None = None          # QJL sketch length (default d)
    key_hi: int = 0               # split widths (docs/ops.md 1.4.1): coordinates at key_bits + 1
    value_hi: int = 0
    attrs: dict = field(default_factory=dict)

    def build(self, rng):
        d, B, S = self.d, self.B, self.S
        self.rot = codec.rotation(d, int(rng.integers(1 << 16)))
        self.kcb = codec.split_codebook(d, self.key_bits, self.key_hi)
        self.vcb = codec.split_codebook(d, self.value_bits, self.value_hi) if self.value_bits else None
        self.qjl = codec.qjl_matrix(self.m or d, d, int(rng.integers(1 << 16))) if self.use_qjl else None
        f = lambda *s: (rng.standard_normal(s) * 1.5).astype(self.dtype)  # noqa: E731
        self.q, self.k, self.v = f(B, S, self.Hq * d), f(B, S, self.Hkv * d), f(B, S, self.Hkv * d)
        hist_k = rng.standard_normal((B, self.Hkv, self.P, d)).astype(np.float32)
        hist_v = rng.standard_normal((B, self.Hkv, self.P, d)).astype(np.float32)
        self.pk = codec.encode(hist_k, self.rot, self.kcb, self.use_qjl, self.qjl, hi=self.key_hi)
        self.pv = (codec.encode(hist_v, self.rot, self.vcb, hi=self.value_hi) if self.value_bits
                   else hist_v.astype(self.dtype))
        if self.seqlens is None:
            self.seqlens = tuple(p + S - 1 for p in self.past_lens)
        self.sl = np.asarray(self.seqlens, np.int32)
        tot = self.total if self.total is not None else int(self.sl.max()) + 1
        self.tot = np.asarray(tot, np.int32)
        if self.do_rotary:
            npos = max(self.P, tot) + 4
            ang = np.arange(npos)[:, None] / (10000.0 ** (np.arange(d // 2) / (d // 2)))
            self.cos, self.sin = np.cos(ang).astype(self.dtype), np.sin(ang).astype(self.dtype)
        else:
            self.cos = self.sin = None
        return self

    def attributes(self):
        a = dict(num_heads=self.Hq, kv_num_heads=self.Hkv, key_bits=self.key_bits, value_bits=self.value_bits,
                 use_qjl=int(self.use_qjl), do_rotary=int(self.do_rotary), local_window_size=self.window,
                 softcap=float(self.softcap), scale=float(self.scale))
        if self.key_hi:
            a["key_hi_channels"] = self.key_hi
        if self.value_hi:
            a["value_hi_channels"] = self.value_hi
        a.update(self.attrs)
        return a

    def feeds(self):
        return dict(zip(INPUTS, [self.q, self.k, self.v, self.pk, self.pv, self.sl, self.tot, self.rot, self.kcb,
                                 self.vcb, self.qjl, self.cos, self.sin]))

    def reference(self):
        return codec.attention(self.q, self.k, self.v, self.pk, self.pv, self.sl, self.tot, self.rot, self.kcb,
                               self.vcb, self.qjl, num_heads=self.Hq, kv_num_heads=self.Hkv, scale=self.scale,
                               use_qjl=self.use_qjl, do_rotary=self.do_rotary, cos_cache=self.cos,
                               sin_cache=self.sin, local_window_size=self.window, softcap=self.softcap,
                               key_hi_channels=self.key_hi, value_hi_channels=self.value_hi)


def outputs_spec(c: Case):
    return {"output": (c.dtype, None), "present_key": (np.uint8, None),
            "present_value": (np.uint8 if c.value_bits else c.dtype, None)}


def run_concat(ops, c: Case):
    feeds = {n: a for n, a in c.feeds().items()}
    # trailing absent optionals are dropped; absent ones in the middle become ""
    while feeds and feeds[list(feeds)[-1]] is None:
        feeds.pop(list(feeds)[-1])
    return ops.run("TurboQuantAttention", feeds, outputs_spec(c), c.attributes())


def run_shared(ops, c: Case, device: str = "cpu"):
    """past/present bound to the same OrtValue (the decode fast path); returns the buffers after the step.
    device "cuda": the buffers live in device memory (tests/gpu/long_cache_cuda.py)."""
    feeds = c.feeds()
    spec = {n: (None if a is None else (np.asarray(a).dtype, list(np.shape(a)))) for n, a in feeds.items()}
    sess = ops.session(ops.model("TurboQuantAttention", spec, outputs_spec(c), c.attributes()))
    if device == "cpu":
        # OrtValue wraps (does not own) the numpy memory: keep the arrays alive.
        pk_buf, pv_buf = c.pk.copy(), c.pv.copy()
        pk = ort.OrtValue.ortvalue_from_numpy(pk_buf)
        pv = ort.OrtValue.ortvalue_from_numpy(pv_buf)
    else:
        pk = ort.OrtValue.ortvalue_from_numpy(c.pk, device, 0)
        pv = ort.OrtValue.ortvalue_from_numpy(c.pv, device, 0)
    io = sess.io_binding()
    for n, a in feeds.items():
        if a is not None and n not in ("past_key", "past_value"):
            io.bind_cpu_input(n, np.asarray(a))
    io.bind_ortvalue_input("past_key", pk)
    io.bind_ortvalue_input("past_value", pv)
    io.bind_output("output", "cpu")
    io.bind_ortvalue_output("present_key", pk)
    io.bind_ortvalue_output("present_value", pv)
    sess.run_with_iobinding(io)
    if device != "cpu":
        return [io.get_outputs()[0].numpy(), pk.numpy(), pv.numpy()]
    assert pk.data_ptr() == pk_buf.ctypes.data  # really in place
    return [io.get_outputs()[0].numpy(), pk_buf, pv_buf]


def check_rows(got, ref, d, bits, use_qjl, what, seed, m=None, hi=0):
    lay = codec.layout(d, bits, use_qjl, m, hi)
    cs = slice(4, 4 + lay.code_bytes)
    assert got.shape == ref.shape, f"{what} seed={seed}: shape {got.shape} vs {ref.shape}"
    bad = np.argwhere(np.any(got[..., cs] != ref[..., cs], axis=-1))
    assert bad.size == 0, f"{what} seed={seed}: codes differ in {len(bad)} rows, first at {bad[0].tolist()}"
    np.testing.assert_allclose(got[..., :4].copy().view(np.float32), ref[..., :4].copy().view(np.float32),
                               rtol=1e-5, err_msg=f"{what} scale seed={seed}")
    if use_qjl:
        so = lay.signs_offset
        flips = np.mean(got[..., so:] != ref[..., so:])
        assert flips < 0.01, f"{what} seed={seed}: {flips:.2%} QJL sign bytes differ"


def check(c: Case, got, ref, seed):
    out, pk, pv = got
    r_out, r_pk, r_pv = ref
    assert out.dtype == c.dtype and out.shape == r_out.shape, f"seed={seed}"
    tol = 2e-3 if c.dtype == np.float16 else 1e-4
    scale = max(1.0, float(np.abs(r_out.astype(np.float32)).max()))
    err = np.abs(out.astype(np.float32) - r_out.astype(np.float32))
    assert err.max() <= tol * scale, f"seed={seed}: output max abs err {err.max():.3g} (tol {tol * scale:.3g}) " \
                                     f"at {np.unravel_index(err.argmax(), err.shape)}"
    check_rows(pk, r_pk, c.d, c.key_bits, c.use_qjl, "present_key", seed, c.m, c.key_hi)
    if c.value_bits:
        check_rows(pv, r_pv, c.d, c.value_bits, False, "present_value", seed, hi=c.value_hi)
    else:
        assert pv.dtype == c.dtype and np.array_equal(pv, r_pv), f"present_value seed={seed}"


def check_case(ops, c: Case, rng, seed, mode="concat"):
    c.build(rng)
    got = run_concat(ops, c) if mode == "concat" else run_shared(ops, c)
    check(c, got, c.reference(), seed)


# ---- decode steps (S = 1) ------------------------------------------------------------------------

@pytest.mark.parametrize("d,key_bits,value_bits", [(64, 4, 4), (80, 3, 2), (96, 2, 3), (128, 4, 3), (256, 1, 4),
                                                    (128, 8, 8), (64, 3, 1), (64, 5, 6), (128, 6, 5)])
def test_decode_dims_and_bits(ops, rng, seed, d, key_bits, value_bits):
    check_case(ops, Case(d=d, key_bits=key_bits, value_bits=value_bits), rng, seed)


@pytest.mark.parametrize("Hq,Hkv", [(2, 2), (6, 2), (8, 2), (8, 1), (16, 2)])
def test_decode_gqa_ratios(ops, rng, seed, Hq, Hkv):
    check_case(ops, Case(Hq=Hq, Hkv=Hkv, d=64, B=3, past_lens=(20, 1, 7)), rng, seed)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("mode", ["concat", "shared"])
def test_decode_dtypes_and_cache_modes(ops, rng, seed, dtype, mode):
    check_case(ops, Case(d=128, dtype=dtype, Hq=8, Hkv=2, key_bits=4, value_bits=3, P=40, past_lens=(39, 17)),
               rng, seed, mode)


@pytest.mark.parametrize("d,key_bits", [(64, 2), (96, 3), (128, 3)])
def test_decode_qjl(ops, rng, seed, d, key_bits):
    check_case(ops, Case(d=d, key_bits=key_bits, use_qjl=True), rng, seed)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_decode_keys_only(ops, rng, seed, dtype):
    check_case(ops, Case(d=64, value_bits=0, dtype=dtype), rng, seed)


def test_decode_concat_grows_cache(ops, rng, seed):
    """Concat mode with total_sequence_length > P: present has max(P, total) rows."""
    check_case(ops, Case(P=10, past_lens=(10, 4), total=11), rng, seed)


def test_decode_window_softcap_scale(ops, rng, seed):
    check_case(ops, Case(d=64, window=6, softcap=3.0, scale=0.2), rng, seed)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_decode_rotary(ops, rng, seed, dtype):
    check_case(ops, Case(d=128, do_rotary=True, dtype=dtype, use_qjl=True, key_bits=3), rng, seed)


@pytest.mark.parametrize("d,m", [(36, 20), (72, 100)])
def test_odd_head_dims_and_sketch_lengths(ops, rng, seed, d, m):
    """Dense rotations with d not a multiple of 16 (or 8), QJL with m not a multiple of 8 (kernel tails)."""
    check_case(ops, Case(d=d, S=3, key_bits=3, value_bits=2, use_qjl=True, m=m, P=20, past_lens=(15, 6)), rng, seed)


# ---- prefill / chunks (S > 1) --------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["concat", "shared"])
def test_prefill_chunk_with_past(ops, rng, seed, mode):
    check_case(ops, Case(S=5, P=32, past_lens=(20, 9), d=64, Hq=6, Hkv=2), rng, seed, mode)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_first_prompt_right_padded(ops, rng, seed, dtype):
    """P = 0 past; batch row 1 has only 3 valid tokens of 7 (its later queries output zeros)."""
    check_case(ops, Case(S=7, P=0, past_lens=(0, 0), seqlens=(6, 2), total=7, dtype=dtype, d=80, key_bits=3,
                         value_bits=2), rng, seed)


def test_prefill_everything(ops, rng, seed):
    """S > 1 with QJL, RoPE, a window, keys-only values and GQA 4, shared buffers."""
    check_case(ops, Case(S=6, P=40, past_lens=(30, 11), d=128, Hq=8, Hkv=2, key_bits=2, use_qjl=True,
                         value_bits=0, do_rotary=True, window=9), rng, seed, "shared")


def test_prefill_long_chunk_many_vectors(ops, rng, seed):
    """More query vectors per kv head than one kernel task (8) holds."""
    check_case(ops, Case(S=9, P=16, past_lens=(16, 3), d=64, Hq=4, Hkv=1, window=12), rng, seed)


def test_shared_buffer_keeps_other_rows(ops, rng, seed):
    """In shared mode only the new rows change; rows past the valid length keep their bytes."""
    c = Case(S=2, P=30, past_lens=(10, 5)).build(rng)
    before = c.pk.copy()
    _, pk, _ = run_shared(ops, c)
    for b, pl in enumerate(c.past_lens):
        keep = np.ones(c.P, bool)
        keep[pl:pl + c.S] = False
        assert np.array_equal(pk[b][:, keep], before[b][:, keep]), f"seed={seed}"
        assert not np.array_equal(pk[b][:, pl:pl + c.S], before[b][:, pl:pl + c.S]), f"seed={seed}"


def test_concurrent_runs_agree(ops, rng, seed):
    """Several Python threads running one session at once (the kernels' pool runs extra callers inline)."""
    from concurrent.futures import ThreadPoolExecutor

    c = Case(S=3, P=64, past_lens=(60, 40), d=128, Hq=8, Hkv=2).build(rng)
    feeds = {n: a for n, a in c.feeds().items() if a is not None}
    spec = {n: (np.asarray(a).dtype, list(np.shape(a))) for n, a in feeds.items()}
    sess = ops.session(ops.model("TurboQuantAttention", spec, outputs_spec(c), c.attributes()))
    first = sess.run(None, feeds)
    with ThreadPoolExecutor(4) as ex:
        results = list(ex.map(lambda _: sess.run(None, feeds), range(12)))
    for r in results:
        for a, b in zip(first, r):
            assert np.array_equal(a, b), f"seed={seed}"
