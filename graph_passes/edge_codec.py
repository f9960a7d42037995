"""The TurboQuant codec (docs/ops.md 1.1-1.5) as subgraphs of standard ai.onnx ops (--target edge).

Every function takes a GraphBuilder and onnx-ir values of rank 4 ([B, H, S, ...], the cache
layout) and returns the value(s) it emitted. The encode follows the spec's operation order, so
the codes are bit-identical to TurboQuantEncode's:

- rotation: `s * x` (one rounded Mul), then the FWHT stages h = 1, 2, ..., d/2 in order, each a
  Reshape to [.., d/2h, 2, h] + Split + one Add and one Sub + Concat (every butterfly one rounded
  float32 op); dense R: the products R[i, j] * x[j] (one Mul) summed by CumSum over j, which ORT
  evaluates as the running sum z_j = z_{j-1} + p_j in increasing j (the spec's axpy order);
- the 8-lane sum of squares: z*z reshaped to [.., d/8, 8], lanes summed by a chain of Adds in
  increasing i, then folded ((a0+a4)+(a2+a6))+((a1+a5)+(a3+a7));
- inv = Div(1, Sqrt(ss)) (both IEEE correctly rounded ops); t = z * inv;
- code = #{k : t > B[k]} by a b-step binary search over the ascending boundaries (Gather +
  Greater + Where), which is that count exactly; ss == 0 gives codes K/2 and scale +0;
- the scale (not on the exact path, docs/ops.md 1.3 step 5): ReduceSum of z*c and c*c, then
  (inv_sqrt_d * zc) / cc;
- bit packing: codes grouped lcm(b, 8)/b at a time, combined by integer Mul + ReduceSum into a
  word, split into bytes by integer Div / Mod, Cast to uint8, zero padding to 4 bytes;
- the float32 scale <-> its 4 little-endian IEEE bytes without a bitcast op: exponent by counting
  thresholds 2^(e-127), mantissa by exact power-of-two scaling (all exact float32 ops);
- decode (every cached row, every step): one Gather of the code bytes from a [256, 8/b] table of
  centroids (b in 1, 2, 4, 8), or for b = 3 24-bit words split by exact power-of-two scaling + Floor.
"""
from __future__ import annotations

import hashlib
from math import gcd

import numpy as np
import onnx_ir as ir

from tq_ort import codec
from tq_ort.codec.rotation import inv_sqrt_d

I64 = np.int64
F32 = np.float32


def _i(name: str, v) -> ir.Attr:
    return ir.AttrInt64(name, int(v))


class EdgeOps:
    """Small emit helpers over a GraphBuilder (deduplicated constants by content)."""

    def __init__(self, b):
        self.b = b

    def const(self, arr: np.ndarray, tag: str = "c") -> ir.Value:
        arr = np.ascontiguousarray(arr)
        digest = hashlib.sha1(arr.tobytes()).hexdigest()[:12]
        key = f"tqe.{tag}.{arr.dtype}.{'x'.join(map(str, arr.shape))}.{digest}"
        return self.b.initializer(key, arr)

    def ints(self, *v: int) -> ir.Value:
        return self.const(np.array(v, I64), "i")

    def scalar(self, v: int) -> ir.Value:
        return self.const(np.array(v, I64), "s")

    def f(self, v: float) -> ir.Value:
        return self.const(np.array(v, F32), "f")

    def op(self, op: str, *inputs, **attrs) -> ir.Value:
        a = {}
        for k, v in attrs.items():
            if isinstance(v, (list, tuple)):
                a[k] = ir.AttrInt64s(k, [int(x) for x in v])
            elif isinstance(v, float):
                a[k] = ir.AttrFloat32(k, v)
            elif isinstance(v, str):
                a[k] = ir.AttrString(k, v)
            else:
                a[k] = _i(k, v)
        return self.b.node(op, list(inputs), a)

    def split(self, x: ir.Value, sizes: list[int], axis: int) -> list[ir.Value]:
        outs = self.b.node("Split", [x, self.ints(*sizes)], {"axis": _i("axis", axis)}, num_outputs=len(sizes))
        return list(outs) if len(sizes) > 1 else [outs]

    def reshape(self, x: ir.Value, *shape: int) -> ir.Value:
        return self.op("Reshape", x, self.ints(*shape))

    def cast(self, x: ir.Value, to: ir.DataType) -> ir.Value:
        return self.op("Cast", x, to=to)

    def slice_last(self, x: ir.Value, start: int, end: int) -> ir.Value:
        return self.op("Slice", x, self.ints(start), self.ints(end), self.ints(-1))

    def reduce_sum(self, x: ir.Value, axis: int = -1, keepdims: int = 1) -> ir.Value:
        return self.op("ReduceSum", x, self.ints(axis), keepdims=keepdims)

    def bytes_word(self, x: ir.Value, n: int) -> ir.Value:
        """int64 [.., n] bytes -> [.., 1] little-endian word, by Slice + Mul + Add: no ReduceSum, which
        onnxruntime-web 1.30 leaves unreduced on an empty tensor (the past cache at the first step)."""
        parts = self.split(x, [1] * n, axis=-1)
        word = parts[0]
        for k, p in enumerate(parts[1:], start=1):
            word = self.op("Add", word, self.op("Mul", p, self.scalar(256 ** k)))
        return word


