"""Atom's W4A4 (Zhao et al., arXiv 2310.19102) for the ``mma.sync.m16n8k64.s4`` kernel: layouts and reference.

The weights are those of W4A8 (:func:`lowbit_tvm.quant.atom.quantize_weight` with ``AtomScheme(4, 128, o)``:
int4 in [-8, 7] per group of 128 permuted channels, int8 outlier channels). The activations' main part is int4
symmetric per token and group of 128 channels (``atom.A4G128``: ``q`` in [-7, 7], scale ``max|x| / 7``), the
outliers int8 per token as in W4A8.

Packing: two int4 codes per byte, channel ``2 c`` in the low nibble and ``2 c + 1`` in the high one (the order
``mma.sync`` reads 4-bit elements in). A 16x64 int4 tile is then byte for byte the 16x32 int8 tile of
``m16n8k32``, so the activations are int8 ``[M, K/2]`` bytes (loaded by ``ldmatrix`` like int8) and the weights
are their bytes in the int8 fragment layout of ``lowbit_tvm.quant.s8_layout`` (uint32 ``[N/16, K/64, 32, 4]``).
"""
from __future__ import annotations

import numpy as np

from ..errors import QuantizationError
from . import atom, s8_layout

#: Channels per activation (and weight) scale of the main part.
GROUP = 128
#: Largest activation code magnitude (symmetric int4).
ACT4_MAX = 7


def check_scheme(scheme: atom.AtomScheme) -> None:
    """Raise ``QuantizationError`` unless ``scheme`` has W4A4's weights (int4, group 128)."""
    if scheme.weight_bits != 4 or scheme.group_size != GROUP:
        raise QuantizationError(
            f"W4A4 needs int4 weights in groups of {GROUP} (the activation group; both scales rescale one int32 "
            f"partial sum), got {scheme.name}: use AtomScheme(4, {GROUP}, outliers)"
        )


def pack_nibbles(codes) -> np.ndarray:
    """Signed int4 codes ``[R, C]`` (C even) -> int8 bytes ``[R, C/2]``: code ``2c`` low nibble, ``2c+1`` high."""
    codes = np.asarray(codes).astype(np.int64)
    if codes.ndim != 2 or codes.shape[1] % 2:
        raise QuantizationError(f"expected 2-D codes with an even number of columns, got {codes.shape}")
    if codes.size and (codes.min() < -8 or codes.max() > 7):
        raise QuantizationError("int4 codes must lie in [-8, 7]")
    packed = (codes[:, 0::2] & 0xF) | ((codes[:, 1::2] & 0xF) << 4)
    return packed.astype(np.uint8).view(np.int8)


def unpack_nibbles(packed) -> np.ndarray:
    """Inverse of :func:`pack_nibbles`: int8 codes ``[R, 2 C]``."""
    b = np.asarray(packed, dtype=np.int8).astype(np.int64)
    low = ((b & 0xF) ^ 8) - 8
    high = b >> 4  # arithmetic shift of the signed byte
    return np.stack([low, high], axis=-1).reshape(b.shape[0], -1).astype(np.int8)


def packed_weight(aw: atom.AtomWeight) -> np.ndarray:
    """Main weights for the W4A4 kernel: uint32 ``[N/16, main_k/64, 32, 4]``."""
    check_scheme(aw.scheme)
    return s8_layout.to_s8_layout(pack_nibbles(aw.codes), 8)


def quantize_activations(x, aw: atom.AtomWeight) -> tuple:
    """W4A4's fused reorder + quantize in float64: ``(q_main, amax_main, q_out, amax_out)``.

    ``q_main`` int8 ``[M, main_k]`` codes in [-7, 7] (unpacked), ``amax_main`` float64 ``[M, main_k/128]`` (the
    scale is that / 7), ``q_out`` int8 ``[M, outliers]``, ``amax_out`` ``[M]`` (scale / 127), as the kernel
    stores them.
    """
    check_scheme(aw.scheme)
    q_main, s_main, q_out, s_out = atom.quantize_activations(x, aw, atom.A4G128)
    return q_main, s_main * ACT4_MAX, q_out, s_out * atom.ACT_MAX


def matmul_from_codes(q_main, amax_main, q_out, amax_out, aw: atom.AtomWeight) -> np.ndarray:
    """float64 ``[M, N]`` of the W4A4 math from given activation codes and per-token maxima (e.g. the kernel's)."""
    qa, qw = np.asarray(q_main, np.float64), aw.codes.astype(np.float64)
    act_scales = np.asarray(amax_main, np.float64) / ACT4_MAX
    y = np.zeros((qa.shape[0], aw.shape[0]))
    for g in range(aw.main_k // GROUP):
        part = slice(g * GROUP, (g + 1) * GROUP)
        partial = qa[:, part] @ qw[:, part].T  # exact integer sums
        y += partial * act_scales[:, g:g + 1] * aw.scales[:, g].astype(np.float64)[None, :]
    if aw.scheme.outliers:
        w_out = aw.outlier_codes.astype(np.float64) * aw.outlier_scales.astype(np.float64)
        y += (np.asarray(q_out, np.float64) @ w_out.T) * (np.asarray(amax_out, np.float64) / atom.ACT_MAX)[:, None]
    return y


def reference_matmul(x, aw: atom.AtomWeight) -> np.ndarray:
    """float64 ``[M, N]`` result of the W4A4 quantized math (what the kernel computes, without fp16 rounding)."""
    return matmul_from_codes(*quantize_activations(x, aw), aw)
