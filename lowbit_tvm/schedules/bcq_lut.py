"""BCQ LUT-GEMM on CUDA cores: lane-private lookup tables in shared memory, K split over lanes and blocks.

A K tile is ``words`` plane words (``32 * words`` activations). Lane ``w`` of batch row ``i`` owns word ``w``
of the tile, so a warp reads a row's plane words as one coalesced segment, and its tables (4 tables of 256
signed sums, one per byte of its word) are stored lane-minor (``[byte][pattern][i][w]``): lane ``(i, w)``
always hits bank ``i * words + w`` and the random lookups are free of bank conflicts (for ``M * words == 32``).
Every block builds its K tile's tables once (16-entry half tables from the activations, one thread per 4
activations; then one add per 256-table entry), then each of its ``warps`` warps walks ``rows`` output rows,
accumulating per lane in registers (``prefetch`` rows' plane words, alphas and offsets loaded together); ``tiles``
K tiles per block reuse those registers. The lanes' partial sums of a row are reduced with warp shuffles, the K
slices (``blockIdx.y``) by a second small kernel that also casts to fp16.

Shared memory: ``M * words * 4.5`` KiB (1 KiB per 256-entry fp32 table plus the half tables and word sums),
144 KiB for M = 1: one block per SM, which is why blocks are big (up to 32 warps, 1024 rows).

Cost per row and K tile of a warp (M = 1, 3 bits, ~105 warp instructions measured): 12 lookups (shift, mask,
address, LDS, FFMA each), 3 plane + 4 alpha/offset loads, and the shuffle reduction (~18). ncu on H100
(8192 x 57344, words=32): no bank-conflict finding, ~2 IPC, latency-bound (one block of 16-32 warps per SM,
long-scoreboard stalls), DRAM at ~50 % of peak.
"""
from dataclasses import dataclass

from ..ops.bcq_lut import BYTES, CAST, LUT, LUT_HALF, MATMUL, WORD_SUM
from .rule import ScheduleRule, find_block, loops_inside


@dataclass(frozen=True)
class BCQLutConfig:
    """Knobs of the BCQ LUT-GEMM schedule."""

    words: int = 32  # K tile in plane words (lanes per batch row); the op's k_multiple is 32 * words
    warps: int = 32  # warps per block (groups of M * words lanes), sharing one set of tables
    rows: int = 32  # output rows per warp: a block covers warps * rows rows of one K slice
    tiles: int = 1  # K tiles per block (tables rebuilt per tile); K slice = tiles * words * 32
    prefetch: int = 8  # rows whose plane words, alphas and offsets are loaded into registers together (0: off)
    sum_threads: int = 256  # threads per block of the slice-summing kernel

    @property
    def k_multiple(self) -> int:
        """The K tile in activations: the op's ``k_multiple``."""
        return self.words * 32


