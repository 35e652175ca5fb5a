"""Binary-coding quantization (BCQ) of weights, as used by LUT-GEMM.

A group of ``g`` consecutive K elements of output row ``n`` is approximated as
``w ~= sum_{b < q} alpha[n, grp, b] * B_b + offset[n, grp]`` with binary planes
``B_b`` in ``{-1, +1}^g`` and non-negative alphas (arXiv 2206.09557).

Packed layout: ``planes`` is uint32 ``[bits, N, K // 32]``; bit ``j`` of word
``w`` of plane ``b``, row ``n`` is 1 where ``B_b[n, 32 * w + j] = +1`` and 0
where it is -1.

Internally a group's signs are kept as a per-element *pattern index*
``p = sum_b [B_b = +1] << b``, so candidate value ``p`` of a group is
``offset + sum_b (+alpha_b if bit b of p else -alpha_b)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import QuantizationError
from .int4 import FP16_MAX, _check_array, _check_finite, _describe, _row_chunks, to_float_numpy
from .scheme import ALLOWED_GROUP_SIZES, PER_CHANNEL, GroupedScheme, _is_int

#: Bit widths (binary planes per weight) supported by BCQ.
BCQ_BITS = (2, 3, 4)
#: Number of plane bits per packed uint32 word.
BITS_PER_WORD = 32
#: Relative ridge added to the normal equations (times their trace).
RIDGE = 1e-8
#: Rough number of weight elements processed per chunk (bounds temporaries).
_CHUNK_ELEMENTS = 1 << 20


@dataclass(frozen=True)
class BCQScheme(GroupedScheme):
    """Binary-coding quantization scheme.

    Parameters
    ----------
    bits : int
        Number of binary planes per weight: 2, 3 or 4.
    group_size : int
        Consecutive K elements sharing alphas (and an offset): 32, 64 or 128,
        or -1 for per row (one group spanning all of K).
    offset : bool
        If True, fit a per-group offset; otherwise offsets are zero.

    Raises
    ------
    QuantizationError
        If a field is not an allowed value.
    """

    _JSON_KIND = "BCQ "

    bits: int = 3
    group_size: int = 128
    offset: bool = True

    def __post_init__(self) -> None:
        if not _is_int(self.bits) or self.bits not in BCQ_BITS:
            raise QuantizationError(
                f"invalid BCQ bits {self.bits!r}; allowed values are {list(BCQ_BITS)}"
            )
        if not _is_int(self.group_size) or self.group_size not in ALLOWED_GROUP_SIZES:
            raise QuantizationError(
                f"invalid BCQ group_size {self.group_size!r}; allowed values are "
                f"{list(ALLOWED_GROUP_SIZES)} (-1 means per row)"
            )
        if not isinstance(self.offset, bool):
            raise QuantizationError(
                f"invalid BCQ offset {self.offset!r}; expected True or False"
            )

    @property
    def is_per_row(self) -> bool:
        """bool: True if one group spans the whole K dimension."""
        return self.group_size == PER_CHANNEL

    @property
    def name(self) -> str:
        """str: Canonical name, e.g. ``"bcq3-g128"``, ``"bcq2-pc-nooff"``."""
        group = "pc" if self.is_per_row else f"g{self.group_size}"
        suffix = "" if self.offset else "-nooff"
        return f"bcq{self.bits}-{group}{suffix}"


@dataclass(frozen=True, eq=False)
class BCQWeight:
    """A BCQ-quantized weight matrix in the packed plane layout.

    Parameters
    ----------
    planes : numpy.ndarray
        uint32 ``[bits, N, K // 32]``; bit ``j`` of word ``w`` of plane ``b``,
        row ``n`` is 1 where ``B_b[n, 32 * w + j] = +1`` (0 means -1).
    alphas : numpy.ndarray
        float16 ``[N, G, bits]``, non-negative.
    offsets : numpy.ndarray
        float16 ``[N, G]``; all zero when ``scheme.offset`` is False.
    scheme : BCQScheme
        The quantization scheme.
    shape : tuple of int
        The original weight shape ``(N, K)``.

    Raises
    ------
    QuantizationError
        If the arrays do not match the shape, dtypes or scheme.
    """

    planes: np.ndarray
    alphas: np.ndarray
    offsets: np.ndarray
    scheme: BCQScheme
    shape: tuple

    def __post_init__(self) -> None:
        if not isinstance(self.scheme, BCQScheme):
            raise QuantizationError(
                f"scheme must be a BCQScheme, got {type(self.scheme).__name__}"
            )
        n, k = _check_shape_tuple(self.shape)
        _check_k_packable(k, "shape")
        groups, bits = self.scheme.groups(k), self.scheme.bits
        _check_array("planes", self.planes, np.uint32, (bits, n, k // BITS_PER_WORD))
        _check_array("alphas", self.alphas, np.float16, (n, groups, bits))
        _check_array("offsets", self.offsets, np.float16, (n, groups))
        if not self.scheme.offset and np.any(self.offsets != 0):
            raise QuantizationError(
                f"scheme {self.scheme.name!r} has no offset, but offsets holds "
                f"{int(np.count_nonzero(self.offsets))} non-zero value(s); expected all zero"
            )

    def __repr__(self) -> str:
        return (
            f"BCQWeight(shape={self.shape}, scheme={self.scheme.name!r}, "
            f"nbytes={self.nbytes})"
        )

    @property
    def nbytes(self) -> int:
        """int: Total bytes of planes, alphas and offsets."""
        return self.planes.nbytes + self.alphas.nbytes + self.offsets.nbytes


# ------------------------------------------------------------------ packing


def pack_planes(signs) -> np.ndarray:
    """Pack binary sign planes into uint32 words, 32 signs per word.

    Parameters
    ----------
    signs : numpy.ndarray
        ``[bits, N, K]`` with ``K % 32 == 0``: bool (True means +1) or a
        numeric array holding only -1 and +1.

    Returns
    -------
    numpy.ndarray
        uint32 ``[bits, N, K // 32]``; bit ``j`` of word ``w`` is 1 where
        ``signs[..., 32 * w + j]`` is +1.

    Raises
    ------
    QuantizationError
        If ``signs`` is not a 3-D bool/±1 array or ``K % 32 != 0``.
    """
    positive = _signs_to_bool(signs)
    bits, n, k = positive.shape
    _check_k_packable(k, "signs")
    packed_bytes = np.packbits(positive, axis=-1, bitorder="little")
    words = np.ascontiguousarray(packed_bytes).view("<u4")
    return words.astype(np.uint32, copy=False).reshape(bits, n, k // BITS_PER_WORD)


def unpack_planes(planes: np.ndarray, k: int) -> np.ndarray:
    """Unpack uint32 plane words into ±1 signs (inverse of :func:`pack_planes`).

    Parameters
    ----------
    planes : numpy.ndarray
        uint32 ``[bits, N, K // 32]``.
    k : int
        The reduction length K; must equal ``32 * planes.shape[2]``.

    Returns
    -------
    numpy.ndarray
        int8 ``[bits, N, K]`` holding -1 and +1.

    Raises
    ------
    QuantizationError
        If ``planes`` is not a 3-D uint32 array or ``k`` does not match it.
    """
    if not isinstance(planes, np.ndarray) or planes.dtype != np.uint32 or planes.ndim != 3:
        raise QuantizationError(
            f"unpack_planes expects a 3-D uint32 numpy array [bits, N, K // 32], "
            f"got {_describe(planes)}"
        )
    if not _is_int(k) or k != BITS_PER_WORD * planes.shape[2]:
        raise QuantizationError(
            f"unpack_planes got k={k!r}, but planes of shape {planes.shape} hold "
            f"K = 32 * {planes.shape[2]} = {BITS_PER_WORD * planes.shape[2]}"
        )
    as_bytes = np.ascontiguousarray(planes.astype("<u4", copy=False)).view(np.uint8)
    bits01 = np.unpackbits(as_bytes, axis=-1, bitorder="little")
    return (bits01.astype(np.int8) * 2 - 1).reshape(planes.shape[0], planes.shape[1], k)


# ------------------------------------------------------------- quantization


def bcq_quantize(weight, scheme: BCQScheme, iterations: int = 10, channel_weights=None) -> BCQWeight:
    """Quantize a ``[N, K]`` weight matrix with binary-coding quantization.

    Parameters
    ----------
    weight : numpy.ndarray or torch.Tensor
        2-D ``[N, K]`` finite floating weight (float16/float32/float64, or
        torch bfloat16) with ``K % 32 == 0`` and K divisible by the group size.
    scheme : BCQScheme
        The BCQ scheme.
    iterations : int
        Alternating refinement rounds after the greedy init (0 = greedy only).
    channel_weights : array-like of shape [K], optional
        Importance of each input channel, e.g. the mean square of its activations on calibration
        data (activation-aware BCQ): the fit then minimises ``sum_k c_k (w_k - w_hat_k)^2``, the
        diagonal approximation of the layer's output error, instead of the plain weight error.

    Returns
    -------
    BCQWeight
        Packed planes, float16 alphas (non-negative) and offsets.

    Raises
    ------
    QuantizationError
        On any invalid input, or if the weights overflow float16.

    Notes
    -----
    Per group: the offset starts at the group mean (if enabled); greedy init
    sets ``B_b = sign(r)`` (``sign(0) = +1``), ``alpha_b = mean|r|``,
    ``r -= alpha_b B_b``. Each refinement round (a) solves alphas (and the
    offset) by ridge-stabilised least squares with the planes fixed, then
    (b) assigns every element the nearest of the ``2^bits`` candidate values.
    All errors are measured with the float16-rounded alphas/offsets, and the
    lowest-error solution seen per group is kept, so refinement is never
    worse than greedy. Finally negative alphas are made positive by flipping
    their planes.
    """
    if not isinstance(scheme, BCQScheme):
        raise QuantizationError(
            f"scheme must be a BCQScheme, got {type(scheme).__name__}"
        )
    if not _is_int(iterations) or iterations < 0:
        raise QuantizationError(
            f"iterations must be a non-negative integer, got {iterations!r}"
        )
    array = to_float_numpy(weight, "weight")
    n, k = _check_weight_shape(array, scheme)
    _check_finite(array, "weight")
    groups, bits = scheme.groups(k), scheme.bits
    importance = _channel_importance(channel_weights, k).reshape(groups, scheme.group_len(k))
    signs = np.empty((bits, n, k), dtype=bool)
    alphas = np.empty((n, groups, bits), dtype=np.float16)
    offsets = np.empty((n, groups), dtype=np.float16)
    for start, stop in _row_chunks(n, k, _CHUNK_ELEMENTS):
        idx, alphas[start:stop], offsets[start:stop] = _quantize_rows(
            array[start:stop], scheme, iterations, importance
        )
        for b in range(bits):
            signs[b, start:stop] = ((idx >> b) & 1).reshape(stop - start, k).astype(bool)
    return BCQWeight(pack_planes(signs), alphas, offsets, scheme, (n, k))


def bcq_dequantize(bw: BCQWeight) -> np.ndarray:
    """Reconstruct the float32 weight from a :class:`BCQWeight`.

    Parameters
    ----------
    bw : BCQWeight
        The quantized weight.

    Returns
    -------
    numpy.ndarray
        float32 ``[N, K]``: ``offset + sum_b alpha_b * B_b`` computed in
        float64 from the stored float16 alphas/offsets, then rounded.

    Raises
    ------
    QuantizationError
        If ``bw`` is not a :class:`BCQWeight`.
    """
    if not isinstance(bw, BCQWeight):
        raise QuantizationError(f"expected a BCQWeight, got {type(bw).__name__}")
    n, k = bw.shape
    groups, glen = bw.scheme.groups(k), bw.scheme.group_len(k)
    out = np.empty((n, k), dtype=np.float32)
    for start, stop in _row_chunks(n, k, _CHUNK_ELEMENTS):
        signs = unpack_planes(bw.planes[:, start:stop], k)
        signs = signs.reshape(bw.scheme.bits, stop - start, groups, glen)
        values = np.repeat(
            bw.offsets[start:stop].astype(np.float64)[:, :, None], glen, axis=2
        )
        for b in range(bw.scheme.bits):
            values += bw.alphas[start:stop, :, b].astype(np.float64)[:, :, None] * signs[b]
        out[start:stop] = values.reshape(stop - start, k)
    return out


def bcq_from_uniform(codes, scales, zeros, bits: int, group_size: int) -> BCQWeight:
    """Convert uniform asymmetric ``bits``-bit codes to an equivalent BCQ weight.

    Parameters
    ----------
    codes : numpy.ndarray
        Integer ``[N, K]`` codes in ``[0, 2^bits)``; ``K % 32 == 0``.
    scales : numpy.ndarray
        Floating ``[N, G]`` positive finite group scales ``s``.
    zeros : numpy.ndarray
        Floating ``[N, G]`` finite zero points ``z`` (usually integers).
    bits : int
        2, 3 or 4.
    group_size : int
        32, 64, 128 or -1 (per row).

    Returns
    -------
    BCQWeight
        With ``alpha_b = s * 2^(b-1)``, ``offset = s * ((2^bits - 1) / 2 - z)``
        and ``B_b = 2 * bit_b(c) - 1``, so that it dequantizes to
        ``(c - z) * s`` up to float16 rounding of alphas and offsets.

    Raises
    ------
    QuantizationError
        On invalid shapes, dtypes or values, or if a value overflows float16.
    """
    scheme = BCQScheme(bits=bits, group_size=group_size, offset=True)
    n, k = _check_codes(codes, bits, scheme)
    groups = scheme.groups(k)
    s = _check_group_params("scales", scales, (n, groups), positive=True)
    z = _check_group_params("zeros", zeros, (n, groups), positive=False)
    powers = 2.0 ** (np.arange(bits, dtype=np.float64) - 1.0)
    alphas = _to_fp16(s[:, :, None] * powers, "alphas")
    offsets = _to_fp16(s * ((2.0**bits - 1.0) / 2.0 - z), "offsets")
    signs = np.stack([((codes >> b) & 1).astype(bool) for b in range(bits)])
    return BCQWeight(pack_planes(signs), alphas, offsets, scheme, (n, k))


# ------------------------------------------------------------------ helpers


def _channel_importance(channel_weights, k: int) -> np.ndarray:
    """Per-channel weights of the fit (mean 1), all ones when none are given."""
    if channel_weights is None:
        return np.ones(k)
    c = np.asarray(channel_weights, dtype=np.float64).reshape(-1)
    if c.shape != (k,) or not np.isfinite(c).all() or (c < 0).any() or c.sum() <= 0:
        raise QuantizationError(
            f"channel_weights must be {k} finite non-negative numbers, not all zero; got shape {c.shape}"
        )
    return c / c.mean()


def _quantize_rows(rows: np.ndarray, scheme: BCQScheme, iterations: int, importance: np.ndarray) -> tuple:
    """Quantize a row block; return ``(idx [n, G, g], alphas16, offsets16)``.

    ``importance`` ``[G, g]`` weighs each element's squared error (ones: plain weight error).
    """
    n, k = rows.shape
    w = rows.astype(np.float64).reshape(n, scheme.groups(k), scheme.group_len(k))
    idx, alphas, offset = _greedy_init(w, scheme)
    alphas16 = _to_fp16(alphas, "alphas", weights_too_large=True)
    offset16 = _to_fp16(offset, "offsets", weights_too_large=True)
    best = (idx, alphas16, offset16)
    best_err = _group_error(w, *best, importance)
    for _ in range(iterations):
        alphas16, offset16 = _refit(w, idx, alphas16, offset16, scheme, importance)
        idx = _assign(w, alphas16, offset16)
        err = _group_error(w, idx, alphas16, offset16, importance)
        best, best_err = _keep_best(best, best_err, (idx, alphas16, offset16), err)
    return _make_positive(*best)


def _greedy_init(w: np.ndarray, scheme: BCQScheme) -> tuple:
    """Greedy BCQ init for ``w`` ``[n, G, g]``; return ``(idx, alphas, offset)``."""
    if scheme.offset:
        offset = w.mean(axis=2)
    else:
        offset = np.zeros(w.shape[:2])
    residual = w - offset[:, :, None]
    idx = np.zeros(w.shape, dtype=np.uint8)
    alphas = np.empty(w.shape[:2] + (scheme.bits,))
    for b in range(scheme.bits):
        positive = residual >= 0.0
        alphas[:, :, b] = np.abs(residual).mean(axis=2)
        idx |= positive.astype(np.uint8) << np.uint8(b)
        residual -= np.where(positive, 1.0, -1.0) * alphas[:, :, b, None]
    return idx, alphas, offset


def _plane_signs(idx: np.ndarray, bits: int) -> np.ndarray:
    """±1 float64 planes ``[n, G, bits, g]`` from pattern indices ``[n, G, g]``."""
    shifts = np.arange(bits, dtype=np.uint8)[None, None, :, None]
    return ((idx[:, :, None, :] >> shifts) & 1).astype(np.float64) * 2.0 - 1.0


def _refit(w, idx, alphas16, offset16, scheme: BCQScheme, importance: np.ndarray) -> tuple:
    """Weighted least-squares alphas (and offset) for fixed planes, rounded to float16.

    Groups whose solution is not representable in float16 keep their
    previous parameters.
    """
    design = _plane_signs(idx, scheme.bits)
    if scheme.offset:
        ones = np.ones(design.shape[:2] + (1, design.shape[3]))
        design = np.concatenate([design, ones], axis=2)
    weighted = design * importance[None, :, None, :]
    gram = weighted @ np.swapaxes(design, 2, 3)
    rhs = weighted @ w[:, :, :, None]
    ridge = RIDGE * np.trace(gram, axis1=2, axis2=3)
    gram += ridge[:, :, None, None] * np.eye(gram.shape[-1])
    solution = np.linalg.solve(gram, rhs)[..., 0]
    new_alphas = _fp16_or_nan(solution[:, :, : scheme.bits])
    new_offset = _fp16_or_nan(solution[:, :, scheme.bits]) if scheme.offset else offset16
    bad = np.isnan(new_alphas).any(axis=2) | np.isnan(new_offset.astype(np.float32))
    new_alphas[bad] = alphas16[bad]
    new_offset = np.where(bad, offset16, new_offset)
    return new_alphas, new_offset


def _candidates(alphas16: np.ndarray, offset16: np.ndarray) -> np.ndarray:
    """Candidate values ``[n, G, 2^bits]``; entry ``p`` uses sign pattern ``p``."""
    bits = alphas16.shape[2]
    patterns = np.arange(1 << bits)
    signs = ((patterns[:, None] >> np.arange(bits)[None, :]) & 1) * 2.0 - 1.0
    values = np.repeat(offset16.astype(np.float64)[:, :, None], 1 << bits, axis=2)
    for b in range(bits):
        values += alphas16[:, :, b, None].astype(np.float64) * signs[None, None, :, b]
    return values


def _assign(w: np.ndarray, alphas16: np.ndarray, offset16: np.ndarray) -> np.ndarray:
    """Nearest-candidate pattern index per element of ``w`` ``[n, G, g]``."""
    cand = _candidates(alphas16, offset16)
    order = np.argsort(cand, axis=2)
    ranked = np.take_along_axis(cand, order, axis=2)
    mids = 0.5 * (ranked[:, :, 1:] + ranked[:, :, :-1])
    rank = np.zeros(w.shape, dtype=np.intp)
    for j in range(mids.shape[2]):
        rank += w > mids[:, :, j, None]
    return np.take_along_axis(order, rank, axis=2).astype(np.uint8)


def _group_error(w, idx, alphas16, offset16, importance) -> np.ndarray:
    """Weighted squared reconstruction error per group ``[n, G]`` (float64)."""
    recon = np.take_along_axis(_candidates(alphas16, offset16), idx.astype(np.intp), axis=2)
    return (np.square(w - recon) * importance[None]).sum(axis=2)


def _keep_best(best: tuple, best_err: np.ndarray, new: tuple, err: np.ndarray) -> tuple:
    """Per group, keep whichever of ``best`` and ``new`` has the lower error."""
    better = err < best_err
    idx = np.where(better[:, :, None], new[0], best[0])
    alphas = np.where(better[:, :, None], new[1], best[1])
    offset = np.where(better, new[2], best[2])
    return (idx, alphas, offset), np.where(better, err, best_err)


def _make_positive(idx, alphas16, offset16) -> tuple:
    """Flip planes whose alpha is negative so that all alphas are >= 0."""
    negative = np.signbit(alphas16)
    flips = (negative.astype(np.uint8) << np.arange(alphas16.shape[2], dtype=np.uint8))
    idx = idx ^ flips.sum(axis=2, dtype=np.uint8)[:, :, None]
    return idx, np.abs(alphas16), offset16


def _fp16_or_nan(values: np.ndarray) -> np.ndarray:
    """Round to float16, mapping values beyond the float16 range to NaN."""
    out = values.astype(np.float16)
    out[~(np.abs(values) <= FP16_MAX)] = np.nan
    return out


def _to_fp16(values: np.ndarray, what: str, weights_too_large: bool = False) -> np.ndarray:
    """Round float64 ``values`` to float16, raising if any overflows."""
    too_big = ~(np.abs(values) <= FP16_MAX)
    if np.any(too_big):
        index = tuple(int(i) for i in np.argwhere(too_big)[0])
        hint = "rescale the weights" if weights_too_large else "rescale the inputs"
        raise QuantizationError(
            f"{what} value {values[index]:.6g} at index {index} overflows float16 "
            f"(max {FP16_MAX}); {hint}"
        )
    return values.astype(np.float16)


def _signs_to_bool(signs) -> np.ndarray:
    """Validate a ``[bits, N, K]`` sign array; return True where +1."""
    if not isinstance(signs, np.ndarray) or signs.ndim != 3:
        raise QuantizationError(
            f"pack_planes expects a 3-D [bits, N, K] numpy array, got {_describe(signs)}"
        )
    if signs.dtype == bool:
        return signs
    if not (np.issubdtype(signs.dtype, np.integer) or np.issubdtype(signs.dtype, np.floating)):
        raise QuantizationError(
            f"pack_planes expects bool or numeric ±1 signs, got dtype {signs.dtype}"
        )
    positive = signs == 1
    if not np.all(positive | (signs == -1)):
        raise QuantizationError(
            "pack_planes expects signs in {-1, +1} (or bool), got other values, e.g. "
            f"{signs[~(positive | (signs == -1))].flat[0]!r}"
        )
    return positive


def _check_k_packable(k: int, what: str) -> None:
    """Raise unless K is a multiple of 32 (one uint32 word of plane bits)."""
    if k % BITS_PER_WORD != 0:
        raise QuantizationError(
            f"{what} K={k} is not a multiple of {BITS_PER_WORD} (32 plane bits per "
            f"uint32 word); pad K with zeros to a multiple of {BITS_PER_WORD}"
        )


def _check_weight_shape(array: np.ndarray, scheme: BCQScheme) -> tuple:
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
    _check_k_packable(k, "weight")
    scheme.groups(k)
    return n, k


def _check_codes(codes, bits: int, scheme: BCQScheme) -> tuple:
    """Validate uniform codes ``[N, K]``; return ``(N, K)``."""
    if not isinstance(codes, np.ndarray) or not np.issubdtype(codes.dtype, np.integer):
        raise QuantizationError(
            f"codes must be an integer numpy array, got {_describe(codes)}"
        )
    if codes.ndim != 2 or codes.size == 0:
        raise QuantizationError(
            f"codes must be a non-empty 2-D [N, K] array, got shape {codes.shape}"
        )
    n, k = codes.shape
    _check_k_packable(k, "codes")
    scheme.groups(k)
    if int(codes.min()) < 0 or int(codes.max()) >= 1 << bits:
        raise QuantizationError(
            f"codes must be in [0, {(1 << bits) - 1}] for bits={bits}, got range "
            f"[{int(codes.min())}, {int(codes.max())}]"
        )
    return n, k


def _check_group_params(what: str, x, shape: tuple, positive: bool) -> np.ndarray:
    """Validate a floating ``[N, G]`` parameter array; return it as float64."""
    if not isinstance(x, np.ndarray) or not np.issubdtype(x.dtype, np.floating) or x.shape != shape:
        raise QuantizationError(
            f"{what} must be a floating numpy array of shape {shape}, got {_describe(x)}"
        )
    values = x.astype(np.float64)
    if not np.all(np.isfinite(values)) or (positive and not np.all(values > 0)):
        kind = "finite and > 0" if positive else "finite"
        raise QuantizationError(f"{what} must be {kind}; got min {values.min()!r}")
    return values


def _check_shape_tuple(shape) -> tuple:
    """Validate a ``(N, K)`` shape tuple of positive ints."""
    if (
        not isinstance(shape, tuple)
        or len(shape) != 2
        or not all(_is_int(d) or isinstance(d, np.integer) for d in shape)
        or not all(d > 0 for d in shape)
    ):
        raise QuantizationError(f"shape must be a tuple (N, K) of positive ints, got {shape!r}")
    return int(shape[0]), int(shape[1])
