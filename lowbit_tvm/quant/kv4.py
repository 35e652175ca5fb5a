"""Atom-style low-bit KV cache: asymmetric integer groups along the head dimension, quantized on write.

Each cached vector (one head, one token: a key after RoPE or a value, ``head_dim`` numbers) is cut into groups of
``group`` consecutive channels; each group gets an fp16 zero ``z`` (its minimum, rounded down to fp16) and an fp16
scale ``s`` (``(max - z) / (2^bits - 1)``, rounded up to fp16, at least the smallest normal fp16), and its values
become unsigned codes ``q = clip(round((x - z) / s), 0, 2^bits - 1)``; they read back as ``x_hat = q s + z``.
With ``z <= min`` and ``z + (2^bits - 1) s >= max`` no value clips, so ``|x - x_hat| <= s / 2`` for every value.

The attention then reads ``x_hat`` for all cached tokens (the fresh token included: the cache is written before
it is read, as in Atom's fused kernels).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..errors import QuantizationError

FP16_MAX = float(np.finfo(np.float16).max)


@dataclass(frozen=True)
class KVScheme:
    """Bits and group of a quantized KV cache (a cache and JSON key).

    Parameters
    ----------
    bits : int
        Code width, 2 to 8 (4: KV4).
    group : int
        Channels per (zero, scale) pair along the head dimension; must divide ``head_dim`` (e.g. 64 = one group per
        head and token for SmolLM2, 32 = two).

    Raises
    ------
    QuantizationError
        If a field is out of range.
    """

    bits: int = 4
    group: int = 64

    def __post_init__(self):
        if not isinstance(self.bits, int) or not 2 <= self.bits <= 8:
            raise QuantizationError(f"KV cache bits must be an int in [2, 8] (4 for KV4), got {self.bits!r}")
        if not isinstance(self.group, int) or self.group < 1:
            raise QuantizationError(f"KV group must be a positive int (e.g. head_dim), got {self.group!r}")

    @property
    def levels(self) -> int:
        """Largest code, ``2^bits - 1``."""
        return (1 << self.bits) - 1

    @property
    def name(self) -> str:
        """E.g. ``kv4-g64``."""
        return f"kv{self.bits}-g{self.group}"

    def to_json(self) -> dict:
        """A JSON-ready record."""
        return asdict(self)


KV4 = KVScheme(4, 64)


@dataclass(frozen=True, eq=False)
class KVQuantized:
    """Quantized cache entries.

    Attributes
    ----------
    scheme : KVScheme
    codes : numpy.ndarray
        uint8 ``[..., head_dim]``, values in ``[0, 2^bits - 1]``.
    scales, zeros : numpy.ndarray
        float16 ``[..., head_dim / group]``.
    """

    scheme: KVScheme
    codes: np.ndarray
    scales: np.ndarray
    zeros: np.ndarray


def _grouped(x, scheme: KVScheme) -> np.ndarray:
    array = np.asarray(x, dtype=np.float64)
    if array.ndim < 1 or array.size == 0:
        raise QuantizationError(f"KV states must be a non-empty array [..., head_dim], got shape {array.shape}")
    head_dim = array.shape[-1]
    if head_dim % scheme.group:
        raise QuantizationError(
            f"head_dim {head_dim} is not a multiple of the KV group {scheme.group}; pick a group dividing it"
        )
    if not np.isfinite(array).all() or np.abs(array).max() > FP16_MAX:
        raise QuantizationError(
            "KV states hold Inf/NaN or values beyond the fp16 range: fp16 zero points cannot represent them; "
            "fix the producer of these values before quantizing"
        )
    return array.reshape(*array.shape[:-1], head_dim // scheme.group, scheme.group)


def _round_fp16(values: np.ndarray, direction: float) -> np.ndarray:
    """fp16 nearest to ``values``, moved one step towards ``direction`` where it landed on the wrong side."""
    half = values.astype(np.float16)
    wrong = half.astype(np.float64) > values if direction < 0 else half.astype(np.float64) < values
    return np.where(wrong, np.nextafter(half, np.float16(direction)), half)


def quantize_kv(x, scheme: KVScheme = KV4) -> KVQuantized:
    """Quantize KV states ``[..., head_dim]`` group-wise along the last axis (see the module docstring).

    Parameters
    ----------
    x : array-like
        Finite keys (after RoPE) or values, last axis the head dimension.
    scheme : KVScheme

    Returns
    -------
    KVQuantized

    Raises
    ------
    QuantizationError
        If ``x`` is empty, not finite, beyond fp16, or its head dimension is not a multiple of ``scheme.group``.
    """
    grouped = _grouped(x, scheme)
    zeros = _round_fp16(grouped.min(axis=-1), -np.inf)
    span = (grouped.max(axis=-1) - zeros.astype(np.float64)) / scheme.levels
    scales = np.maximum(_round_fp16(span, np.inf), np.finfo(np.float16).tiny).astype(np.float16)
    scaled = (grouped - zeros.astype(np.float64)[..., None]) / scales.astype(np.float64)[..., None]
    codes = np.clip(np.rint(scaled), 0, scheme.levels).astype(np.uint8)
    return KVQuantized(scheme, codes.reshape(np.shape(x)), scales, zeros)


def dequantize_kv(qkv: KVQuantized) -> np.ndarray:
    """float64 ``[..., head_dim]`` reconstruction ``q s + z``."""
    group = qkv.scheme.group
    codes = qkv.codes.reshape(*qkv.codes.shape[:-1], -1, group).astype(np.float64)
    values = codes * qkv.scales.astype(np.float64)[..., None] + qkv.zeros.astype(np.float64)[..., None]
    return values.reshape(qkv.codes.shape)


def fake_quantize_kv(x, scheme: KVScheme = KV4) -> np.ndarray:
    """``dequantize_kv(quantize_kv(x, scheme))``: what attention reads back from the cache (float64)."""
    return dequantize_kv(quantize_kv(x, scheme))
