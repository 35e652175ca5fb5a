"""The int8 tensor-core weight layout: int4 or int8 codes pre-shuffled into mma.sync m16n8k32 B fragments.

TVM's 16x16x32 int8 mma (two ``mma.sync.m16n8k32.s8``) gives each of a warp's 32 lanes 16 bytes of a 16x32
(N x K) weight tile. Lane ``4 * (i % 8) + (j % 16) // 4`` holds element ``(i, j)`` in byte
``8 * (i // 8) + 4 * (j // 16) + j % 4`` of its 16 fragment bytes (registers 0-1 feed the tile's first 8
rows, 2-3 its last 8; this is the order ldmatrix fills them in, which ``mma.sync`` reads).

- int8 (``bits=8``): uint32 ``[N/16, K/32, 32, 4]``, the lane's 16 bytes as 4 little-endian words.
- int4 (``bits=4``): uint32 ``[N/16, K/32, 32, 2]``: word ``r // 2`` of the lane holds fragment register
  ``r``'s four codes in its low nibbles (``r`` even) or high nibbles (``r`` odd): byte ``t`` of register ``r``
  is nibble ``2 t + r % 2`` of word ``r // 2``. A kernel then makes register ``r`` with one shift and one
  mask (``(w << 4) & 0xF0F0F0F0`` or ``w & 0xF0F0F0F0``): each byte is ``16 q`` for the signed 4-bit code
  ``q`` (two's complement nibble), exact in int8; the 1/16 is folded into the epilogue.

All index helpers use only ``+ * // %`` so they work on Python ints, NumPy arrays and TVM expressions.
"""
from __future__ import annotations

import numpy as np

from ..errors import QuantizationError

TILE_N = 16
TILE_K = 32
WARP = 32
WORDS = {4: 2, 8: 4}


def lane_of(i, j):
    """Lane holding element ``(i, j)`` of a 16x32 tile (row = output feature, column = K)."""
    return 4 * (i % 8) + (j % 16) // 4


def byte_of(i, j):
    """Fragment byte (0..15) of element ``(i, j)`` in its lane."""
    return 8 * (i // 8) + 4 * (j // 16) + j % 4


def int4_position(i, j):
    """``(word, nibble)`` of element ``(i, j)`` in the lane's two int4 words."""
    return i // 8, 2 * (j % 4) + j // 16


def int8_position(i, j):
    """``(word, byte)`` of element ``(i, j)`` in the lane's four int8 words."""
    b = byte_of(i, j)
    return b // 4, b % 4


def _check(codes: np.ndarray, bits: int) -> tuple:
    if bits not in WORDS:
        raise QuantizationError(f"bits must be 4 or 8, got {bits}")
    if codes.ndim != 2:
        raise QuantizationError(f"expected 2-D [N, K] codes, got shape {codes.shape}")
    n, k = codes.shape
    if n % TILE_N or k % TILE_K:
        raise QuantizationError(
            f"the int8 tensor-core layout needs N % {TILE_N} == 0 and K % {TILE_K} == 0, got N={n}, K={k}; "
            "pad the weight with zero rows/columns first"
        )
    low, high = (-8, 7) if bits == 4 else (-128, 127)
    if codes.size and (codes.min() < low or codes.max() > high):
        raise QuantizationError(f"{bits}-bit codes must lie in [{low}, {high}]")
    return n, k


def _tile_index():
    """For each (lane, byte): the (i, j) of the tile element stored there."""
    rows = np.zeros((WARP, 16), dtype=np.int64)
    cols = np.zeros((WARP, 16), dtype=np.int64)
    for i in range(TILE_N):
        for j in range(TILE_K):
            rows[lane_of(i, j), byte_of(i, j)] = i
            cols[lane_of(i, j), byte_of(i, j)] = j
    return rows, cols


def to_s8_layout(codes, bits: int) -> np.ndarray:
    """Signed codes ``[N, K]`` (int4 in [-8, 7] or int8) -> uint32 fragments ``[N/16, K/32, 32, words]``."""
    codes = np.asarray(codes).astype(np.int64)
    n, k = _check(codes, bits)
    tiles = codes.reshape(n // TILE_N, TILE_N, k // TILE_K, TILE_K).transpose(0, 2, 1, 3)
    rows, cols = _tile_index()
    frag = (tiles[:, :, rows, cols] & 0xFF).astype(np.uint32)  # [tn, tk, lane, byte]: two's complement bytes
    if bits == 8:
        shifts = (8 * np.arange(4)).astype(np.uint32)
        return np.ascontiguousarray(np.bitwise_or.reduce(frag.reshape(*frag.shape[:3], 4, 4) << shifts, axis=-1))
    nib = frag & np.uint32(0xF)
    reg = nib.reshape(*nib.shape[:3], 4, 4)  # [.., register r, byte t]
    shifts = (4 * (2 * np.arange(4)[None, :] + np.arange(4)[:, None] % 2)).astype(np.uint32)  # nibble 2t + r%2
    words = np.zeros((*nib.shape[:3], 2), dtype=np.uint32)
    for r in range(4):
        words[..., r // 2] |= np.bitwise_or.reduce(reg[..., r, :] << shifts[r], axis=-1)
    return words


def from_s8_layout(words: np.ndarray, bits: int) -> np.ndarray:
    """Inverse of :func:`to_s8_layout`: signed int8 codes ``[N, K]``."""
    words = np.asarray(words, dtype=np.uint32)
    if bits not in WORDS or words.ndim != 4 or words.shape[2:] != (WARP, WORDS[bits]):
        raise QuantizationError(f"expected uint32 [N/16, K/32, 32, {WORDS.get(bits)}] fragments, got {words.shape}")
    tn, tk = words.shape[:2]
    if bits == 8:
        frag = (words[..., :, None] >> (8 * np.arange(4)).astype(np.uint32)) & np.uint32(0xFF)
        frag = frag.reshape(tn, tk, WARP, 16).astype(np.uint8).view(np.int8).astype(np.int64)
    else:
        frag = np.zeros((tn, tk, WARP, 16), dtype=np.int64)
        for r in range(4):
            for t in range(4):
                nib = (words[..., r // 2] >> np.uint32(4 * (2 * t + r % 2))) & np.uint32(0xF)
                frag[..., 4 * r + t] = np.where(nib >= 8, nib.astype(np.int64) - 16, nib)
    rows, cols = _tile_index()
    tiles = np.zeros((tn, tk, TILE_N, TILE_K), dtype=np.int64)
    tiles[:, :, rows, cols] = frag
    return tiles.transpose(0, 2, 1, 3).reshape(tn * TILE_N, tk * TILE_K).astype(np.int8)
