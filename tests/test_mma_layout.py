"""The pre-shuffled tensor-core weight layout: round trip, where each code lands, clear errors."""
import numpy as np
import pytest

from lowbit_tvm.errors import QuantizationError
from lowbit_tvm.quant import pack_int4
from lowbit_tvm.quant.mma_layout import (
    fragment_nibble,
    fragment_position,
    from_mma_layout,
    nibble_of,
    to_mma_layout,
)


def _codes(n, k, seed=None):
    return np.random.default_rng(seed).integers(0, 16, (n, k)).astype(np.uint8)


@pytest.mark.parametrize("n,k", [(16, 16), (48, 64), (4160, 128)])
def test_round_trip(n, k):
    packed = pack_int4(_codes(n, k))
    tiled = to_mma_layout(packed)
    assert tiled.shape == (n // 16, k // 16, 32) and tiled.dtype == np.uint32
    assert tiled.flags.c_contiguous  # kernels take compact arrays only
    np.testing.assert_array_equal(from_mma_layout(tiled), packed)


def test_each_code_sits_in_its_lanes_fragment_register():
    codes = _codes(32, 48)
    tiled = to_mma_layout(pack_int4(codes))
    for n in range(32):
        for k in range(48):
            lane, register = fragment_position(n % 16, k % 16)
            nibble = fragment_nibble(register)
            assert nibble == nibble_of(n % 16, k % 16)
            assert (int(tiled[n // 16, k // 16, lane]) >> (4 * nibble)) & 15 == codes[n, k]


def test_every_lane_gets_eight_distinct_tile_elements():
    seen = {}
    for i in range(16):
        for j in range(16):
            lane, register = fragment_position(i, j)
            assert 0 <= lane < 32 and 0 <= register < 8
            assert (lane, register) not in seen
            seen[(lane, register)] = (i, j)
    assert len(seen) == 256


def test_register_pairs_share_a_row_and_sit_in_nibbles_p_and_p_plus_4():
    """What the CUDA decode relies on: pair p is one half2 with one scale row, nibbles p and p + 4."""
    for lane in range(32):
        rows = {}
        for i in range(16):
            for j in range(16):
                where = fragment_position(i, j)
                if where[0] == lane:
                    rows[where[1]] = i
        for p in range(4):
            assert rows[2 * p] == rows[2 * p + 1] == lane // 4 + 8 * (p // 2)
            assert (fragment_nibble(2 * p), fragment_nibble(2 * p + 1)) == (p, p + 4)


def test_registers_are_the_mma_sync_b_fragments():
    """PTX's m16n8k16 B fragment: lane t holds K = 2 (t % 4) + {0, 1} (+8) of column N = t // 4, per 8 rows."""
    for lane in range(32):
        for register in range(8):
            half_tile, k_high, k_low = register // 4, (register // 2) % 2, register % 2
            i = lane // 4 + 8 * half_tile
            j = 2 * (lane % 4) + k_low + 8 * k_high
            assert fragment_position(i, j) == (lane, register)


def test_untileable_shapes_are_refused_clearly():
    with pytest.raises(QuantizationError, match="divisible by 16"):
        to_mma_layout(pack_int4(_codes(40, 64)))
    with pytest.raises(QuantizationError, match=r"\[N/16, K/16, 32\]"):
        from_mma_layout(np.zeros((4, 32), np.uint32))
