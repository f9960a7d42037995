"""Strategies for TurboQuantEncode and TurboQuantDecode cases (docs/ops.md sections 2 and 3)."""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from fuzz import gen
from fuzz.check import float_diff, half_diff, rows_diff
from fuzz.model import F16, F32, U8, Empty, FuzzCase
from tq_ort import codec


def _codec_parts(draw):
    rng = gen.rng_of(draw)
    d, dense = gen.head_dim(draw)
    bits = draw(st.sampled_from(gen.BITS))
    use_qjl = draw(st.booleans())
    m = draw(st.integers(1, 70)) if use_qjl else None
    rot = gen.rotation(d, dense, rng)
    cb = codec.codebook(d, bits)
    q = gen.qjl(m, d, rng) if use_qjl else None
    return rng, d, bits, use_qjl, m, rot, cb, q


def _lead_shape(draw) -> tuple:
    return tuple(draw(st.lists(st.integers(0, 4), max_size=3)))


def _huge_empty_shape(draw, last: int) -> tuple:
    """A zero-size tensor's shape [..., last] whose other dims pass 2^31 (or whose product would
    pass 2^63 without the zero): the ops must refuse or return an empty output, never wrap."""
    return draw(st.sampled_from(((0, 2**40), (2**31, 0), (0, 2**62), (2**31, 2**31, 0), (0, 2**31 - 1)))) + (last,)


def _common_mutation(draw, case: FuzzCase, d: int, bits: int, m: int | None, attr_bits: str | None) -> str:
    """A mutation of the codec inputs shared by both ops; returns its label."""
    what = draw(st.sampled_from(("rotation", "codebook", "qjl", "use_qjl", "bits", "unknown_attr")))
    ins = case.inputs
    if what == "rotation":
        ins["rotation"] = gen.bad_rotation(draw, d)
    elif what == "codebook":
        ins["codebook"] = gen.bad_codebook(draw, bits, ins["codebook"])
    elif what == "qjl":
        case.attrs["use_qjl"] = 1
        ins["qjl_matrix"] = gen.bad_qjl(draw, m or 8, d)
    elif what == "use_qjl":
        case.attrs["use_qjl"] = draw(st.sampled_from((2, -1) + gen.HOSTILE_INTS))
    elif what == "bits" and attr_bits:
        v = draw(st.sampled_from(("missing", "float", "int")))
        if v == "missing":
            case.attrs.pop(attr_bits, None)
        elif v == "float":
            case.attrs[attr_bits] = float(bits)
        else:
            case.attrs[attr_bits] = gen.hostile_int(draw)
    else:
        case.attrs["not_an_attribute"] = gen.hostile_int(draw)
    return what


@st.composite
def encode_cases(draw) -> FuzzCase:
    rng, d, bits, use_qjl, m, rot, cb, q = _codec_parts(draw)
    dtype = draw(st.sampled_from((np.float32, np.float16)))
    x = gen.vectors(draw, rng, _lead_shape(draw) + (d,), dtype)
    case = FuzzCase("TurboQuantEncode", "valid", {"bits": bits, "use_qjl": int(use_qjl)},
                    {"x": x, "rotation": rot, "codebook": cb, "qjl_matrix": q}, {"rows": U8}, valid=True,
                    threads=draw(st.sampled_from((1, 2))),
                    initializers=tuple(draw(st.sets(st.sampled_from(("rotation", "codebook", "qjl_matrix"))))))
    case.reference = lambda: [codec.encode(x, rot, cb, use_qjl, q)]
    case.compare = lambda got, ref: rows_diff(got[0], ref[0], d, bits, use_qjl, m, "rows")
    if draw(st.integers(0, 2)) == 2:  # one case in three is valid
        return case
    case.valid = False
    what = draw(st.sampled_from(("x_dtype", "x_last_dim", "x_scalar", "x_nonfinite", "x_huge_empty", "codec",
                                 "codec")))
    if what == "x_dtype":
        case.inputs["x"] = x.astype(draw(st.sampled_from(gen.WRONG_DTYPES)))
    elif what == "x_last_dim":
        case.inputs["x"] = np.zeros(x.shape[:-1] + (draw(st.sampled_from((0, 1, d - 1, d + 1, 2 * d))),), dtype)
    elif what == "x_scalar":
        case.inputs["x"] = np.ones((), dtype)
    elif what == "x_nonfinite":
        case.inputs["x"] = gen.inject_nonfinite(draw, rng, x)
    elif what == "x_huge_empty":
        case.inputs["x"] = Empty(_huge_empty_shape(draw, d), np.dtype(dtype))
    else:
        what = _common_mutation(draw, case, d, bits, m, "bits")
    case.label = what
    return case