def _tiles(words_total: int, words: int, target: int) -> int:
    """The most K tiles per block, at most ``target``, that divide the K tiles."""
    return next(t for t in range(max(1, target), 0, -1) if (words_total // words) % t == 0)


def _block_rows(n: int, slices: int, min_blocks: int = 64) -> int:
    """Rows per block: the largest of 1024, 512, ... dividing N whose grid still has ``min_blocks`` blocks.

    Each block builds its K tile's tables (32K entries per 1024 activations), so big blocks amortize the build;
    measured on H100 (M=1, 3-bit), bigger blocks won even below one block per SM: 4096 x 4096 20.9 us with 256
    rows (64 blocks) vs 37.7 us with 64 rows (256 blocks); 11008 x 4096 27.7 us with 512 rows (88 blocks) vs
    50.2 us with 256 rows; 28672 x 8192 69.1 us with 1024 rows (224 blocks) vs 80.3 us with 512 rows.
    """
    divisors = [r for r in (1024, 512, 256, 128, 64, 32, 16, 8) if n % r == 0]
    if not divisors:
        raise ValueError(f"BCQ LUT-GEMM needs N divisible by 8, got N={n}")
    return next((r for r in divisors if (n // r) * slices >= min_blocks), divisors[-1])


def bcq_lut_config(m: int, n: int, k: int) -> BCQLutConfig:
    """A config for an ``M x N x K`` workload.

    ``M * words`` lanes fill a warp (M rounded up to a power of two); K slices of >= 1024 activations where K
    allows (so the fp32 slice workspace stays small); up to 32 warps and 1024 rows per block (see
    ``_block_rows``), 16 or 32 rows per warp (accumulator registers: 64 per thread at 1024 threads).
    """
    words = max(1, 32 // (1 << max(0, m - 1).bit_length()))
    tile = words * 32
    total = -(-k // tile) * words
    tiles = _tiles(total, words, 32 // words)
    block_rows = _block_rows(n, total // (words * tiles))
    warps = max(1, min(32, block_rows // 16))
    rows = block_rows // warps
    return BCQLutConfig(words=words, warps=warps, rows=rows, tiles=tiles, prefetch=min(8, rows))


class BCQLut(ScheduleRule):
    """CUDA rule for the BCQ LUT-GEMM operator (``lowbit_tvm.ops.bcq_lut``)."""

    name = "bcq-lut"
    Config = BCQLutConfig
    # words sizes the table layouts (index maps need plain ints) and must match the op's k_multiple.
    FIXED_WHEN_TUNING = ("words", "sum_threads", "prefetch")
    SPACE = {"words": (4, 8, 16, 32), "warps": (4, 8, 16, 32), "rows": (8, 16, 32, 64), "tiles": (1, 2, 4),
             "sum_threads": (256,), "prefetch": (0, 4, 8)}

    def schedule(self, sch, target, tunable=False, config=None):
        blocks = [find_block(sch, name) for name in (LUT_HALF, LUT, WORD_SUM, MATMUL, CAST)]
        if any(block is None for block in blocks):
            return False
        half, lut, word_sum, matmul, cast = blocks
        knob = self.knobs(sch, tunable, config)
        m = int(sch.get(sch.get_loops(matmul)[0]).extent)
        words = knob["words"]
        total_words = int(sch.get(sch.get_loops(matmul)[2]).extent)
        if total_words % words:
            raise ValueError(f"BCQ LUT-GEMM: padded K = {32 * total_words} is not a multiple of the K tile "
                             f"{32 * words}; build the op with k_multiple={32 * words}")
        lanes = self._split(sch, matmul, knob)
        loops = self._lanes(sch, lanes, knob)
        self._tables(sch, (half, lut, word_sum), loops, m, knob)
        self._reduce_lanes(sch, sch.get_consumers(lanes)[0], loops["bx"], knob)
        self._sum_slices(sch, matmul, cast, knob)
        return True

    @staticmethod
    def _split(sch, matmul, knob):
        """Two rfactors: K slices (``[slices, M, N]`` fp32 workspace) and lanes (per-thread registers)."""
        _, _, w, _, _ = sch.get_loops(matmul)
        k_slice, _, lane = sch.split(w, [None, knob["tiles"], knob["words"]])
        sliced = sch.rfactor(k_slice, factor_axis=0)
        lane = sch.get_loops(sliced)[4]
        return sch.rfactor(lane, factor_axis=0)

    @staticmethod
    def _lanes(sch, lanes, knob):
        """Per-lane partial sums: grid (row tile, K slice), threads (warp, batch row, word), rows in registers."""
        i, j, k_slice, tile, w, b, jb = sch.get_loops(lanes)
        bx, warp, row = sch.split(j, [None, knob["warps"], knob["rows"]])
        sch.reorder(k_slice, bx, tile, warp, i, w, row, b, jb)
        sch.bind(k_slice, "blockIdx.y")
        sch.bind(bx, "blockIdx.x")
        for loop, axis in ((warp, "threadIdx.z"), (i, "threadIdx.y"), (w, "threadIdx.x")):
            sch.bind(loop, axis)
        sch.set_scope(lanes, 0, "local")
        sch.unroll(jb)
        sch.unroll(b)
        init = sch.decompose_reduction(lanes, tile)
        for loop, axis in zip(sch.get_loops(init)[2:5], ("threadIdx.z", "threadIdx.y", "threadIdx.x")):
            sch.bind(loop, axis)
        BCQLut._prefetch(sch, lanes, row, knob["prefetch"])
        return {"bx": bx, "tile": tile}

    @staticmethod
    def _prefetch(sch, lanes, row, rows):
        """Load ``rows`` rows' plane words, alphas and offsets into registers before their lookups, so that
        a warp has many loads in flight instead of one row's."""
        extent = sch.get(row).extent
        if not rows or (isinstance(rows, int) and int(extent) % rows):
            sch.unroll(row)
            return
        outer, inner = sch.split(row, [None, rows])
        sch.unroll(outer)
        sch.unroll(inner)
        names = [region.source.name for region in sch.get(lanes).reads]
        for name in ("P", "alphas", "offsets"):
            cache = sch.cache_read(lanes, names.index(name), "local")
            sch.compute_at(cache, outer, preserve_unit_loops=True)
            for loop in loops_inside(sch, cache, outer):
                sch.unroll(loop)

    def _tables(self, sch, blocks, loops, m, knob):
        """The K tile's tables in shared memory, lane-minor, built by all the block's threads."""
        half, lut, word_sum = blocks
        words, tile = knob["words"], loops["tile"]
        sch.compute_at(lut, tile, preserve_unit_loops=True)
        sch.compute_at(word_sum, tile, preserve_unit_loops=True)
        sch.compute_at(half, tile, preserve_unit_loops=True)
        # Only the big tables are dynamic shared memory: buffers merged into the one dynamic buffer look
        # alike to the sync planner, which would then sync inside the table-building loop.
        sch.set_scope(lut, 0, "shared.dyn")
        sch.set_scope(half, 0, "shared")
        sch.set_scope(word_sum, 0, "shared")
        sch.transform_layout(
            lut, ("write", 0), lambda i, c, p: (c // (BYTES * words), c % BYTES, p, i, c // BYTES % words)
        )
        sch.transform_layout(
            half, ("write", 0), lambda i, h, q: (h // (8 * words), h // 2 % BYTES, h % 2, q, i, h // 8 % words)
        )
        sch.transform_layout(word_sum, ("write", 0), lambda i, w: (w // words, i, w % words))
        i, c, p = loops_inside(sch, lut, tile)
        w, jb = sch.split(c, [words, BYTES])
        sch.reorder(jb, p, i, w)
        self._spread(sch, sch.fuse(jb, p, i, w), m, knob)
        i, h, q = loops_inside(sch, half, tile)
        w, jb, hh = sch.split(h, [words, BYTES, 2])
        sch.reorder(jb, hh, i, w, q)
        sch.unroll(q)  # one thread loads its 4 activations once and writes their 16 sums
        self._spread(sch, sch.fuse(jb, hh, i, w), m, knob)
        i, w = loops_inside(sch, word_sum, tile)
        self._spread(sch, sch.fuse(i, w), m, knob)

    @staticmethod
    def _spread(sch, fused, m, knob):
        """Spread a table-building loop over all the block's threads, lane index fastest."""
        _, warp, i, w = sch.split(fused, [None, knob["warps"], m, knob["words"]])
        for loop, axis in ((warp, "threadIdx.z"), (i, "threadIdx.y"), (w, "threadIdx.x")):
            sch.bind(loop, axis)

    @staticmethod
    def _reduce_lanes(sch, sliced, bx, knob):
        """Sum each row's lane partials with warp shuffles into the K-slice workspace."""
        sch.reverse_compute_at(sliced, bx, preserve_unit_loops=True)
        w, _, i, j = sch.get_loops(sliced)[-4:]
        warp, row = sch.split(j, [knob["warps"], knob["rows"]])
        sch.reorder(warp, i, row, w)
        for loop, axis in ((warp, "threadIdx.z"), (i, "threadIdx.y"), (w, "threadIdx.x")):
            sch.bind(loop, axis)

    @staticmethod
    def _sum_slices(sch, matmul, cast, knob):
        """Second kernel: each thread sums one output's K slices and casts it to fp16."""
        bx, tx = sch.split(sch.fuse(*sch.get_loops(cast)), [None, knob["sum_threads"]])
        sch.bind(bx, "blockIdx.x")
        sch.bind(tx, "threadIdx.x")
        sch.compute_at(matmul, tx)
        sch.set_scope(matmul, 0, "local")
