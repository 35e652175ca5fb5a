"""Which W4A16 rule and default config serve a given batch size and shape."""
import math
from dataclasses import asdict, dataclass

from ..errors import LowbitError
from ..ops.w4a16 import W4A16Op
from .rule import ScheduleRule
from .w4a16_gemv import GemvConfig, W4A16Gemv, fits_words
from .w4a16_mma_gemv import MmaGemvConfig, W4A16MmaGemv, fits_tiles
from .w4a16_tensor_core import TensorCoreConfig, W4A16TensorCore

# The CUDA-core GEMV serves up to GEMV_MAX_M rows, but is preferred only up to GEMV_PREFERRED_M: from
# 2 rows on, the tensor-core kernel (rows padded to 16) is as fast or faster wherever it applies (H100,
# benchmarks/results/.../bcq.json's w4a16_us vs w4a16.json at M=16: 8192x57344 M=2 GEMV 135 us, M=8 475 us,
# tensor cores at M=16 126 us; 11008x4096 M=8 GEMV 253 us vs 27 us). Above GEMV_PREFERRED_M the GEMV
# only serves shapes the tensor cores cannot (N % 16 or K % 32 not zero).
GEMV_MAX_M = 8
GEMV_PREFERRED_M = 1
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


# Per batch size (rows up to the key): (warps_m, tile_m), then (warps_n, tile_n) choices best first.
# From H100 sweeps with benchmarks/sweep_w4a16.py. Above 64 rows too, 64-row blocks of 4 warps (each 64x32)
# with M-block rasterization were the fastest or within 3% of it at M=128 and 256 on the six Llama shapes
# (one exception: 28672x8192 at M=256, 10% behind); in the bench 0-24% faster than the former 128x128 blocks
# of 8 warps, except 28672x8192 (1-4% slower).
_M_TILES = ((16, (1, 1)), (32, (1, 2)), (64, (1, 4)), (None, (1, 4)))
# Dynamic M above 64 rows keeps the former 128-row blocks of 8 warps: without a static M the blocks cannot be
# rasterized, and the 64-row blocks were up to 1.7x slower there (28672x8192 at M=128: 266.9 -> 460.0 us).
_DYNAMIC_LARGE_M_TILES = (2, 4)
_N_TILES = {16: ((4, 1), (2, 1), (1, 1)), 32: ((4, 1), (2, 1), (1, 1)),
            64: ((4, 2), (4, 1), (2, 1), (1, 1)), None: ((4, 2), (2, 2), (4, 1), (2, 1), (1, 1))}


def _bucket(m: int):
    for bound, _ in _M_TILES:
        if bound is None or m <= bound:
            return bound
    return None


