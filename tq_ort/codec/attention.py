"""TurboQuantAttention reference: GroupQueryAttention over compressed caches (docs/ops.md section 4)."""
from __future__ import annotations

import numpy as np

from .codebook import bits_of
from .encode import _check_finite, encode, qjl_inner, row_fields
from .rotation import forward, head_dim_of, inverse


def _shape_error(name: str, arr: np.ndarray, expected: str) -> ValueError:
    return ValueError(f"{name} shape {np.shape(arr)} dtype {np.asarray(arr).dtype}: expected {expected}")


def apply_rotary(x: np.ndarray, pos: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Non-interleaved RoPE on x [S, H, d] at positions pos [S] (halves rotated as in GQA).

    float32 in, float32 out, each product and sum rounded (no FMA): keys are encoded from this
    result, so every runtime must compute it bit-identically.
    """
    half = x.shape[-1] // 2
    x = np.asarray(x, np.float32)
    c = np.asarray(cos, np.float32)[pos][:, None, :]
    s = np.asarray(sin, np.float32)[pos][:, None, :]
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1)


def attention(query, key, value, past_key, past_value, seqlens_k, total_sequence_length,
              rotation, key_codebook, value_codebook=None, qjl=None, *, num_heads: int, kv_num_heads: int,
              scale: float = 0.0, use_qjl: bool = False, do_rotary: bool = False, cos_cache=None,
              sin_cache=None, local_window_size: int = -1, softcap: float = 0.0, recent_window: int = 0,
              past_key_recent=None, past_value_recent=None, key_hi_channels: int = 0, value_hi_channels: int = 0):
    """Returns (output [B, S, Hq*d] in query's dtype, present_key, present_value), and with
    recent_window > 0 also (..., present_key_recent, present_value_recent).

    value_codebook None means keys-only mode: past/present values are float [B, Hkv, P, d].

    recent_window = R > 0 (docs/ops.md section 4, "Recent window"): the last R cached positions are
    read exactly from the ring buffers past_key_recent / past_value_recent (T [B, Hkv, R, d], cached
    position j in slot j % R) instead of from the compressed rows; after attention the last R valid
    new tokens are written to the rings (present_*_recent, copies of the past rings otherwise).
    Keys-only mode: past_value_recent is ignored, and present_value_recent is a copy of it when it
    has the ring's shape and dtype, zeros otherwise (values are exact in the rows anyway).

    key_hi_channels / value_hi_channels > 0: split widths (docs/ops.md 1.4.1); the codebook is then
    codebook(d, bits) followed by codebook(d, bits + 1) (tq_ort.codec.split_codebook).
    """
    d = head_dim_of(rotation)
    q_in = np.asarray(query)
    dtype = q_in.dtype
    if q_in.ndim != 3 or q_in.shape[2] != num_heads * d:
        raise _shape_error("query", q_in, f"[B, S, {num_heads}*{d}]")
    B, S, _ = q_in.shape
    if num_heads % kv_num_heads:
        raise ValueError(f"num_heads={num_heads}: expected a multiple of kv_num_heads={kv_num_heads}")
    for nm, t in (("key", key), ("value", value)):
        if np.shape(t) != (B, S, kv_num_heads * d):
            raise _shape_error(nm, t, f"[{B}, {S}, {kv_num_heads * d}]")
    for nm, t in (("query", query), ("key", key), ("value", value)):
        _check_finite(nm, np.asarray(t))
    keys_only = value_codebook is None
    R = int(recent_window)
    if R < 0:
        raise ValueError(f"recent_window={R}: expected >= 0 (0 = off)")
    ring_shape = (B, kv_num_heads, R, d)
    rings = (("past_key_recent", past_key_recent),) + (() if keys_only else (("past_value_recent", past_value_recent),))
    for nm, t in rings if R else ():
        if t is None:
            raise ValueError(f"{nm}: required when recent_window={R} > 0, got none "
                             f"(expected {dtype} {list(ring_shape)})")
        if np.asarray(t).dtype != dtype:
            raise _shape_error(nm, t, f"dtype {dtype} (the query's)")
        if np.shape(t) != ring_shape:
            raise _shape_error(nm, t, f"[B, Hkv, R, d] = {list(ring_shape)} (recent_window={R})")
    present_kr = np.array(past_key_recent, dtype=dtype) if R else np.zeros(ring_shape, dtype)
    if not keys_only and R:
        present_vr = np.array(past_value_recent, dtype=dtype)
    elif past_value_recent is not None and np.shape(past_value_recent) == ring_shape \
            and np.asarray(past_value_recent).dtype == dtype:
        present_vr = np.array(past_value_recent, dtype=dtype)  # keys-only: passed through, never read
    else:
        present_vr = np.zeros(ring_shape, dtype)
    pk = np.asarray(past_key)
    pv = np.asarray(past_value)
    if pk.ndim != 4 or pk.shape[:2] != (B, kv_num_heads):
        raise _shape_error("past_key", pk, f"uint8 [{B}, {kv_num_heads}, P, row_bytes]")
    if pv.ndim != 4 or pv.shape[:3] != pk.shape[:3]:
        raise _shape_error("past_value", pv, f"[{B}, {kv_num_heads}, {pk.shape[2]}, ...]")
    P = pk.shape[2]
    T = int(np.asarray(total_sequence_length).reshape(-1)[0])
    Pp = max(P, T)
    seqlens = np.asarray(seqlens_k).reshape(-1)
    if seqlens.shape != (B,):
        raise _shape_error("seqlens_k", seqlens, f"int32 [{B}]")
    # Present = past rows then the new rows at their positions (shared buffer: the same content).
    present_k = np.zeros((B, kv_num_heads, Pp, pk.shape[3]), dtype=np.uint8)
    present_k[:, :, :P] = pk
    present_v = np.zeros((B, kv_num_heads, Pp, pv.shape[3]), dtype=pv.dtype)
    present_v[:, :, :P] = pv
    sm_scale = scale if scale else 1.0 / np.sqrt(d)
    group = num_heads // kv_num_heads
    out = np.zeros((B, S, num_heads, d), dtype=np.float64)
    kc = np.asarray(key_codebook, np.float64)
    vc = None if keys_only else np.asarray(value_codebook, np.float64)
    for b in range(B):
        L = int(seqlens[b]) + 1
        if L < 1 or L > Pp:
            raise ValueError(f"seqlens_k[{b}]={L - 1}: expected 0 <= seqlens_k < {Pp} (cache capacity)")
        past_len = L - S if L >= S else 0
        if past_len + S > Pp:
            raise ValueError(f"present_key capacity {Pp}: too small for {past_len} past + {S} new tokens (batch {b})")
        pos = past_len + np.arange(S)
        q = np.asarray(query, np.float32)[b].reshape(S, num_heads, d)
        k = np.asarray(key, np.float32)[b].reshape(S, kv_num_heads, d)
        v = np.asarray(value, np.float64)[b].reshape(S, kv_num_heads, d)
        if do_rotary:
            if cos_cache is None or sin_cache is None:
                raise ValueError("cos_cache/sin_cache: required when do_rotary=1, got none")
            if np.shape(cos_cache)[0] < Pp or np.shape(cos_cache)[1] != d // 2:
                raise _shape_error("cos_cache", cos_cache, f"[>= {Pp}, {d // 2}]")
            q = apply_rotary(q, pos, cos_cache, sin_cache)
            k = apply_rotary(k, pos, cos_cache, sin_cache)
        # Encode the new keys from the float32 values the kernels see (after RoPE).
        new_k_rows = encode(k.transpose(1, 0, 2), rotation, key_codebook, use_qjl, qjl, name="key", hi=key_hi_channels)
        k_t = k.astype(dtype)  # what the key ring stores
        q = q.astype(np.float64)
        k = k.astype(np.float64)
        # Cached positions [0, e0) come from the compressed rows, [e0, past_len) exactly from the rings.
        e0 = max(0, past_len - R) if R else past_len
        ring_slots = np.arange(e0, past_len) % R if R else np.zeros(0, np.int64)
        present_k[b, :, past_len:past_len + S] = new_k_rows
        if keys_only:
            present_v[b, :, past_len:past_len + S] = np.asarray(value)[b].reshape(S, kv_num_heads, d).transpose(1, 0, 2)
        else:
            present_v[b, :, past_len:past_len + S] = encode(
                np.asarray(value)[b].reshape(S, kv_num_heads, d).transpose(1, 0, 2), rotation, value_codebook,
                name="value", hi=value_hi_channels)
        n_valid = min(L, S) if L < S else S
        for g in range(kv_num_heads):
            # Cached past [0, e0), read from the compressed rows (rotated domain).
            _, ks, kcodes, krn, ksg = row_fields(present_k[b, g, :e0], rotation, key_codebook, use_qjl, qjl,
                                                 name="past_key", hi=key_hi_channels)
            k_rot = ks[:, None].astype(np.float64) * kc[kcodes]  # [e0, d]
            # Cached past [e0, past_len), exact: the ring (read before this step writes it).
            k_ring = np.asarray(past_key_recent)[b, g, ring_slots].astype(np.float64) if R else np.zeros((0, d))
            if keys_only:
                v_past = present_v[b, g, :past_len].astype(np.float64)  # original domain, all exact
            else:
                _, vs, vcodes, _, _ = row_fields(present_v[b, g, :e0], rotation, value_codebook,
                                                 name="past_value", hi=value_hi_channels)
                v_past_rot = vs[:, None].astype(np.float64) * vc[vcodes]
                v_ring = (np.asarray(past_value_recent)[b, g, ring_slots].astype(np.float64) if R
                          else np.zeros((0, d)))
            for h in range(g * group, (g + 1) * group):
                for i in range(n_valid):
                    p = past_len + i
                    lo = p - local_window_size + 1 if local_window_size > 0 else 0
                    qr = forward(q[i, h], rotation)
                    s_past = k_rot @ qr
                    if use_qjl and e0:
                        s_past = s_past + qjl_inner(qr[None, :], krn, ksg, qjl)
                    s_ring = k_ring @ q[i, h]
                    s_new = k[: i + 1, g] @ q[i, h]
                    s = np.concatenate([s_past, s_ring, s_new]) * sm_scale
                    if softcap:
                        s = softcap * np.tanh(s / softcap)
                    j = np.arange(p + 1)
                    s = np.where(j >= lo, s, -np.inf)
                    w = np.exp(s - s.max())
                    w /= w.sum()
                    wp, wn = w[:past_len], w[past_len:]
                    o = wn @ v[: i + 1, g]
                    if keys_only:
                        if past_len:
                            o = o + wp @ v_past
                    else:
                        if e0:
                            o = o + inverse(wp[:e0] @ v_past_rot, rotation)
                        if past_len > e0:
                            o = o + wp[e0:] @ v_ring
                    out[b, i, h] = o
        # Ring writes, after attention: new token at position p < L goes to slot p % R if p >= L - R.
        for i in range(S):
            p = past_len + i
            if R and L - R <= p < L:
                present_kr[b, :, p % R] = k_t[i]
                if not keys_only:
                    present_vr[b, :, p % R] = np.asarray(value)[b].reshape(S, kv_num_heads, d)[i]
    output = out.reshape(B, S, num_heads * d).astype(dtype)
    if R == 0:
        return output, present_k, present_v
    return output, present_k, present_v, present_kr, present_vr
