"""Atom-style W4A8 / W8A8 quantization (Zhao et al., arXiv 2310.19102): the math and its float64 reference.

A linear layer ``y = x W^T`` (``W`` is ``[N, K]``) is computed on integer tensor cores:

- Calibration picks ``outliers`` input channels with the largest activation RMS (:func:`channel_scores`,
  :func:`select_outliers`). A permutation (:func:`permutation`) moves the other channels first (zero-padded
  up to whole ``PAD_K`` tiles: index ``K`` stands for a zero channel) and the outlier channels last.
- Weights, permuted offline: the main channels int4 symmetric per group of ``group_size`` (fp16 scales,
  ``q = clip(round(w / s), -8, 7)``, ``s = max|w| / 7``), or int8 per output channel for W8A8
  (``s = max|w| / 127``); the outlier channels int8 per output channel.
- Activations, at run time (the fused reorder + quantize kernel): per token, the main channels to int8 with
  one fp32 scale ``max|x| / 127`` and the outlier channels to int8 with their own scale,
  ``q = floor(x / s + 1/2)`` clipped to [-127, 127].
- ``y = s_a[m] * sum_g s_w[n, g] * (int32 sum over group g) + s_o[m] * s_wo[n] * (int32 sum over outliers)``.

Atom's W4A4 (the math here, for accuracy studies; the kernel's packing and reference are in
``quant.atom_w4a4``): the same weights, the main activation channels int4 symmetric per token and group of 128
permuted channels (:class:`ActivationScheme`, ``A4G128``),
the outliers int8 per token; :func:`dequantize_activations` gives what either format reads back.

:func:`reference_matmul` evaluates exactly that in float64 from the quantized integers.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import QuantizationError
from . import s8_layout

#: K tile of the kernels: the main part is zero-padded to a multiple of it.
PAD_K = 128
#: Outlier counts must be a multiple of the kernels' mma K (32).
OUTLIER_TILE = s8_layout.TILE_K
ACT_MAX = 127
#: Activation amax floor (an all-zero row quantizes to zeros with a finite scale).
AMAX_FLOOR = 1e-20


@dataclass(frozen=True)
class AtomScheme:
    """Bits and grouping of one Atom-style linear layer.

    Parameters
    ----------
    weight_bits : int
        4 (group-quantized main weights: W4A8) or 8 (per-output-channel int8 weights: W8A8).
    group_size : int or None
        Weight group along K for 4 bits (128); None for 8 bits (one scale per output channel).
    outliers : int
        Input channels kept in int8 (activations and weights) and moved to the end of K; a multiple of
        ``OUTLIER_TILE`` (0 disables the outlier path).
    """

    weight_bits: int = 4
    group_size: int | None = 128
    outliers: int = 128

    def __post_init__(self):
        if self.weight_bits not in (4, 8):
            raise QuantizationError(f"weight_bits must be 4 (W4A8) or 8 (W8A8), got {self.weight_bits}")
        if self.weight_bits == 4 and (self.group_size is None or PAD_K % self.group_size):
            raise QuantizationError(f"W4A8 needs a group size dividing {PAD_K} (e.g. 128), got {self.group_size}")
        if self.weight_bits == 8 and self.group_size is not None:
            raise QuantizationError("W8A8 weights are per output channel: pass group_size=None")
        if self.outliers < 0 or self.outliers % OUTLIER_TILE:
            raise QuantizationError(
                f"outliers must be a non-negative multiple of {OUTLIER_TILE} (the kernel's mma K), "
                f"got {self.outliers}; round it, e.g. to {max(OUTLIER_TILE, self.outliers // OUTLIER_TILE * OUTLIER_TILE)}"
            )

    @property
    def name(self) -> str:
        """E.g. ``w4a8-g128-o128`` or ``w8a8``."""
        base = f"w4a8-g{self.group_size}" if self.weight_bits == 4 else "w8a8"
        return base + (f"-o{self.outliers}" if self.outliers else "")

    def main_k(self, k: int) -> int:
        """Padded K of the main (non-outlier) part for a layer of ``k`` input channels."""
        check_outliers(k, self.outliers)
        return -(-(k - self.outliers) // PAD_K) * PAD_K

    def groups(self, k: int) -> int:
        """Weight scale groups of the main part."""
        return self.main_k(k) // self.group_size if self.weight_bits == 4 else 1

    def to_json(self) -> dict:
        """A JSON-ready record."""
        return {"weight_bits": self.weight_bits, "group_size": self.group_size, "outliers": self.outliers}


W4A8 = AtomScheme(4, 128, 128)
W8A8 = AtomScheme(8, None, 0)


def check_outliers(k: int, outliers: int) -> None:
    """Raise ``QuantizationError`` unless ``outliers`` fits a layer of ``k`` input channels."""
    if outliers > k or outliers < 0:
        raise QuantizationError(f"outlier count {outliers} must lie in [0, K={k}]")
    if outliers % OUTLIER_TILE:
        raise QuantizationError(f"outlier count {outliers} must be a multiple of {OUTLIER_TILE} (the kernel's mma K)")


def _float64(x, what: str) -> np.ndarray:
    array = np.asarray(x, dtype=np.float64)
    if array.ndim != 2 or 0 in array.shape:
        raise QuantizationError(f"{what} must be a non-empty 2-D array, got shape {array.shape}")
    if not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise QuantizationError(
            f"{what} holds {bad} Inf/NaN values: quantization scales would be meaningless; "
            "fix the producer of these values (overflowing fp16?) before quantizing"
        )
    return array


def channel_scores(activations) -> np.ndarray:
    """Per input channel RMS over calibration tokens ``[T, K]`` (float64 ``[K]``)."""
    x = _float64(activations, "calibration activations")
    return np.sqrt(np.mean(x * x, axis=0))


def select_outliers(scores, count: int) -> np.ndarray:
    """Indices (ascending) of the ``count`` channels with the largest ``scores``."""
    scores = np.asarray(scores, dtype=np.float64)
    check_outliers(scores.shape[0], count)
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    return np.sort(np.argsort(-scores, kind="stable")[:count])


def permutation(k: int, outlier_idx, scheme: AtomScheme) -> np.ndarray:
    """int32 ``[main_k + outliers]``: the input channel read at each kernel K position.

    The main channels in ascending order, padded with ``k`` (a zero channel) to ``scheme.main_k(k)``, then the
    outlier channels.
    """
    outlier_idx = np.asarray(outlier_idx, dtype=np.int64)
    if outlier_idx.shape != (scheme.outliers,):
        raise QuantizationError(f"expected {scheme.outliers} outlier indices, got {outlier_idx.shape[0]}")
    if len(set(outlier_idx.tolist())) != outlier_idx.size or (outlier_idx.size and not 0 <= outlier_idx.min() <= outlier_idx.max() < k):
        raise QuantizationError(f"outlier indices must be distinct channels in [0, {k})")
    keep = np.setdiff1d(np.arange(k), outlier_idx)
    pad = np.full(scheme.main_k(k) - keep.size, k)
    return np.concatenate([keep, pad, outlier_idx]).astype(np.int32)


@dataclass(frozen=True, eq=False)
class AtomWeight:
    """A quantized weight: signed codes and fp16 scales, in permuted K order.

    Attributes
    ----------
    scheme : AtomScheme
    shape : tuple
        ``(N, K)`` of the original weight.
    perm : numpy.ndarray
        int32 ``[main_k + outliers]`` (see :func:`permutation`).
    codes : numpy.ndarray
        int8 ``[N, main_k]``: int4 values in [-8, 7] (W4A8) or int8 (W8A8).
    scales : numpy.ndarray
        float16 ``[N, groups]``.
    outlier_codes : numpy.ndarray
        int8 ``[N, outliers]``.
    outlier_scales : numpy.ndarray
        float16 ``[N, 1]``.
    """

    scheme: AtomScheme
    shape: tuple
    perm: np.ndarray
    codes: np.ndarray
    scales: np.ndarray
    outlier_codes: np.ndarray
    outlier_scales: np.ndarray

    @property
    def main_k(self) -> int:
        """Padded K of the main part."""
        return self.codes.shape[1]

    def packed(self) -> np.ndarray:
        """Main weights in the int8 tensor-core fragment layout (``lowbit_tvm.quant.s8_layout``)."""
        return s8_layout.to_s8_layout(self.codes, self.scheme.weight_bits)

    def packed_outliers(self) -> np.ndarray:
        """Outlier weights (int8) in the fragment layout."""
        return s8_layout.to_s8_layout(self.outlier_codes, 8)


def _scales16(amax: np.ndarray, qmax: int) -> np.ndarray:
    """fp16 scales ``amax / qmax`` rounded up (codes then never clip), never zero or subnormal."""
    scale = (amax / qmax).astype(np.float16)
    scale = np.where(scale.astype(np.float64) * qmax < amax, np.nextafter(scale, np.float16(np.inf)), scale)
    return np.maximum(scale, np.finfo(np.float16).tiny).astype(np.float16)


def _quantize_groups(w: np.ndarray, group: int, bits: int) -> tuple:
    n, k = w.shape
    qmax = 7 if bits == 4 else 127
    grouped = w.reshape(n, k // group, group)
    scales = _scales16(np.abs(grouped).max(axis=2), qmax)
    codes = np.clip(np.rint(grouped / scales[..., None].astype(np.float64)), -qmax - (bits == 4), qmax)
    return codes.reshape(n, k).astype(np.int8), scales


def quantize_weight(weight, outlier_idx, scheme: AtomScheme = W4A8) -> AtomWeight:
    """Quantize ``weight`` ``[N, K]`` for the kernels, its K permuted by the calibrated outliers.

    Parameters
    ----------
    weight : array-like
        Finite float ``[N, K]``; N a multiple of 16 for the GPU kernels (not needed for the reference).
    outlier_idx : array-like of int
        ``scheme.outliers`` distinct input channels (from :func:`select_outliers`).
    scheme : AtomScheme

    Returns
    -------
    AtomWeight
    """
    w = _float64(weight, "weight")
    n, k = w.shape
    perm = permutation(k, outlier_idx, scheme)
    padded = np.concatenate([w, np.zeros((n, 1))], axis=1)[:, perm]
    main, out = padded[:, : scheme.main_k(k)], padded[:, scheme.main_k(k):]
    group = scheme.group_size or main.shape[1]
    codes, scales = _quantize_groups(main, group, scheme.weight_bits)
    if scheme.outliers:
        out_codes, out_scales = _quantize_groups(out, out.shape[1], 8)
    else:
        out_codes, out_scales = np.zeros((n, 0), np.int8), np.ones((n, 1), np.float16)
    return AtomWeight(scheme, (n, k), perm, codes, scales, out_codes, out_scales)


@dataclass(frozen=True)
class ActivationScheme:
    """How the main (non-outlier) activation channels are quantized per token; outliers stay int8 per token.

    Parameters
    ----------
    bits : int
        8 (W4A8/W8A8, the kernels') or 4 (Atom's W4A4: symmetric int4, ``q`` clipped to [-7, 7]).
    group : int or None
        Channels per scale along the permuted main part (dividing ``PAD_K``, e.g. 128), or None for one scale per
        token over the whole main part (the W4A8 kernels' format).

    Raises
    ------
    QuantizationError
        If a field is out of range.
    """

    bits: int = 8
    group: int | None = None

    def __post_init__(self):
        if self.bits not in (4, 8):
            raise QuantizationError(f"activation bits must be 4 or 8, got {self.bits!r}")
        if self.group is not None and (not isinstance(self.group, int) or self.group < 1 or PAD_K % self.group):
            raise QuantizationError(f"activation group must be None or divide {PAD_K} (e.g. 128), got {self.group!r}")

    @property
    def qmax(self) -> int:
        """Largest code magnitude: 127 or 7."""
        return (1 << (self.bits - 1)) - 1

    @property
    def name(self) -> str:
        """E.g. ``a8`` or ``a4-g128``."""
        return f"a{self.bits}" + (f"-g{self.group}" if self.group else "")

    def to_json(self) -> dict:
        """A JSON-ready record."""
        return {"bits": self.bits, "group": self.group}


#: The W4A8/W8A8 kernels' activations: int8, one scale per token.
A8 = ActivationScheme(8, None)
#: Atom's W4A4 activations: int4 in groups of 128 channels per token.
A4G128 = ActivationScheme(4, 128)


def _quantize_rows(part: np.ndarray, qmax: int, group: int | None) -> tuple:
    """Symmetric codes ``floor(x qmax / amax + 1/2)`` clipped to ``[-qmax, qmax]`` and scales ``amax / qmax``
    per row (``[M]``) or per row and group (``[M, cols / group]``)."""
    if group is None:
        amax = np.maximum(np.abs(part).max(axis=1, initial=0.0), AMAX_FLOOR)
        q = np.clip(np.floor(part * (qmax / amax)[:, None] + 0.5), -qmax, qmax)
        return q.astype(np.int8), amax / qmax
    grouped = part.reshape(part.shape[0], -1, group)
    amax = np.maximum(np.abs(grouped).max(axis=2, initial=0.0), AMAX_FLOOR)
    q = np.clip(np.floor(grouped * (qmax / amax)[:, :, None] + 0.5), -qmax, qmax)
    return q.reshape(part.shape).astype(np.int8), amax / qmax


def quantize_activations(x, aw: AtomWeight, act: ActivationScheme = A8) -> tuple:
    """The fused reorder + per-token quantization, in float64.

    Parameters
    ----------
    x : array-like
        Finite activations ``[M, K]``.
    aw : AtomWeight
        Supplies the permutation (the layer's calibrated outliers).
    act : ActivationScheme
        Main-part format: ``A8`` (the kernels') or e.g. ``A4G128`` (W4A4); outliers are always int8 per token.

    Returns
    -------
    (q_main, s_main, q_out, s_out)
        int8 ``[M, main_k]``, float64 ``[M]`` (``[M, main_k / act.group]`` with a group), int8 ``[M, outliers]``,
        float64 ``[M]``.

    Raises
    ------
    QuantizationError
        If ``x`` holds Inf/NaN or its K differs from the weight's.
    """
    x = _float64(x, "activations")
    if x.shape[1] != aw.shape[1]:
        raise QuantizationError(f"activations have K={x.shape[1]}, the weight K={aw.shape[1]}")
    gathered = np.concatenate([x, np.zeros((x.shape[0], 1))], axis=1)[:, aw.perm]
    q_main, s_main = _quantize_rows(gathered[:, : aw.main_k], act.qmax, act.group)
    q_out, s_out = _quantize_rows(gathered[:, aw.main_k:], ACT_MAX, None)
    return q_main, s_main, q_out, s_out


def dequantize_activations(x, aw: AtomWeight, act: ActivationScheme = A8) -> np.ndarray:
    """float64 ``[M, K]``: ``x`` as the quantized kernel sees it (:func:`quantize_activations`, read back), in the
    original channel order (fake quantization)."""
    q_main, s_main, q_out, s_out = quantize_activations(x, aw, act)
    if s_main.ndim == 2:
        s_main = np.repeat(s_main, act.group, axis=1)
    else:
        s_main = s_main[:, None]
    full = np.zeros((q_main.shape[0], aw.shape[1] + 1))
    full[:, aw.perm] = np.concatenate([q_main * s_main, q_out * s_out[:, None]], axis=1)
    return full[:, : aw.shape[1]]


def dequantize_weight(aw: AtomWeight) -> np.ndarray:
    """float64 ``[N, K]`` reconstruction in the original channel order."""
    n, k = aw.shape
    group = aw.scheme.group_size or aw.main_k
    main = aw.codes.astype(np.float64) * np.repeat(aw.scales.astype(np.float64), group, axis=1)
    out = aw.outlier_codes.astype(np.float64) * aw.outlier_scales.astype(np.float64)
    full = np.zeros((n, k + 1))
    full[:, aw.perm] = np.concatenate([main, out], axis=1)  # padding columns all land on column k
    return full[:, :k]


def reference_matmul(x, aw: AtomWeight) -> np.ndarray:
    """float64 ``[M, N]`` result of the quantized math (what the kernels compute, without fp16 rounding)."""
    q_main, s_main, q_out, s_out = quantize_activations(x, aw)
    group = aw.scheme.group_size or aw.main_k
    w_main = aw.codes.astype(np.float64) * np.repeat(aw.scales.astype(np.float64), group, axis=1)
    y = (q_main.astype(np.float64) @ w_main.T) * s_main[:, None]
    if aw.scheme.outliers:
        w_out = aw.outlier_codes.astype(np.float64) * aw.outlier_scales.astype(np.float64)
        y += (q_out.astype(np.float64) @ w_out.T) * s_out[:, None]
    return y


def calibrate(weight, activations, scheme: AtomScheme = W4A8) -> AtomWeight:
    """Outlier channels from calibration ``activations`` ``[T, K]``, then :func:`quantize_weight`."""
    return quantize_weight(weight, select_outliers(channel_scores(activations), scheme.outliers), scheme)
