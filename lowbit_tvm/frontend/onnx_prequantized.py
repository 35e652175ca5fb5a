"""Pre-quantized ONNX weights mapped onto our int4 format without re-quantizing.

Two encodings are read: onnxruntime's ``com.microsoft.MatMulNBits`` (4-bit codes packed two to a byte along K,
block-wise scales, optional packed 4-bit zero points, default zero point 8) and the standard
``DequantizeLinear`` with ``block_size`` (opset 21+) on an int4/uint4 ``[K, N]`` weight blocked along K
(``axis=0``). The 4-bit codes are kept as they are (int4 codes shifted by 8 to 0..15, the zero point with them);
scales are stored as fp16, what our kernel reads. A block size that is a multiple of one of our group sizes
(32, 64, 128) becomes groups of that size with the scale repeated, which is exact. What cannot be mapped (other
block sizes, float zero points, blocking along N) is dequantized to a float weight instead (see ``Prequantized``).
"""
from dataclasses import dataclass

import numpy as np

from ..quant import Int4Scheme, QuantizedWeight, pack_int4
from ..quant.int4 import FP16_MAX

# Our group sizes, largest first: a block of B weights becomes groups of the largest one dividing B.
_GROUPS = (128, 64, 32)


@dataclass(frozen=True)
class Prequantized:
    """A pre-quantized ``[N, K]`` weight: our int4 format when it maps, else its dequantized float values.

    Attributes
    ----------
    k : int
        Input features as the graph sees them (``weight.shape[1]`` may be larger: K padded to whole blocks).
    weight : QuantizedWeight or None
        The codes, fp16 scales (and zeros) in our format, K padded to whole blocks.
    dense : numpy.ndarray or None
        float32 ``[N, k]`` when the encoding does not map onto our format (``weight`` is then None).
    reason : str
        Why the weight is dense ("" when it maps).
    """

    k: int
    weight: QuantizedWeight | None
    dense: np.ndarray | None = None
    reason: str = ""

    @property
    def n(self) -> int:
        """Output features."""
        return (self.weight.shape if self.weight is not None else self.dense.shape)[0]

    def float_weight(self) -> np.ndarray:
        """float32 ``[N, k]``: the dequantized weight (exactly what the codes and fp16 scales encode)."""
        if self.weight is None:
            return self.dense
        from ..quant import dequantize  # pylint: disable=import-outside-toplevel

        return dequantize(self.weight)[:, : self.k]


def from_codes(codes: np.ndarray, scales: np.ndarray, zeros, block: int, k: int) -> Prequantized:
    """Our format for codes 0..15 ``[N, Kp]`` (``Kp`` = whole blocks), scales ``[N, Kp/block]`` and zero points.

    Parameters
    ----------
    codes : numpy.ndarray
        uint8 codes 0..15, ``[N, Kp]``.
    scales : numpy.ndarray
        float ``[N, Kp / block]``.
    zeros : numpy.ndarray or None
        Integer zero points 0..15 ``[N, Kp / block]``; None means 8 (symmetric).
    block : int
        Weights per block along K.
    k : int
        The graph's K (``<= Kp``).
    """
    group = next((g for g in _GROUPS if block % g == 0), None)
    scales = np.asarray(scales, dtype=np.float32)
    if group is None:
        return _dense(codes, scales, zeros, block, k, f"block size {block} is not a multiple of 32")
    if not np.all(np.isfinite(scales)) or np.abs(scales).max(initial=0) > FP16_MAX:
        return _dense(codes, scales, zeros, block, k, "scales do not fit fp16")
    repeat = block // group
    scales16 = np.repeat(scales, repeat, axis=1).astype(np.float16)
    zeros16 = None if zeros is None else np.repeat(zeros, repeat, axis=1).astype(np.float16)
    scheme = Int4Scheme(group_size=group, symmetric=zeros is None)
    packed = pack_int4(np.ascontiguousarray(codes, dtype=np.uint8))
    return Prequantized(k, QuantizedWeight(packed, scales16, zeros16, scheme, codes.shape))


def _dense(codes, scales, zeros, block, k, reason) -> Prequantized:
    zero = 8.0 if zeros is None else np.repeat(np.asarray(zeros, np.float32), block, axis=1)
    values = (codes.astype(np.float32) - zero) * np.repeat(scales, block, axis=1)
    return Prequantized(k, None, np.ascontiguousarray(values[:, :k]), reason)


def _unpack_nibbles(data: np.ndarray, count: int) -> np.ndarray:
    """Low nibble first: ``[..., bytes]`` uint8 -> ``[..., count]`` codes."""
    low, high = data & 0x0F, data >> 4
    out = np.stack([low, high], axis=-1).reshape(*data.shape[:-1], -1)
    return out[..., :count]


def from_matmul_nbits(b: np.ndarray, scales: np.ndarray, zero_points, k: int, n: int, block: int) -> Prequantized:
    """A ``com.microsoft.MatMulNBits`` (4 bits) weight.

    Parameters
    ----------
    b : numpy.ndarray
        uint8 ``[N, blocks, block / 2]``.
    scales : numpy.ndarray
        ``[N * blocks]`` or ``[N, blocks]``.
    zero_points : numpy.ndarray or None
        uint8 packed 4-bit ``[N * ceil(blocks / 2)]`` (or 2-D), or float ``[N, blocks]``; None means 8.
    k, n, block : int
        The node's ``K``, ``N`` and ``block_size`` attributes.
    """
    blocks = -(-k // block)
    codes = _unpack_nibbles(np.asarray(b, np.uint8).reshape(n, blocks, -1), block).reshape(n, blocks * block)
    scales = np.asarray(scales).reshape(n, blocks).astype(np.float32)
    if zero_points is None:
        return from_codes(codes, scales, None, block, k)
    zero_points = np.asarray(zero_points)
    if zero_points.dtype != np.uint8:
        zeros = zero_points.reshape(n, blocks).astype(np.float32)
        return _dense(codes, scales, zeros, block, k, "float zero points")
    zeros = _unpack_nibbles(zero_points.reshape(n, -1), blocks)
    return from_codes(codes, scales, zeros, block, k)


def from_dequantize_linear(x: np.ndarray, scale: np.ndarray, zero_point, axis: int, block: int) -> Prequantized | None:
    """A ``DequantizeLinear`` (``block_size``) of an int4/uint4 ``[K, N]`` weight, or None if it is not 4-bit.

    Blocked along K (``axis`` 0) it maps onto our format; blocked along N it is dequantized.
    """
    kind = str(x.dtype)
    if kind not in ("int4", "uint4") or x.ndim != 2:
        return None
    shift = 8 if kind == "int4" else 0
    k, n = x.shape
    axis = axis % 2
    codes = x.astype(np.int32) + shift
    zeros = None if zero_point is None else np.asarray(zero_point).astype(np.int32) + shift
    scale = np.asarray(scale, dtype=np.float32)
    if axis == 1:  # blocked along N: dequantize
        zero = shift if zeros is None else np.repeat(zeros, block, axis=1)[:, :n]
        dense = (codes - zero) * np.repeat(scale, block, axis=1)[:, :n]
        return Prequantized(k, None, np.ascontiguousarray(dense.T.astype(np.float32)), "blocked along N")
    blocks = scale.shape[0]
    padded = np.zeros((blocks * block, n), np.int32)
    padded[:k] = codes
    if zeros is None and shift == 0:  # uint4 without zero point: zero 0
        zeros = np.zeros_like(scale, dtype=np.int32)
    return from_codes(padded.T.astype(np.uint8), scale.T, None if zeros is None else zeros.T, block, k)
