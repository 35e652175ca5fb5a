"""Which W4A16 rule and default config serve a given batch size and shape."""
from dataclasses import dataclass

from ..errors import LowbitError
from ..ops.w4a16 import W4A16Op
from .rule import ScheduleRule
from .w4a16_gemv import GemvConfig, W4A16Gemv
from .w4a16_tensor_core import TensorCoreConfig, W4A16TensorCore

# Up to this many rows the CUDA-core GEMV streams the weights once for all rows; above it the
# tensor cores win.
GEMV_MAX_M = 8
# Blocks wanted in flight: the H100's multiprocessor count.
SM_COUNT = 132


class ShapeError(LowbitError, ValueError):
    """A shape the kernels cannot serve."""


@dataclass(frozen=True)
class Plan:
    """A rule, the op variant it schedules and its default config."""

    rule: ScheduleRule
    op: W4A16Op
    config: object


def _largest_dividing(n: int, candidates) -> int | None:
    for value in sorted(candidates, reverse=True):
        if n % value == 0:
            return value
    return None


def _block_n_tiles(n: int) -> int:
    """16-column tiles per block: the widest (up to 128 columns) that still gives every SM a block."""
    fitting = [t for t in (8, 4, 2) if (n // 16) % t == 0]
    for tiles in fitting:
        if n // (16 * tiles) >= SM_COUNT:
            return tiles
    return fitting[-1] if fitting else 1


def tensor_core_config(op: W4A16Op) -> TensorCoreConfig:
    """The default tensor-core config for ``op`` (static or dynamic M).

    Raises
    ------
    ShapeError
        If N is not a multiple of 16 or K not a multiple of 32.
    """
    if op.n % 16 != 0 or op.k % 32 != 0:
        raise ShapeError(
            f"the W4A16 tensor-core kernel needs N % 16 == 0 and K % 32 == 0, got N={op.n}, K={op.k}; "
            f"pad the weight with zero rows/columns or use M <= {GEMV_MAX_M} (GEMV path)"
        )
    m = op.m or 64
    warps_m, tile_m = (1, 1) if m <= 16 else (1, 2) if m <= 32 else (2, 2) if m <= 64 else (2, 4)
    tile_n_16 = _block_n_tiles(op.n)
    warps_n = min(4, tile_n_16)
    tile_n = tile_n_16 // warps_n
    k_inner = _largest_dividing(op.k // 16, (4, 2))
    return TensorCoreConfig(warps_m, warps_n, tile_m, tile_n, k_inner, 2)


def plan(op: W4A16Op) -> Plan:
    """Choose the rule for ``op``: GEMV up to ``GEMV_MAX_M`` rows, tensor cores above."""
    if op.m is not None and op.m <= GEMV_MAX_M:
        return Plan(W4A16Gemv(), op.with_decode("float32"), GemvConfig())
    return Plan(W4A16TensorCore(), op.with_decode("float16"), tensor_core_config(op))
