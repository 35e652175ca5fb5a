"""The tensor-core weight layout: int4 codes pre-shuffled offline into mma.sync B fragments.

``mma.sync.m16n8k16`` gives each of a warp's 32 lanes 8 values of a 16x16 (N x K) weight tile, at
positions that ``fragment_position`` describes. The tiled layout stores, for each 16x16 tile, one uint32
word per lane holding exactly that lane's 8 codes, so a kernel loads one 4-byte word per lane and tile and
decodes it in registers straight into the fragment: no shared-memory round trip of decoded weights and no
``ldmatrix``.

Layout: uint32 ``[N // 16, K // 16, 32]``; word ``[tn, tk, lane]`` holds the code of fragment register
``r`` (0..7) of that lane in nibble ``fragment_nibble(r)``. Registers are numbered as the hardware uses
them: ``mma.sync`` on the tile's first 8 rows reads registers 0-3 (K 0-7 then K 8-15), on its last 8 rows
registers 4-7. (TVM's ldmatrix/mma intrinsics name the warp buffer with another index map,
``4 * (j // 8) + 2 * (i // 8) + j % 2``, but its ldmatrix fills the registers in the order here, and its
mma reads them so: the numbering here is what the registers really hold.) Register pair ``(2p, 2p + 1)`` sits in nibbles
``p`` and ``p + 4`` so that one shift and one mask put a pair into the two halves of a ``half2``; both
belong to tile row ``lane // 4 + 8 * (p // 2)``.

All helpers use only ``+ * // %`` so they work on Python ints, NumPy arrays and TVM expressions alike.
"""
from __future__ import annotations

import numpy as np

from ..errors import QuantizationError
from .int4 import CODES_PER_WORD, pack_int4, unpack_int4

TILE = 16
WARP = 32
REGISTERS = 8


def fragment_position(i, j):
    """Lane and register of element ``(i, j)`` (row = output feature, column = K) of a 16x16 tile."""
    lane = 4 * (i % 8) + (j % 8) // 2
    register = 4 * (i // 8) + 2 * (j // 8) + j % 2
    return lane, register


def fragment_nibble(register):
    """Nibble of the lane's word that holds fragment ``register``."""
    return register // 2 + 4 * (register % 2)


def nibble_of(i, j):
    """Nibble holding element ``(i, j)`` of a tile, straight from its position."""
    return 2 * (i // 8) + j // 8 + 4 * (j % 2)


def _tile_index():
    """For each (lane, nibble): the (i, j) of the tile element stored there."""
    rows = np.zeros((WARP, CODES_PER_WORD), dtype=np.int64)
    cols = np.zeros((WARP, CODES_PER_WORD), dtype=np.int64)
    for i in range(TILE):
        for j in range(TILE):
            lane, register = fragment_position(i, j)
            rows[lane, fragment_nibble(register)] = i
            cols[lane, fragment_nibble(register)] = j
    return rows, cols


def _check_tileable(shape) -> tuple:
    n, k = shape
    if n % TILE or k % TILE:
        raise QuantizationError(
            f"the tensor-core layout needs N and K divisible by {TILE}, got N={n}, K={k}; "
            "pad the weight with zero rows/columns first"
        )
    return n, k


def to_mma_layout(packed: np.ndarray) -> np.ndarray:
    """Re-pack ``[N, K // 8]`` row-packed codes (``pack_int4``'s layout) into ``[N/16, K/16, 32]`` tiles."""
    packed = np.asarray(packed)
    codes = unpack_int4(packed)
    n, k = _check_tileable(codes.shape)
    tiles = codes.reshape(n // TILE, TILE, k // TILE, TILE).transpose(0, 2, 1, 3)
    rows, cols = _tile_index()
    per_lane = tiles[:, :, rows, cols].astype(np.uint32)  # [tn, tk, lane, nibble]
    shifts = (4 * np.arange(CODES_PER_WORD)).astype(np.uint32)
    return np.ascontiguousarray(np.bitwise_or.reduce(per_lane << shifts, axis=-1), dtype=np.uint32)


def from_mma_layout(tiled: np.ndarray) -> np.ndarray:
    """Inverse of ``to_mma_layout``: ``[N/16, K/16, 32]`` tiles back to ``[N, K // 8]`` row packing."""
    tiled = np.asarray(tiled, dtype=np.uint32)
    if tiled.ndim != 3 or tiled.shape[2] != WARP:
        raise QuantizationError(f"expected uint32 [N/16, K/16, 32] tiles, got shape {tiled.shape}")
    tn, tk, _ = tiled.shape
    shifts = (4 * np.arange(CODES_PER_WORD)).astype(np.uint32)
    per_lane = (tiled[..., None] >> shifts) & np.uint32(15)
    rows, cols = _tile_index()
    tiles = np.zeros((tn, tk, TILE, TILE), dtype=np.uint8)
    tiles[:, :, rows, cols] = per_lane
    codes = tiles.transpose(0, 2, 1, 3).reshape(tn * TILE, tk * TILE)
    return pack_int4(codes)