def _n_tiles(n: int, bucket) -> tuple:
    for warps_n, tile_n in _N_TILES[bucket]:
        if (n // 16) % (warps_n * tile_n) == 0:
            return warps_n, tile_n
    return 1, 1


def _k_plan(k_tiles: int, blocks: int, wanted: int, inner_choices) -> tuple:
    """``(split_k, k_inner)``: the fewest K slices (up to 8) that give about ``wanted`` blocks.

    Each slice must hold 3+ whole K steps of ``16 * k_inner`` (the pipeline's depth); ``k_inner`` is the
    first of ``inner_choices`` that fits.
    """
    plan_ = None
    for splits in (1, 2, 4, 8):
        fitting = [i for i in inner_choices if k_tiles % (splits * i) == 0 and k_tiles // (splits * i) >= 3]
        if not fitting:
            continue
        plan_ = (splits, fitting[0])
        if blocks * splits >= wanted:
            break
    return plan_ or (1, 2)


def tensor_core_config(op: W4A16Op, m: int | None = None) -> TensorCoreConfig:
    """The default tensor-core config for ``op`` at ``m`` rows (default ``op.m``; 64 for dynamic M).

    Tiles follow the batch size; K is split (``split_k``) when the tiles alone give too few blocks to
    keep every SM streaming weights (two waves for memory-bound batches up to 64 rows, one above).

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
    m = m or op.m or 64
    bucket = _bucket(m)
    warps_m, tile_m = dict(_M_TILES)[bucket]
    if op.m is None and bucket is None:
        warps_m, tile_m = _DYNAMIC_LARGE_M_TILES
    warps_n, tile_n = _n_tiles(op.n, bucket)
    blocks = -(-m // (16 * warps_m * tile_m)) * (op.n // (16 * warps_n * tile_n))
    wanted = 2 * SM_COUNT if m <= 64 else SM_COUNT
    inner_choices = (8, 4) if m <= 32 else (4,)
    split, k_inner = _k_plan(op.k // 16, blocks, wanted, inner_choices)
    # raster 8: up to 8 M blocks of one weight tile run side by side and share it through L2
    return TensorCoreConfig(warps_m, warps_n, tile_m, tile_n, k_inner, 2, split, 8)


# Word-GEMV configs (tx, ty, vec, unroll, rows, stream), best first; the first that tiles N and K/8 exactly
# is used, else the GEMV on tensor-core weights, else the flat GEMV. Only 32 lanes x 4 words per step: with
# fewer words per step (K=11008: K/8 = 32 * 43) the word GEMV was slower than the flat one in an H100 sweep
# at M=1 (benchmarks/NOTES.md, v6), and the flat one slower than the GEMV on tensor-core weights (v7).
# Streaming weight loads (stream=1) were faster on all five shapes it tiles in the v8 sweep (H100, M=1):
# 4096x4096 10.1 -> 9.5 us, 4096x12288 16.4 -> 15.6, 4096x22016 26.6 -> 24.0, 8192x57344 96.3 -> 93.6,
# 28672x8192 56.6 -> 51.7.
GEMV_WORD_CONFIGS = (
    GemvConfig(32, 4, 32, 64, 2, stream=1),
    GemvConfig(32, 1, 32, 64, 2, stream=1),
    GemvConfig(32, 1, 32, 64, 1, stream=1),
)


def gemv_plan(op: W4A16Op) -> Plan:
    """The GEMV plan for ``op``: the word-dot op with the first fitting ``GEMV_WORD_CONFIGS`` entry, else
    ``mma_gemv_plan`` (the GEMV on ``"mma"`` weights) where it tiles the shape, else the flat op (fp32
    decode, any shape) with ``GemvConfig()``."""
    for config in GEMV_WORD_CONFIGS:
        if fits_words(op.n, op.k // 8, **asdict(config)):
            return Plan(W4A16Gemv(), op.with_layout("rows").with_reduction("word"), config)
    return mma_gemv_plan(op) or Plan(
        W4A16Gemv(), op.with_decode("float32").with_layout("rows").with_reduction("flat"), GemvConfig()
    )


# GEMV on tensor-core-layout weights: MMA_GEMV_KY half-warps per block (256 threads) is the best config or
# within 12 % of it on the six Llama shapes of an H100 sweep (benchmarks/results/.../mma_gemv.json), as long
# as the grid keeps MMA_GEMV_MIN_THREADS threads streaming weights: 11008x4096 has only 256 row tiles, and
# its 688 K tiles split into 8 half-warps (34.8 us) or 43 (18.1 us), not 16.
# Load knobs: contiguous K ranges per lane octet, streaming loads, two steps loaded together and no unrolling
# (MMA_GEMV_LOADS) were best or within 4 % of the best config on all six shapes of the v8 sweep (H100, M=1,
# every kernel checked against float64): against the earlier default (interleaved, plain loads, one step,
# unroll 64) 4096x4096 10.5 -> 9.8 us, 4096x12288 19.6 -> 16.4, 4096x22016 29.2 -> 25.0, 11008x4096
# 18.0 -> 16.8, 8192x57344 96.3 -> 93.1, 28672x8192 57.9 -> 51.3. Shapes whose K tiles do not split into two
# steps per half-warp keep one step.
MMA_GEMV_KY = 16
MMA_GEMV_MIN_THREADS = 64 * 1024
MMA_GEMV_MAX_KY = 64
MMA_GEMV_LOADS = {"tiles": 2, "unroll": 0, "contiguous": 1, "stream": 1}


def mma_gemv_config(n_tiles: int, k_tiles: int) -> MmaGemvConfig | None:
    """The default GEMV config for ``n_tiles`` x ``k_tiles`` 16x16 weight tiles, or None when K/16 is odd."""
    fitting = [ky for ky in range(1, MMA_GEMV_MAX_KY + 1) if fits_tiles(n_tiles, k_tiles, ky, 1, 1)]
    if not fitting:
        return None
    busy = [ky for ky in fitting if n_tiles * ky * 16 >= MMA_GEMV_MIN_THREADS] or [max(fitting)]
    ky = min(busy, key=lambda ky: abs(math.log2(ky / MMA_GEMV_KY)))
    loads = dict(MMA_GEMV_LOADS)
    if not fits_tiles(n_tiles, k_tiles, ky, 1, loads["tiles"]):
        loads["tiles"] = 1
    return MmaGemvConfig(ky=ky, **loads)


def mma_gemv_plan(op: W4A16Op) -> Plan | None:
    """The GEMV plan on ``"mma"`` weights for a static small ``op.m`` (what a model's single-token decode
    calls: the same weights as its tensor-core kernels), or None when the shape does not tile."""
    if op.m is None or op.n % 16 or op.k % 16:
        return None
    config = mma_gemv_config(op.n // 16, op.k // 16)
    if config is None:
        return None
    return Plan(W4A16MmaGemv(), op.with_layout("mma").with_reduction("word"), config)


def _tensor_cores_fit(op: W4A16Op) -> bool:
    return op.n % 16 == 0 and op.k % 32 == 0


def plan(op: W4A16Op) -> Plan:
    """Choose the rule for ``op``: GEMV for one row (and up to ``GEMV_MAX_M`` rows of shapes the tensor
    cores cannot serve), tensor cores otherwise and for dynamic M.

    The returned ``plan.op`` carries the decode dtype, the weight layout and the reduction that rule reads:
    ``"rows"`` for the row GEMV (word dot products where the shape allows, see ``gemv_plan``), ``"mma"``
    (pre-shuffled fragments) for the tensor cores and for the GEMV on them (shapes the word GEMV does not
    tile, such as K=11008).
    """
    if op.m is not None and op.m <= GEMV_MAX_M and (op.m <= GEMV_PREFERRED_M or not _tensor_cores_fit(op)):
        return gemv_plan(op)
    tc_op = op.with_decode("float16").with_layout("mma").with_reduction("flat")
    return Plan(W4A16TensorCore(), tc_op, tensor_core_config(op))
