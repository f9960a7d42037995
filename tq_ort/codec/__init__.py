"""The numpy reference of the TurboQuant codec: the one definition of the math (docs/ops.md).

Imports nothing else of the project, so every other layer can rely on it.
"""
from .attention import apply_rotary, attention
from .codebook import SUPPORTED_BITS, bits_of, boundaries, codebook, codebook_f64, split_codebook, tables
from .encode import decode, decode_rotated, encode, qjl_inner, quantize, row_fields
from .rotation import forward, fwht, head_dim_of, inverse, is_pow2, qjl_matrix, rotation
from .rows import LAYOUT_VERSION, RowLayout, check_hi, layout, pack_bits, row_bytes, unpack_bits

__all__ = [
    "LAYOUT_VERSION", "RowLayout", "SUPPORTED_BITS", "apply_rotary", "attention", "bits_of", "boundaries",
    "check_hi", "codebook", "codebook_f64", "decode", "decode_rotated", "encode", "forward", "fwht", "head_dim_of",
    "inverse", "is_pow2", "layout", "pack_bits", "qjl_inner", "qjl_matrix", "quantize", "rotation", "row_bytes",
    "row_fields", "split_codebook", "tables", "unpack_bits",
]