# -- rotation -----------------------------------------------------------------------------------
def rotate_exact(e: EdgeOps, x: ir.Value, rot: np.ndarray) -> ir.Value:
    """z = FWHT(s * x) (Hadamard, before inv_sqrt_d) or z = R x (dense), bit-exact (docs/ops.md 1.1)."""
    d = codec.head_dim_of(rot)
    if rot.ndim == 1:
        v = e.op("Mul", x, e.const(rot.astype(F32), "signs"))
        h = 1
        while h < d:
            w = e.reshape(v, 0, 0, 0, d // (2 * h), 2, h)
            a, b = e.split(w, [1, 1], axis=-2)
            v = e.reshape(e.op("Concat", e.op("Add", a, b), e.op("Sub", a, b), axis=-2), 0, 0, 0, d)
            h *= 2
        return v
    # dense: p[.., i, j] = R[i, j] * x[j]; z_i = running sum over j (CumSum), last entry
    p = e.op("Mul", e.op("Unsqueeze", x, e.ints(-2)), e.const(rot.astype(F32), "rot"))
    z = e.op("CumSum", p, e.const(np.array(-1, I64), "axis"))
    return e.op("Squeeze", e.slice_last(z, d - 1, d), e.ints(-1))


def rotation_matrix_t(rot: np.ndarray) -> np.ndarray:
    """Fwd [d, d] float32 with y = x @ Fwd the forward rotation of row vectors (x = y @ Fwd.T back)."""
    d = codec.head_dim_of(rot)
    return codec.forward(np.eye(d), rot).astype(F32)


def sum_sq_8lanes(e: EdgeOps, z: ir.Value, d: int) -> ir.Value:
    """ss [.., 1]: lanes acc[i % 8] summed in increasing i, folded in the spec's order (exact)."""
    sq = e.reshape(e.op("Mul", z, z), 0, 0, 0, d // 8, 8)
    parts = e.split(sq, [1] * (d // 8), axis=-2)
    acc = parts[0]
    for p in parts[1:]:
        acc = e.op("Add", acc, p)
    t = e.op("Add", *e.split(e.reshape(acc, 0, 0, 0, 2, 4), [1, 1], axis=-2))  # a0+a4, a1+a5, a2+a6, a3+a7
    u = e.op("Add", *e.split(e.reshape(t, 0, 0, 0, 2, 2), [1, 1], axis=-2))  # (.)+(a2+a6), (.)+(a3+a7)
    return e.reshape(e.op("Add", *e.split(e.reshape(u, 0, 0, 0, 2), [1, 1], axis=-1)), 0, 0, 0, 1)


# -- codes ----------------------------------------------------------------------------------------
def _group(bits: int) -> tuple[int, int]:
    """(codes per group, bytes per group): lcm(bits, 8) bits at a time."""
    lcm = bits * 8 // gcd(bits, 8)
    return lcm // bits, lcm // 8


def nearest_codes(e: EdgeOps, t: ir.Value, cb: np.ndarray) -> ir.Value:
    """#{k : t > B[k]} (int64) by binary search over the ascending boundaries B (exactly that count:
    the code has bit `step` set iff t > B[prefix + step - 1])."""
    bounds = codec.boundaries(cb)
    bvals = e.const(bounds, "bounds")
    code = None
    for bit in range(codec.bits_of(cb) - 1, -1, -1):
        step = 1 << bit
        if code is None:
            cand, thr, other = e.scalar(step), e.const(np.array(bounds[step - 1], F32), "b0"), e.scalar(0)
        else:
            cand = e.op("Add", code, e.scalar(step))
            thr = e.op("Gather", bvals, e.op("Sub", cand, e.scalar(1)), axis=0)
            other = code
        code = e.op("Where", e.op("Greater", t, thr), cand, other)
    return code


def pack_codes(e: EdgeOps, code: ir.Value, bits: int, d: int) -> ir.Value:
    """int64 codes [.., d] -> uint8 [.., d*bits/8], LSB-first bit stream (docs/ops.md 1.4)."""
    if bits == 8:
        return e.cast(code, ir.DataType.UINT8)
    g, nb = _group(bits)
    w = e.reshape(code, 0, 0, 0, d // g, g)
    word = e.reduce_sum(e.op("Mul", w, e.const(np.array([1 << (bits * k) for k in range(g)], I64), "w")))
    byts = e.op("Mod", e.op("Div", word, e.const(np.array([256 ** k for k in range(nb)], I64), "w")),
                e.scalar(256))
    return e.cast(e.reshape(byts, 0, 0, 0, d * bits // 8), ir.DataType.UINT8)


def byte_centroid_table(cb: np.ndarray) -> np.ndarray:
    """For b in {1, 2, 4, 8}: T[v, k] = c[code k of byte value v] ([256, 8/b] float32), so one Gather
    of the code bytes unpacks the bits and looks the centroids up at once."""
    bits = codec.bits_of(cb)
    g = 8 // bits
    v = np.arange(256)[:, None]
    codes = (v >> (bits * np.arange(g))[None, :]) & ((1 << bits) - 1)
    return np.asarray(cb, F32)[codes]


def unpack_window_weights(bits: int) -> np.ndarray:
    """For b in {3, 5, 6} (codes that straddle bytes): W [nb, g] with the g codes of a group of nb bytes
    at floor(bytes @ W) mod 2^b. Code k starts at bit s = k b; it is read from the 3-byte (24-bit,
    exact in float32) window at byte j = min(s // 8, nb - 3), scaled by 2^-(s - 8 j): powers of two."""
    g, nb = _group(bits)
    w = np.zeros((nb, g), F32)
    for k in range(g):
        s = k * bits
        j = min(s // 8, nb - 3)
        assert s - 8 * j + bits <= 24
        for t in range(3):
            w[j + t, k] = np.ldexp(1.0, 8 * t - (s - 8 * j))
    return w


def unpack_codes_window(e: EdgeOps, byts: ir.Value, d: int, bits: int) -> ir.Value:
    """b-bit code bytes [.., d b/8] -> int32 codes [.., d] for b in {3, 5, 6}: one MatMul of each
    group's bytes with unpack_window_weights (every product a byte times a power of two, every sum
    below 2^24: exact), Floor, then mod 2^b by exact power-of-two scaling."""
    g, nb = _group(bits)
    x = e.cast(e.reshape(byts, 0, 0, 0, d // g, nb), ir.DataType.FLOAT)
    t = e.op("Floor", e.op("MatMul", x, e.const(unpack_window_weights(bits), "w")))
    k = float(1 << bits)
    codes = e.op("Sub", t, e.op("Mul", e.op("Floor", e.op("Mul", t, e.f(1.0 / k))), e.f(k)))
    return e.cast(e.reshape(codes, 0, 0, 0, d), ir.DataType.INT32)


# -- the float32 scale as 4 bytes -------------------------------------------------------------------
_POW2 = np.array([0.0] + [2.0 ** (k - 127) for k in range(1, 255)] + [np.inf], F32)  # 2^(eb-127), eb 1..254


def f32_to_bytes(e: EdgeOps, s: ir.Value) -> ir.Value:
    """float32 [.., 1] (finite, no -0) -> uint8 [.., 4], the little-endian IEEE-754 bytes."""
    a = e.op("Abs", s)
    neg = e.cast(e.op("Less", s, e.f(0.0)), ir.DataType.INT64)
    ge = e.op("GreaterOrEqual", e.op("Unsqueeze", a, e.ints(-1)), e.const(_POW2[1:255], "thr"))
    eb = e.reduce_sum(e.cast(ge, ir.DataType.INT64), keepdims=0)  # biased exponent, 0 for subnormals
    pe = e.op("Gather", e.const(_POW2, "pow2"), eb, axis=0)
    m_norm = e.op("Mul", e.op("Sub", e.op("Div", a, pe), e.f(1.0)), e.f(2.0 ** 23))
    m_sub = e.op("Mul", e.op("Mul", a, e.f(2.0 ** 126)), e.f(2.0 ** 23))
    m = e.cast(e.op("Where", e.op("Greater", eb, e.scalar(0)), m_norm, m_sub), ir.DataType.INT64)
    word = e.op("Add", e.op("Add", e.op("Mul", neg, e.scalar(1 << 31)),
                            e.op("Mul", eb, e.scalar(1 << 23))), m)
    byts = e.op("Mod", e.op("Div", word, e.const(np.array([1, 1 << 8, 1 << 16, 1 << 24], I64), "w")),
                e.scalar(256))
    return e.cast(byts, ir.DataType.UINT8)


def bytes_to_f32(e: EdgeOps, byts: ir.Value) -> ir.Value:
    """uint8 [.., 4] little-endian IEEE-754 -> float32 [.., 1] (exact)."""
    word = e.bytes_word(e.cast(byts, ir.DataType.INT64), 4)
    eb = e.op("Mod", e.op("Div", word, e.scalar(1 << 23)), e.scalar(256))
    mf = e.cast(e.op("Mod", word, e.scalar(1 << 23)), ir.DataType.FLOAT)
    normal = e.op("Mul", e.op("Add", e.op("Mul", mf, e.f(2.0 ** -23)), e.f(1.0)),
                  e.op("Gather", e.const(_POW2, "pow2"), eb, axis=0))
    sub = e.op("Mul", e.op("Mul", mf, e.f(2.0 ** -126)), e.f(2.0 ** -23))
    val = e.op("Where", e.op("Greater", eb, e.scalar(0)), normal, sub)
    neg = e.op("GreaterOrEqual", word, e.scalar(1 << 31))
    return e.op("Where", neg, e.op("Neg", val), val)


# -- encode / decode one tensor of vectors ------------------------------------------------------
def encode_rows(e: EdgeOps, x: ir.Value, rot: np.ndarray, cb: np.ndarray) -> ir.Value:
    """float32 x [B, H, S, d] -> uint8 rows [B, H, S, row_bytes] (layout v1, no QJL)."""
    d = codec.head_dim_of(rot)
    bits = codec.bits_of(cb)
    K = 1 << bits
    isd = float(inv_sqrt_d(rot))
    z = rotate_exact(e, x, rot)
    ss = sum_sq_8lanes(e, z, d)
    is0 = e.op("Equal", ss, e.f(0.0))
    inv = e.op("Div", e.f(1.0), e.op("Sqrt", ss))
    code = nearest_codes(e, e.op("Mul", z, inv), cb)
    code = e.op("Where", is0, e.scalar(K // 2), code)
    c = e.op("Gather", e.const(np.asarray(cb, F32), "cb"), code, axis=0)
    zc = e.reduce_sum(e.op("Mul", z, c))
    cc = e.reduce_sum(e.op("Mul", c, c))
    scale = e.op("Div", e.op("Mul", e.f(isd), zc), cc)
    scale = e.op("Where", e.op("Or", is0, e.op("LessOrEqual", cc, e.f(0.0))), e.f(0.0), scale)
    parts = [f32_to_bytes(e, scale), pack_codes(e, code, bits, d)]
    lay = codec.layout(d, bits)
    pad = lay.code_bytes - d * bits // 8
    if pad:
        zeros = e.op("Expand", e.const(np.zeros(1, np.uint8), "z8"),
                     e.op("Concat", e.op("Shape", x, start=0, end=3), e.ints(pad), axis=0))
        parts.append(zeros)
    return e.op("Concat", *parts, axis=-1)


def decode_rotated(e: EdgeOps, rows: ir.Value, d: int, cb: np.ndarray) -> tuple[ir.Value, ir.Value]:
    """uint8 rows [B, H, P, row_bytes] -> (scale [B, H, P, 1], centroids c[code] [B, H, P, d])."""
    bits = codec.bits_of(cb)
    scale = bytes_to_f32(e, e.slice_last(rows, 0, 4))
    byts = e.slice_last(rows, 4, 4 + d * bits // 8)
    if 8 % bits:  # 3, 5, 6 bits: codes straddle bytes
        return scale, e.op("Gather", e.const(np.asarray(cb, F32), "cb"), unpack_codes_window(e, byts, d, bits),
                           axis=0)
    cent = e.op("Gather", e.const(byte_centroid_table(cb), "bytecb"), e.cast(byts, ir.DataType.INT32), axis=0)
    return scale, e.reshape(cent, 0, 0, 0, d)
