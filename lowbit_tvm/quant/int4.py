"""Int4 group quantization of weights: quantize, pack, unpack, dequantize.

Packed layout (read by the TVM kernels, do not change): ``packed`` is uint32
``[N, K // 8]``; word ``w`` of row ``n`` holds ``k = 8 * w + j`` in bits
``[4j, 4j + 4)`` (``j = 0`` in the lowest nibble). Codes are unsigned 0..15 and
dequantize as ``w_hat = (q - z) * s`` with ``z = 8`` for symmetric schemes.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np

from ..errors import QuantizationError
from .scheme import Int4Scheme, get_scheme

#: Number of int4 codes per packed uint32 word.
CODES_PER_WORD = 8
#: Largest finite float16 value.
FP16_MAX = float(np.finfo(np.float16).max)
#: Smallest normal float16 value; smaller scales are clamped up to it.
FP16_TINY = float(np.finfo(np.float16).tiny)
#: Zero point implied by symmetric schemes.
SYMMETRIC_ZERO = 8
#: Rough number of weight elements processed per chunk (bounds temporaries).
_CHUNK_ELEMENTS = 1 << 24

_NUMPY_FLOAT_DTYPES = (np.float16, np.float32, np.float64)
_TORCH_FLOAT_DTYPE_NAMES = ("float16", "float32", "float64", "bfloat16")


@dataclass(frozen=True, eq=False)
class QuantizedWeight:
    """An int4-quantized weight matrix in the packed kernel layout.

    Parameters
    ----------
    packed : numpy.ndarray
        uint32 ``[N, K // 8]``; word ``w`` of row ``n`` holds code
        ``k = 8 * w + j`` in bits ``[4j, 4j + 4)``.
    scales : numpy.ndarray
        float16 ``[N, G]`` with ``G = scheme.groups(K)``.
    zeros : numpy.ndarray or None
        float16 ``[N, G]`` holding integer zero points 0..15 for asymmetric
        schemes; None for symmetric schemes (implied zero point 8).
    scheme : Int4Scheme
        The quantization scheme.
    shape : tuple of int
        The original weight shape ``(N, K)``.

    Raises
    ------
    QuantizationError
        If the arrays do not match the shape, dtypes or scheme.
    """

    packed: np.ndarray
    scales: np.ndarray
    zeros: np.ndarray | None
    scheme: Int4Scheme
    shape: tuple

    def __post_init__(self) -> None:
        if not isinstance(self.scheme, Int4Scheme):
            raise QuantizationError(
                f"scheme must be an Int4Scheme, got {type(self.scheme).__name__}"
            )
        n, k = _check_shape_tuple(self.shape)
        groups = self.scheme.groups(k)
        _check_array("packed", self.packed, np.uint32, (n, k // CODES_PER_WORD))
        _check_array("scales", self.scales, np.float16, (n, groups))
        if self.scheme.symmetric and self.zeros is not None:
            raise QuantizationError(
                f"symmetric scheme {self.scheme.name!r} must have zeros=None"
            )
        if not self.scheme.symmetric:
            _check_array("zeros", self.zeros, np.float16, (n, groups))

    def __repr__(self) -> str:
        return (
            f"QuantizedWeight(shape={self.shape}, scheme={self.scheme.name!r}, "
            f"nbytes={self.nbytes})"
        )

    @property
    def nbytes(self) -> int:
        """int: Total bytes of packed codes, scales and zeros."""
        total = self.packed.nbytes + self.scales.nbytes
        if self.zeros is not None:
            total += self.zeros.nbytes
        return total


def quantize(weight, scheme: Int4Scheme | str) -> QuantizedWeight:
    """Quantize a ``[N, K]`` weight matrix to int4 groups along K.

    Parameters
    ----------
    weight : numpy.ndarray or torch.Tensor
        2-D ``[N, K]`` floating weight (float16/float32/float64, or torch
        bfloat16). Must be finite, non-empty, with ``K % 8 == 0`` and K
        divisible by the group size.
    scheme : Int4Scheme or str
        The scheme, or a registered scheme name.

    Returns
    -------
    QuantizedWeight
        Packed codes plus float16 scales (and zeros if asymmetric).

    Raises
    ------
    QuantizationError
        On any invalid input, or if a scale would overflow float16.

    Notes
    -----
    Symmetric: ``s = max|w| / 7``, ``q = clip(round(w / s), -8, 7) + 8``.
    Asymmetric: the group range ``[lo, hi]`` is extended to include 0 (so the
    integer zero point always exists), ``s = (hi - lo) / 15``,
    ``z = clip(round(-lo / s), 0, 15)``, ``q = clip(round(w / s) + z, 0, 15)``.
    All-zero groups use ``s = 1``. The scale is rounded toward zero to
    float16 (so the grid spans the whole group, extremes land on the end
    codes and re-quantizing ``dequantize(qw)`` reproduces the same codes),
    clamped up to the smallest normal float16, and the codes are computed
    with that stored scale.
    """
    scheme = _resolve_scheme(scheme)
    array = to_float_numpy(weight, "weight")
    n, k = _check_weight_shape(array, scheme)
    _check_finite(array, "weight")
    groups = scheme.groups(k)
    packed = np.empty((n, k // CODES_PER_WORD), dtype=np.uint32)
    scales = np.empty((n, groups), dtype=np.float16)
    zeros = None if scheme.symmetric else np.empty((n, groups), dtype=np.float16)
    for start, stop in _row_chunks(n, k):
        codes, chunk_scales, chunk_zeros = _quantize_rows(array[start:stop], scheme)
        packed[start:stop] = pack_int4(codes)
        scales[start:stop] = chunk_scales
        if zeros is not None:
            zeros[start:stop] = chunk_zeros
    return QuantizedWeight(packed, scales, zeros, scheme, (n, k))


def dequantize(qw: QuantizedWeight) -> np.ndarray:
    """Reconstruct the float32 weight from a :class:`QuantizedWeight`.

    Parameters
    ----------
    qw : QuantizedWeight
        The quantized weight.

    Returns
    -------
    numpy.ndarray
        float32 ``[N, K]`` with ``w_hat = (q - z) * s`` using exactly the
        stored float16 scales/zeros upcast to float32 (``z = 8`` if symmetric).

    Raises
    ------
    QuantizationError
        If ``qw`` is not a :class:`QuantizedWeight`.
    """
    _check_quantized_weight(qw)
    n, k = qw.shape
    out = np.empty((n, k), dtype=np.float32)
    for start, stop in _row_chunks(n, k):
        out[start:stop] = dequantize_rows(qw, start, stop)
    return out


def dequantize_rows(qw: QuantizedWeight, start: int, stop: int) -> np.ndarray:
    """Dequantize rows ``start:stop`` of a :class:`QuantizedWeight`.

    Parameters
    ----------
    qw : QuantizedWeight
        The quantized weight.
    start, stop : int
        Row range (Python slice semantics).

    Returns
    -------
    numpy.ndarray
        float32 ``[stop - start, K]``.
    """
    _check_quantized_weight(qw)
    k = qw.shape[1]
    groups = qw.scheme.groups(k)
    group_len = qw.scheme.group_len(k)
    values = unpack_int4(qw.packed[start:stop]).astype(np.float32)
    rows = values.shape[0]
    values = values.reshape(rows, groups, group_len)
    if qw.zeros is None:
        values -= np.float32(SYMMETRIC_ZERO)
    else:
        values -= qw.zeros[start:stop].astype(np.float32)[:, :, None]
    values *= qw.scales[start:stop].astype(np.float32)[:, :, None]
    return values.reshape(rows, k)


def pack_int4(q: np.ndarray) -> np.ndarray:
    """Pack uint8 codes 0..15 into uint32 words, 8 codes per word.

    Parameters
    ----------
    q : numpy.ndarray
        uint8 ``[N, K]`` codes with ``K % 8 == 0``.

    Returns
    -------
    numpy.ndarray
        uint32 ``[N, K // 8]``; word ``w`` holds code ``8 * w + j`` in bits
        ``[4j, 4j + 4)``.

    Raises
    ------
    QuantizationError
        If ``q`` is not a 2-D uint8 array, ``K % 8 != 0`` or a code exceeds 15.
    """
    if not isinstance(q, np.ndarray) or q.dtype != np.uint8:
        raise QuantizationError(
            f"pack_int4 expects a uint8 numpy array of codes 0..15, got {_describe(q)}"
        )
    if q.ndim != 2:
        raise QuantizationError(
            f"pack_int4 expects a 2-D [N, K] array, got shape {q.shape}"
        )
    n, k = q.shape
    if k % CODES_PER_WORD != 0:
        raise QuantizationError(
            f"pack_int4 needs K divisible by {CODES_PER_WORD} (8 codes per uint32 "
            f"word), got K={k}"
        )
    if q.size and int(q.max()) > 15:
        raise QuantizationError(
            f"pack_int4 codes must be in 0..15, got max code {int(q.max())}"
        )
    packed = np.zeros((n, k // CODES_PER_WORD), dtype=np.uint32)
    for j in range(CODES_PER_WORD):
        nibble = q[:, j::CODES_PER_WORD].astype(np.uint32)
        nibble <<= np.uint32(4 * j)
        packed |= nibble
    return packed


def unpack_int4(packed: np.ndarray) -> np.ndarray:
    """Unpack uint32 words into uint8 codes (inverse of :func:`pack_int4`).

    Parameters
    ----------
    packed : numpy.ndarray
        uint32 ``[N, K // 8]``.

    Returns
    -------
    numpy.ndarray
        uint8 ``[N, K]`` codes 0..15.

    Raises
    ------
    QuantizationError
        If ``packed`` is not a 2-D uint32 array.
    """
    if not isinstance(packed, np.ndarray) or packed.dtype != np.uint32:
        raise QuantizationError(
            f"unpack_int4 expects a uint32 numpy array, got {_describe(packed)}"
        )
    if packed.ndim != 2:
        raise QuantizationError(
            f"unpack_int4 expects a 2-D [N, K // 8] array, got shape {packed.shape}"
        )
    n, words = packed.shape
    codes = np.empty((n, words * CODES_PER_WORD), dtype=np.uint8)
    for j in range(CODES_PER_WORD):
        nibble = (packed >> np.uint32(4 * j)) & np.uint32(0xF)
        codes[:, j::CODES_PER_WORD] = nibble
    return codes


def to_float_numpy(x, what: str) -> np.ndarray:
    """Convert a numpy array or CPU torch tensor to a floating numpy array.

    Parameters
    ----------
    x : numpy.ndarray or torch.Tensor
        float16/float32/float64 (or torch bfloat16, upcast to float32).
    what : str
        Name used in error messages (e.g. ``"weight"``).

    Returns
    -------
    numpy.ndarray
        A float16, float32 or float64 array (no copy where possible).

    Raises
    ------
    QuantizationError
        If ``x`` is of another type or dtype.
    """
    if _is_torch_tensor(x):
        return _torch_to_numpy(x, what)
    if not isinstance(x, np.ndarray):
        raise QuantizationError(
            f"{what} must be a numpy array or torch tensor, got {type(x).__name__}"
        )
    if x.dtype not in _NUMPY_FLOAT_DTYPES:
        raise QuantizationError(
            f"{what} has dtype {x.dtype}; expected float16, float32 or float64 "
            f"(or a torch bfloat16 tensor)"
        )
    return x


def _is_torch_tensor(x) -> bool:
    """Return True if ``x`` is a torch tensor (without importing torch)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _torch_to_numpy(x, what: str) -> np.ndarray:
    """Convert a torch tensor of an allowed floating dtype to numpy."""
    dtype_name = str(x.dtype).replace("torch.", "")
    if dtype_name not in _TORCH_FLOAT_DTYPE_NAMES:
        raise QuantizationError(
            f"{what} has dtype {x.dtype}; expected torch.float16, torch.float32, "
            f"torch.float64 or torch.bfloat16"
        )
    tensor = x.detach().cpu()
    if dtype_name == "bfloat16":
        tensor = tensor.float()
    return tensor.numpy()


def _resolve_scheme(scheme) -> Int4Scheme:
    """Accept an :class:`Int4Scheme` or a registered scheme name."""
    if isinstance(scheme, str):
        return get_scheme(scheme)
    if not isinstance(scheme, Int4Scheme):
        raise QuantizationError(
            f"scheme must be an Int4Scheme or a scheme name, got {type(scheme).__name__}"
        )
    return scheme


def _check_weight_shape(array: np.ndarray, scheme: Int4Scheme) -> tuple:
    """Validate a weight's rank and dimensions; return ``(N, K)``."""
    if array.ndim != 2:
        raise QuantizationError(
            f"weight must be 2-D [N, K], got {array.ndim}-D array of shape {array.shape}"
        )
    n, k = array.shape
    if n == 0 or k == 0:
        raise QuantizationError(
            f"weight is empty (shape {array.shape}); expected N > 0 and K > 0"
        )
    if k % CODES_PER_WORD != 0:
        raise QuantizationError(
            f"weight K={k} is not divisible by {CODES_PER_WORD} (8 int4 codes per "
            f"uint32 word); pad K with zeros to a multiple of {CODES_PER_WORD}"
        )
    scheme.groups(k)
    return n, k


def _check_finite(array: np.ndarray, what: str) -> None:
    """Raise if ``array`` (2-D) holds NaN or Inf; report count and first index."""
    n, k = array.shape
    bad_count = 0
    first_bad = None
    for start, stop in _row_chunks(n, k):
        bad = ~np.isfinite(array[start:stop])
        count = int(np.count_nonzero(bad))
        if count and first_bad is None:
            row, col = np.argwhere(bad)[0]
            first_bad = (int(row) + start, int(col))
        bad_count += count
    if bad_count:
        value = array[first_bad]
        raise QuantizationError(
            f"{what} contains {bad_count} non-finite value(s) (NaN or Inf); the "
            f"first is {value} at index {first_bad}; expected all values finite"
        )


def _row_chunks(n: int, k: int, elements: int = _CHUNK_ELEMENTS):
    """Yield ``(start, stop)`` row ranges of about ``elements`` elements."""
    rows = max(1, elements // max(k, 1))
    for start in range(0, n, rows):
        yield start, min(start + rows, n)


def _quantize_rows(rows: np.ndarray, scheme: Int4Scheme) -> tuple:
    """Quantize a block of rows; return ``(codes uint8 [n, K], scales, zeros)``."""
    n, k = rows.shape
    groups = scheme.groups(k)
    with np.errstate(over="ignore"):  # out-of-range float64 -> inf -> overflow error
        values = rows.astype(np.float32)
    values = values.reshape(n, groups, scheme.group_len(k))
    if scheme.symmetric:
        scales = _symmetric_scales(values)
        zeros = None
        values /= scales.astype(np.float32)[:, :, None]
        np.rint(values, out=values)
        np.clip(values, -8.0, 7.0, out=values)
        values += np.float32(SYMMETRIC_ZERO)
    else:
        scales, zeros = _asymmetric_scales(values)
        values /= scales.astype(np.float32)[:, :, None]
        np.rint(values, out=values)
        values += zeros.astype(np.float32)[:, :, None]
        np.clip(values, 0.0, 15.0, out=values)
    codes = values.astype(np.uint8).reshape(n, k)
    return codes, scales, zeros


def _symmetric_scales(values: np.ndarray) -> np.ndarray:
    """Per-group float16 scales ``max|w| / 7`` for ``values`` ``[n, G, gs]``."""
    amax = np.abs(values).max(axis=2).astype(np.float64)
    scales = amax / 7.0
    scales[amax == 0.0] = 1.0
    return _scales_to_fp16(scales, amax)


def _asymmetric_scales(values: np.ndarray) -> tuple:
    """Per-group float16 scales and zero points for ``values`` ``[n, G, gs]``."""
    hi = np.maximum(values.max(axis=2).astype(np.float64), 0.0)
    lo = np.minimum(values.min(axis=2).astype(np.float64), 0.0)
    scales = (hi - lo) / 15.0
    scales[hi == lo] = 1.0
    amax = np.maximum(hi, -lo)
    scales16 = _scales_to_fp16(scales, amax)
    zeros = np.clip(np.rint(-lo / scales16.astype(np.float64)), 0.0, 15.0)
    return scales16, zeros.astype(np.float16)


def _scales_to_fp16(scales: np.ndarray, amax: np.ndarray) -> np.ndarray:
    """Round float64 scales toward zero to float16, clamped to ``[tiny, max]``.

    Raises
    ------
    QuantizationError
        If any scale exceeds the float16 range.
    """
    too_big = ~(scales <= FP16_MAX)
    if np.any(too_big):
        index = tuple(int(i) for i in np.argwhere(too_big)[0])
        raise QuantizationError(
            f"weights too large to quantize: group {index} (row, group) has max |w| = "
            f"{amax[index]:.6g}, so its scale {scales[index]:.6g} overflows float16 "
            f"(max {FP16_MAX}); rescale the weights"
        )
    scales16 = scales.astype(np.float16)
    rounded_up = scales16.astype(np.float64) > scales
    scales16[rounded_up] = np.nextafter(scales16[rounded_up], np.float16(0))
    return np.maximum(scales16, np.float16(FP16_TINY))


def _check_shape_tuple(shape) -> tuple:
    """Validate a ``(N, K)`` shape tuple of non-negative ints."""
    if (
        not isinstance(shape, tuple)
        or len(shape) != 2
        or not all(isinstance(d, (int, np.integer)) and d > 0 for d in shape)
    ):
        raise QuantizationError(f"shape must be a tuple (N, K) of positive ints, got {shape!r}")
    return int(shape[0]), int(shape[1])


def _check_array(what: str, array, dtype, shape: tuple) -> None:
    """Raise unless ``array`` is a numpy array of ``dtype`` and ``shape``."""
    if not isinstance(array, np.ndarray) or array.dtype != dtype or array.shape != shape:
        raise QuantizationError(
            f"{what} must be a {np.dtype(dtype).name} numpy array of shape {shape}, "
            f"got {_describe(array)}"
        )


def _check_quantized_weight(qw) -> None:
    """Raise unless ``qw`` is a :class:`QuantizedWeight`."""
    if not isinstance(qw, QuantizedWeight):
        raise QuantizationError(
            f"expected a QuantizedWeight, got {type(qw).__name__}"
        )


def _describe(x) -> str:
    """Short description of an array-like for error messages."""
    if isinstance(x, np.ndarray):
        return f"numpy array of dtype {x.dtype} and shape {x.shape}"
    return type(x).__name__
