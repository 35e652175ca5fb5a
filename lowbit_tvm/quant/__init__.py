"""Int4 weight-only (W4A16) quantization: schemes, packing and references."""

from .bcq import (
    BCQScheme,
    BCQWeight,
    bcq_dequantize,
    bcq_from_uniform,
    bcq_quantize,
    pack_planes,
    unpack_planes,
)
from .int4 import QuantizedWeight, dequantize, pack_int4, quantize, unpack_int4
from .reference import reference_matmul
from .scheme import SCHEMES, Int4Scheme, get_scheme, register_scheme

__all__ = [
    "SCHEMES",
    "Int4Scheme",
    "QuantizedWeight",
    "dequantize",
    "get_scheme",
    "pack_int4",
    "quantize",
    "reference_matmul",
    "register_scheme",
    "unpack_int4",
    "BCQScheme",
    "BCQWeight",
    "bcq_dequantize",
    "bcq_from_uniform",
    "bcq_quantize",
    "pack_planes",
    "unpack_planes",
]
