"""Strategies for TurboQuantAttention cases (docs/ops.md section 4): valid steps (decode, prefill,
right-padded first prompts; concat and shared-buffer caches; GQA ratios, QJL, keys-only, rotary,
window, softcap, recent-window rings) and one mutation each of the invalid ones."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from hypothesis import strategies as st

from fuzz import gen
from fuzz.check import exact_diff, float_diff, rows_diff
from fuzz.model import F16, F32, NP2ONNX, U8, Empty, FuzzCase
from tq_ort import codec

OP = "TurboQuantAttention"
INPUTS = ("query", "key", "value", "past_key", "past_value", "seqlens_k", "total_sequence_length", "rotation",
          "key_codebook", "value_codebook", "qjl_matrix", "cos_cache", "sin_cache", "past_key_recent",
          "past_value_recent")


def _positions(draw, B: int, S: int, P: int, shared: bool):
    """past_len and L per batch row, and total_sequence_length, all within docs/ops.md's rules."""
    pls, Ls = [], []
    for _ in range(B):
        if draw(st.integers(0, 3)) == 0:  # a right-padded first prompt: L <= S valid tokens
            pl, L = 0, draw(st.integers(1, S))
        else:
            pl = draw(st.integers(0, P - S if shared else P))
            L = pl + S
        pls.append(pl)
        Ls.append(L)
    need = max([pl + S for pl in pls] + [1])
    lmax = max(Ls + [1])
    if shared:  # present is the past buffer: Pp = P
        return pls, Ls, draw(st.integers(lmax, P))
    lo = max(lmax, need if need > P else 1)
    return pls, Ls, draw(st.integers(lo, P + S))