def _decode_rows(draw, rng, d, bits, use_qjl, m, rot, cb, q) -> np.ndarray:
    """Valid rows: encoded vectors, or random codes with random finite scales (and rnorm)."""
    shape = _lead_shape(draw)
    if draw(st.booleans()):
        return codec.encode(gen.vectors(draw, rng, shape + (d,), np.float32), rot, cb, use_qjl, q)
    lay = codec.layout(d, bits, use_qjl, m)
    rows = rng.integers(0, 256, shape + (lay.row_bytes,), dtype=np.uint8)
    flat = rows.reshape(-1, lay.row_bytes)
    n = flat.shape[0]
    flat[:, 0:4] = (rng.standard_normal(n) * 10.0).astype(np.float32).view(np.uint8).reshape(n, 4)
    if use_qjl:
        flat[:, lay.rnorm_offset:lay.rnorm_offset + 4] = rng.random(n).astype(np.float32).view(np.uint8).reshape(n, 4)
    return rows


@st.composite
def decode_cases(draw) -> FuzzCase:
    rng, d, bits, use_qjl, m, rot, cb, q = _codec_parts(draw)
    half = draw(st.booleans())
    rows = _decode_rows(draw, rng, d, bits, use_qjl, m, rot, cb, q)
    case = FuzzCase("TurboQuantDecode", "valid", {"use_qjl": int(use_qjl), "output_dtype": 10 if half else 1},
                    {"rows": rows, "rotation": rot, "codebook": cb, "qjl_matrix": q}, {"x_hat": F16 if half else F32},
                    valid=True, threads=draw(st.sampled_from((1, 2))),
                    initializers=tuple(draw(st.sets(st.sampled_from(("rotation", "codebook"))))))
    # float16 outputs against the float32 reference: overflows within rounding may go either way
    case.reference = lambda: [codec.decode(rows, rot, cb, use_qjl, q, dtype=np.float32)]
    case.compare = lambda got, ref: (half_diff if half else float_diff)(got[0], ref[0], "x_hat")
    if draw(st.integers(0, 2)) == 2:  # one case in three is valid
        return case
    case.valid = False
    what = draw(st.sampled_from(("rows_dtype", "rows_width", "rows_scalar", "rows_huge_empty", "output_dtype",
                                 "declared", "codec", "codec")))
    rb = rows.shape[-1]
    if what == "rows_dtype":
        case.inputs["rows"] = rows.astype(draw(st.sampled_from((np.int8, np.float32, np.int32))))
    elif what == "rows_width":
        w = draw(st.sampled_from((0, 1, 3, rb - 1, rb + 1, rb - 4, rb + 4, 2 * rb)))
        case.inputs["rows"] = rng.integers(0, 256, rows.shape[:-1] + (max(w, 0),), dtype=np.uint8)
    elif what == "rows_scalar":
        case.inputs["rows"] = np.zeros((), np.uint8)
    elif what == "rows_huge_empty":
        case.inputs["rows"] = Empty(_huge_empty_shape(draw, rb), np.dtype(np.uint8))
    elif what == "output_dtype":
        case.attrs["output_dtype"] = draw(st.sampled_from((0, 11, 16, 2**32 + 1, 2**32 + 10) + gen.HOSTILE_INTS))
    elif what == "declared":
        case.outputs["x_hat"] = draw(st.sampled_from((F32, F16, U8)))
        case.attrs["output_dtype"] = draw(st.sampled_from((1, 10)))
    else:
        what = _common_mutation(draw, case, d, bits, m, None)
    case.label = what
    return case