def _build_valid(draw) -> tuple[FuzzCase, SimpleNamespace]:
    rng = gen.rng_of(draw)
    d, dense = gen.head_dim(draw)
    B, S = draw(st.integers(1, 3)), draw(st.integers(1, 5))
    Hkv, G = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    Hq = G * Hkv
    key_bits, value_bits = draw(st.sampled_from(gen.BITS)), draw(st.sampled_from((0,) + gen.BITS))
    keys_only = value_bits == 0
    use_qjl = draw(st.booleans())
    m = draw(st.integers(1, 40)) if use_qjl else None
    dtype = draw(st.sampled_from((np.float32, np.float16)))
    shared = draw(st.booleans())
    P = draw(st.integers(S if shared else 0, 12 if shared else 10))
    pls, Ls, total = _positions(draw, B, S, P, shared)
    Pp = max(P, total)
    do_rotary = d % 2 == 0 and draw(st.booleans())
    R = draw(st.sampled_from((0, 0, 1, 2, 3, 5)))

    rot = gen.rotation(d, dense, rng)
    kcb = codec.codebook(d, key_bits)
    vcb = None if keys_only else codec.codebook(d, value_bits)
    qjl = gen.qjl(m, d, rng) if use_qjl else None
    q = gen.vectors(draw, rng, (B, S, Hq * d), dtype)
    k = gen.vectors(draw, rng, (B, S, Hkv * d), dtype)
    v = gen.vectors(draw, rng, (B, S, Hkv * d), dtype)
    hk = rng.standard_normal((B, Hkv, P, d)).astype(np.float32)
    hv = rng.standard_normal((B, Hkv, P, d)).astype(np.float32)
    pk = codec.encode(hk, rot, kcb, use_qjl, qjl)
    pv = hv.astype(dtype) if keys_only else codec.encode(hv, rot, vcb)
    sl = np.asarray([L - 1 for L in Ls], np.int32)
    tot = np.asarray(total if draw(st.booleans()) else [total], np.int32)
    cos = sin = None
    if do_rotary:
        npos = Pp + draw(st.integers(0, 3))
        ang = np.arange(npos)[:, None] / (10000.0 ** (np.arange(d // 2) / max(1, d // 2)))
        cos, sin = np.cos(ang).astype(dtype), np.sin(ang).astype(dtype)
    kr = vr = None
    value_ring = R > 0 and (not keys_only or draw(st.booleans()))
    if R > 0:
        kr = (rng.standard_normal((B, Hkv, R, d)) * 2).astype(dtype)
        vr = (rng.standard_normal((B, Hkv, R, d)) * 2).astype(dtype) if value_ring else None
    attrs = dict(num_heads=Hq, kv_num_heads=Hkv, key_bits=key_bits, value_bits=value_bits, use_qjl=int(use_qjl),
                 do_rotary=int(do_rotary), local_window_size=draw(st.sampled_from((-1, -1, 1, 2, 3, 6, 100))),
                 softcap=draw(st.sampled_from((0.0, 0.0, 1.0, 5.0, 30.0))),
                 scale=draw(st.sampled_from((0.0, 0.0, 0.1, 0.7, 2.0))))
    if R or draw(st.booleans()):
        attrs["recent_window"] = R
    T = NP2ONNX[np.dtype(dtype)]
    outputs = {"output": T, "present_key": U8, "present_value": T if keys_only else U8}
    if R > 0 or draw(st.integers(0, 3)) == 0:
        outputs.update(present_key_recent=T, present_value_recent=T)
    inputs = dict(zip(INPUTS, (q, k, v, pk, pv, sl, tot, rot, kcb, vcb, qjl, cos, sin, kr, vr)))
    shared_map = {}
    if shared:
        shared_map = {"past_key": "present_key", "past_value": "present_value"}
        if R > 0 and "present_key_recent" in outputs and draw(st.booleans()):
            shared_map["past_key_recent"] = "present_key_recent"
            if vr is not None:
                shared_map["past_value_recent"] = "present_value_recent"
    case = FuzzCase(OP, "valid", attrs, inputs, outputs, valid=True, shared=shared_map,
                    threads=draw(st.sampled_from((1, 2))),
                    initializers=tuple(draw(st.sets(st.sampled_from(("rotation", "key_codebook", "cos_cache"))))))
    a = dict(attrs)

    def reference():
        r = codec.attention(q, k, v, pk, pv, sl, tot, rot, kcb, vcb, qjl, num_heads=Hq, kv_num_heads=Hkv,
                            scale=a["scale"], use_qjl=use_qjl, do_rotary=do_rotary, cos_cache=cos, sin_cache=sin,
                            local_window_size=a["local_window_size"], softcap=a["softcap"], recent_window=R,
                            past_key_recent=kr, past_value_recent=vr)
        return list(r[:len(outputs)]) if len(r) >= len(outputs) else list(r) + [
            np.zeros((B, Hkv, 0, d), dtype), np.zeros((B, Hkv, 0, d), dtype)]

    def compare(got, ref):
        diffs = [float_diff(got[0], ref[0], "output"),
                 rows_diff(got[1], ref[1], d, key_bits, use_qjl, m, "present_key"),
                 exact_diff(got[2], ref[2], "present_value") if keys_only else
                 rows_diff(got[2], ref[2], d, value_bits, False, None, "present_value")]
        diffs += [exact_diff(g, r, n) for g, r, n in zip(got[3:], ref[3:], ("present_key_recent",
                                                                              "present_value_recent"))]
        return next((x for x in diffs if x), None)

    case.reference, case.compare = reference, compare
    ctx = SimpleNamespace(rng=rng, d=d, B=B, S=S, Hq=Hq, Hkv=Hkv, P=P, Pp=Pp, total=total, dtype=dtype,
                          key_bits=key_bits, value_bits=value_bits, keys_only=keys_only, m=m, R=R)
    return case, ctx


# ---- mutations: each changes one thing and returns its label ---------------------------------------

def _m_seqlens(draw, c: FuzzCase, x) -> None:
    sl = np.array(c.inputs["seqlens_k"], copy=True)
    kind = draw(st.sampled_from(("value", "value", "shape")))
    if kind == "value":
        sl[draw(st.integers(0, x.B - 1))] = draw(st.sampled_from(
            (-1, -(2**31), x.Pp, x.Pp + 1, 2**31 - 1, x.P + x.S, x.total, x.total - 2)))
        c.inputs["seqlens_k"] = sl
    else:
        c.inputs["seqlens_k"] = draw(st.sampled_from((
            np.zeros(x.B + 1, np.int32), np.zeros((), np.int32), sl.reshape(x.B, 1), sl.astype(np.int64),
            np.zeros(0, np.int32))))


def _m_total(draw, c: FuzzCase, x) -> None:
    if draw(st.booleans()):
        c.inputs["total_sequence_length"] = np.asarray(draw(st.sampled_from(
            (0, -1, -(2**31), 2**31 - 1, x.P + x.S + 1, x.P + x.S + 1000, 2**20, x.total - 1))), np.int32)
    else:
        c.inputs["total_sequence_length"] = draw(st.sampled_from((
            np.full(2, x.total, np.int32), np.full((1, 1), x.total, np.int32), np.asarray(x.total, np.int64),
            np.zeros(0, np.int32), np.asarray(float(x.total), np.float32))))


def _m_cache(draw, c: FuzzCase, x) -> None:
    name = draw(st.sampled_from(("past_key", "past_value")))
    a = c.inputs[name]
    B, H, P, W = a.shape
    c.inputs[name] = draw(st.sampled_from((
        np.zeros((B, H, P, max(0, W + draw(st.sampled_from((-4, -1, 1, 4))))), a.dtype),
        np.zeros((B, H, P + 1, W), a.dtype), np.zeros((B, H + 1, P, W), a.dtype), np.zeros((B + 1, H, P, W), a.dtype),
        np.zeros((B, H, P), a.dtype), np.zeros((B, H, P, W), np.float32 if a.dtype == np.uint8 else np.uint8),
        np.zeros((B, H, 0, W), a.dtype), np.zeros((B, H, P, 0), a.dtype))))


def _m_qkv(draw, c: FuzzCase, x) -> None:
    name = draw(st.sampled_from(("query", "key", "value")))
    a = c.inputs[name]
    B, S, W = a.shape
    kind = draw(st.sampled_from(("shape", "dtype", "nonfinite", "nonfinite")))
    if kind == "shape":
        c.inputs[name] = draw(st.sampled_from((
            np.zeros((B, S, W + 1), a.dtype), np.zeros((B, S, max(0, W - 1)), a.dtype),
            np.zeros((B, S + 1, W), a.dtype), np.zeros((B + 1, S, W), a.dtype), np.zeros((B, S * W), a.dtype),
            np.zeros((B, 0, W), a.dtype), np.zeros((0, S, W), a.dtype))))
    elif kind == "dtype":
        other = np.float16 if a.dtype == np.float32 else np.float32
        c.inputs[name] = a.astype(draw(st.sampled_from((other, np.float64, np.int32))))
    else:
        c.inputs[name] = gen.inject_nonfinite(draw, x.rng, a)


def _m_empty(draw, c: FuzzCase, x) -> None:
    """B = 0 or S = 0 everywhere it appears (consistent empty tensors)."""
    if draw(st.booleans()):
        for n in ("query", "key", "value", "past_key", "past_value", "seqlens_k", "past_key_recent",
                  "past_value_recent"):
            if c.inputs[n] is not None:
                c.inputs[n] = c.inputs[n][:0]
    else:
        for n in ("query", "key", "value"):
            c.inputs[n] = c.inputs[n][:, :0]


def _m_heads(draw, c: FuzzCase, x) -> None:
    kind = draw(st.sampled_from(("hq", "hkv", "both", "ratio", "missing", "wrap", "wrap32")))
    if kind == "missing":
        c.attrs.pop(draw(st.sampled_from(("num_heads", "kv_num_heads"))))
    elif kind == "ratio":
        c.attrs["num_heads"] = x.Hq + 1
    elif kind == "wrap":
        # num_heads * d wraps to 0 in int64 arithmetic: shapes built as a wrapping kernel would expect
        h = draw(st.sampled_from((2**61, 2**62, 2**63 - 2**59)))
        c.attrs["num_heads"] = c.attrs["kv_num_heads"] = h
        wrapped = (h * x.d) % 2**64
        w = wrapped if wrapped < 2**20 else 0
        for n in ("query", "key", "value"):
            c.inputs[n] = np.zeros((x.B, x.S, w), x.dtype)
        for n in ("past_key", "past_value"):
            a = c.inputs[n]
            c.inputs[n] = Empty((x.B, h, 0, a.shape[3]), a.dtype)
    elif kind == "wrap32":
        # multiples of 2^32 are 0 as 32-bit ints (the kernel once divided num_heads by that), on an
        # empty batch so that no other check comes first
        h = draw(st.sampled_from((2**32, 2**33, 3 * 2**32)))
        c.attrs["num_heads"] = c.attrs["kv_num_heads"] = h
        for n in ("query", "key", "value"):
            c.inputs[n] = Empty((0, x.S, h * x.d), c.inputs[n].dtype)
        for n in ("past_key", "past_value", "past_key_recent", "past_value_recent"):
            a = c.inputs[n]
            if a is not None:
                c.inputs[n] = Empty((0, h, a.shape[2], a.shape[3]), a.dtype)
        c.inputs["seqlens_k"] = np.zeros(0, np.int32)
        c.shared = {}
    else:
        v = gen.hostile_int(draw)
        if kind in ("hq", "both"):
            c.attrs["num_heads"] = v
        if kind in ("hkv", "both"):
            c.attrs["kv_num_heads"] = v


def _m_bits(draw, c: FuzzCase, x) -> None:
    kind = draw(st.sampled_from(("key_bits", "value_bits", "mismatch", "no_value_codebook", "keys_only_rows")))
    if kind in ("key_bits", "value_bits"):
        c.attrs[kind] = draw(st.sampled_from(gen.HOSTILE_INTS + (3, 6)))
    elif kind == "mismatch":
        c.attrs["key_bits"] = draw(st.sampled_from([b for b in gen.BITS if b != x.key_bits]))
    elif kind == "no_value_codebook":
        c.attrs["value_bits"] = draw(st.sampled_from((-1, 4)))
        c.inputs["value_codebook"] = None
    else:  # value_bits = 0 but uint8 rows (or the reverse)
        c.attrs["value_bits"] = 0 if not x.keys_only else 4
        if x.keys_only:
            c.inputs["value_codebook"] = codec.codebook(x.d, 4)


def _m_flags(draw, c: FuzzCase, x) -> None:
    name = draw(st.sampled_from(("use_qjl", "do_rotary", "local_window_size", "recent_window")))
    c.attrs[name] = draw(st.sampled_from(gen.HOSTILE_INTS + (2,)))


def _m_floats(draw, c: FuzzCase, x) -> None:
    c.attrs[draw(st.sampled_from(("scale", "softcap")))] = draw(st.sampled_from(gen.HOSTILE_FLOATS))


def _m_codec(draw, c: FuzzCase, x) -> None:
    kind = draw(st.sampled_from(("rotation", "key_codebook", "value_codebook", "qjl", "qjl_unused")))
    if kind == "rotation":
        c.inputs["rotation"] = gen.bad_rotation(draw, x.d)
    elif kind == "key_codebook":
        c.inputs["key_codebook"] = gen.bad_codebook(draw, x.key_bits, c.inputs["key_codebook"])
    elif kind == "value_codebook":
        cb = c.inputs["value_codebook"]
        c.inputs["value_codebook"] = gen.bad_codebook(draw, x.value_bits or 4, codec.codebook(x.d, 4) if cb is None
                                                      else cb)
    elif kind == "qjl":
        c.attrs["use_qjl"] = 1
        c.inputs["qjl_matrix"] = gen.bad_qjl(draw, x.m or 8, x.d)
    else:
        c.attrs["use_qjl"] = 0
        c.inputs["qjl_matrix"] = gen.qjl(8, x.d, x.rng)


def _m_rotary(draw, c: FuzzCase, x) -> None:
    c.attrs["do_rotary"] = 1
    h = max(1, x.d // 2)
    good = np.ones((x.Pp + 2, h), x.dtype)
    cos = draw(st.sampled_from((None, np.ones((max(0, x.Pp - 1), h), x.dtype), np.ones((x.Pp + 2, h + 1), x.dtype),
                                good.astype(np.float64), np.ones(h, x.dtype), good)))
    sin = draw(st.sampled_from((None, good, np.zeros((0, h), x.dtype))))
    c.inputs["cos_cache"], c.inputs["sin_cache"] = cos, sin


def _m_rings(draw, c: FuzzCase, x) -> None:
    R = draw(st.sampled_from((1, 3, x.R + 1 if x.R else 2)))
    c.attrs["recent_window"] = R
    c.outputs.update(present_key_recent=c.outputs["output"], present_value_recent=c.outputs["output"])
    shape = (x.B, x.Hkv, R, x.d)
    other = np.float16 if x.dtype == np.float32 else np.float32
    for n in ("past_key_recent", "past_value_recent"):
        c.inputs[n] = draw(st.sampled_from((None, np.zeros(shape, x.dtype), np.zeros(shape, other),
                                            np.zeros((x.B, x.Hkv, R + 1, x.d), x.dtype),
                                            np.zeros((x.B, x.Hkv, R, x.d + 1), x.dtype),
                                            np.zeros((x.B, x.Hkv, R), x.dtype))))
    for n in ("past_key_recent", "past_value_recent"):
        c.shared.pop(n, None)


def _m_declared(draw, c: FuzzCase, x) -> None:
    name = draw(st.sampled_from(list(c.outputs)))
    c.outputs[name] = draw(st.sampled_from((F32, F16, U8)))


def _m_shared(draw, c: FuzzCase, x) -> None:
    """Shared buffers with a present larger than the buffer (total > P), or a past shared with an
    output of another size."""
    c.shared = {"past_key": "present_key", "past_value": "present_value"}
    c.inputs["total_sequence_length"] = np.asarray(x.P + draw(st.integers(1, 3)), np.int32)


def _m_sizes(draw, c: FuzzCase, x) -> None:
    """Sizes whose products pass 2^31 or 2^63 (docs/reliability.md 2): a capacity of up to 2^31-1
    tokens, alone or with head counts up to 2^31 on zero-size tensors that declare them."""
    c.inputs["total_sequence_length"] = np.asarray(draw(st.sampled_from((2**31 - 1, 2**30, 2**28))), np.int32)
    if draw(st.booleans()):
        return  # the capacity alone: far beyond what the worker may allocate for most row widths
    h = draw(st.sampled_from((2**16, 2**20, 2**30 - 1, 2**31 - 1, 2**31)))
    c.attrs["num_heads"] = c.attrs["kv_num_heads"] = h
    for n in ("query", "key", "value"):
        c.inputs[n] = Empty((x.B, 0, h * x.d), c.inputs[n].dtype)
    for n in ("past_key", "past_value", "past_key_recent", "past_value_recent"):
        a = c.inputs[n]
        if a is not None:  # zero rows (rings too: [B, h, R, d] would be a real tensor of h * R * d)
            c.inputs[n] = Empty((x.B, h, 0, a.shape[3]), a.dtype)
    c.shared = {}


MUTATIONS = {
    "seqlens": _m_seqlens, "total": _m_total, "cache": _m_cache, "qkv": _m_qkv, "empty": _m_empty,
    "heads": _m_heads, "bits": _m_bits, "flags": _m_flags, "floats": _m_floats, "codec": _m_codec,
    "rotary": _m_rotary, "rings": _m_rings, "declared": _m_declared, "shared": _m_shared, "sizes": _m_sizes,
}


@st.composite
def attention_cases(draw) -> FuzzCase:
    case, ctx = _build_valid(draw)
    if draw(st.integers(0, 2)) == 2:  # one case in three is valid
        return case
    label = draw(st.sampled_from(sorted(MUTATIONS)))
    MUTATIONS[label](draw, case, ctx)
    case.valid, case.label = False, label
    return case
