"""W4A16 on tensor cores: decode in shared memory, ldmatrix + mma.sync m16n8k16, fp32 accumulators.

Per K step of ``16 * k_inner``: activations are copied to shared memory with ``cp.async`` and the
packed int4 weights likewise (a quarter of the fp16 bytes); each thread then decodes whole packed words
with the ``lowbit_decode_u4x8`` intrinsic (half2 exponent trick and scale, one 16-byte store) into the
fp16 shared tile that ``ldmatrix`` feeds to ``mma.sync``. The copies run ``prefetch`` steps ahead of the math (software pipeline). Each warp
owns ``tile_m x tile_n`` 16x16 accumulator tiles; ``warps_m x warps_n`` warps share a block.
"""
from dataclasses import dataclass

from ..ops.w4a16 import CAST, DECODE, MATMUL
from . import intrinsics
from .rule import ScheduleRule, find_block


@dataclass(frozen=True)
class TensorCoreConfig:
    """Knobs of the W4A16 tensor-core schedule."""

    warps_m: int = 1
    warps_n: int = 4
    tile_m: int = 1
    tile_n: int = 2
    k_inner: int = 4  # K step = 16 * k_inner
    prefetch: int = 2  # K steps the async copies run ahead (pipeline stages - 1)


def _index_map(i, j):
    lane, local = intrinsics.tile_to_warp(i % 16, j % 16)
    return i // 16, j // 16, lane, local


class W4A16TensorCore(ScheduleRule):
    """Tensor-core rule for the W4A16 operator (fp16 decode)."""

    name = "w4a16-tensor-core"
    Config = TensorCoreConfig
    # warps_m and tile_m size the M padding and prefetch sits in a list annotation: both need plain ints.
    FIXED_WHEN_TUNING = ("warps_m", "tile_m", "prefetch")
    SPACE = {
        "warps_m": (1, 2, 4),
        "warps_n": (1, 2, 4, 8),
        "tile_m": (1, 2, 4),
        "tile_n": (1, 2, 4),
        "k_inner": (2, 4, 8),
        "prefetch": (1, 2, 3),
    }

    def schedule(self, sch, target, tunable=False, config=None):
        blocks = [find_block(sch, name) for name in (DECODE, MATMUL, CAST)]
        if any(block is None for block in blocks):
            return False
        if sch.get(blocks[0]).writes[0].source.dtype != "float16":
            return False
        intrinsics.register()
        decode, matmul, _ = blocks
        knob = self.knobs(sch, tunable, config)
        self._pad(sch, matmul, knob)
        outer, inner, loops = self._tile(sch, matmul, knob)
        self._fetch(sch, outer, decode, loops, knob)
        staged = self._tensorize(sch, outer, inner, loops)
        self._epilogue(sch, staged)
        sch.annotate(loops["k0"], "pragma_import_c", intrinsics.DECODE_SOURCE)
        return True

    @staticmethod
    def _pad(sch, matmul, knob):
        """Pad M up to whole block tiles (padded rows read zeros; their results are dropped).

        N and K are not padded: the dispatcher picks N and K tiles that divide them.
        """
        sch.pad_einsum(matmul, [16 * knob["warps_m"] * knob["tile_m"], 16, 16])

    @staticmethod
    def _tile(sch, matmul, knob):
        i, j, k = sch.get_loops(matmul)
        i, i_tc = sch.split(i, [None, 16])
        j, j_tc = sch.split(j, [None, 16])
        k, k_tc = sch.split(k, [None, 16])
        sch.reorder(i, j, k, i_tc, j_tc, k_tc)
        outer = sch.blockize(i_tc)
        bi, wi, ti = sch.split(i, [None, knob["warps_m"], knob["tile_m"]])
        bj, wj, tj = sch.split(j, [None, knob["warps_n"], knob["tile_n"]])
        k0, k1 = sch.split(k, [None, knob["k_inner"]])
        sch.reorder(bi, bj, wi, wj, k0, k1, ti, tj)
        sch.bind(sch.fuse(bi, bj), "blockIdx.x")
        warp = sch.fuse(wi, wj)
        sch.bind(warp, "threadIdx.y")
        return outer, matmul, {"k0": k0, "k1": k1, "warp": warp}

    @staticmethod
    def _spread(sch, block, vec, knob):
        """Spread a copy block's loops over the block's threads with ``vec``-wide accesses."""
        fused = sch.fuse(*sch.get_loops(block)[-2:])
        _, wm, wn, tx, v = sch.split(fused, [None, knob["warps_m"], knob["warps_n"], 32, vec])
        sch.bind(tx, "threadIdx.x")
        sch.bind(sch.fuse(wm, wn), "threadIdx.y")
        sch.vectorize(v)

    @staticmethod
    def _decode_words(sch, decode, knob):
        """One thread decodes one packed word (8 weights) at a time with the fast-decode intrinsic."""
        symmetric = len(sch.get(decode).reads) == 2
        row, col = sch.get_loops(decode)[-2:]
        word, nibble = sch.split(col, [None, 8])
        words = sch.blockize(nibble)
        _, wm, wn, tx = sch.split(sch.fuse(row, word), [None, knob["warps_m"], knob["warps_n"], 32])
        sch.bind(tx, "threadIdx.x")
        sch.bind(sch.fuse(wm, wn), "threadIdx.y")
        sch.tensorize(words, intrinsics.DECODE_SYM if symmetric else intrinsics.DECODE_ASYM)

    def _fetch(self, sch, outer, decode, loops, knob):
        k0 = loops["k0"]
        a_shared = sch.cache_read(outer, 0, "shared.dyn")
        sch.compute_at(a_shared, k0)
        for producer in sch.get_producers(a_shared):
            sch.compute_inline(producer)
        sch.storage_align(a_shared, 0, axis=-2, factor=32, offset=8)
        self._spread(sch, a_shared, 8, knob)
        packed_shared = sch.cache_read(decode, 0, "shared.dyn")
        sch.set_scope(decode, 0, "shared.dyn")
        sch.compute_at(decode, k0)
        sch.compute_at(packed_shared, k0)
        self._spread(sch, packed_shared, 4, knob)
        sch.storage_align(decode, 0, axis=-2, factor=32, offset=8)
        self._decode_words(sch, decode, knob)
        ahead = knob["prefetch"]
        sch.annotate(k0, "software_pipeline_stage", [0, 0, ahead, ahead])
        sch.annotate(k0, "software_pipeline_order", [0, 1, 2, 3])
        sch.annotate(k0, "software_pipeline_async_stages", [0])

    @staticmethod
    def _tensorize(sch, outer, inner, loops):
        a_warp = sch.cache_read(outer, 0, "warp")
        b_warp = sch.cache_read(outer, 1, "warp")
        sch.compute_at(a_warp, loops["k1"])
        sch.compute_at(b_warp, loops["k1"])
        staged = sch.cache_write(outer, 0, "shared.dyn")
        acc = sch.cache_write(outer, 0, "warp")
        sch.reverse_compute_at(acc, loops["warp"])
        sch.reverse_compute_at(staged, loops["warp"])
        sch.decompose_reduction(outer, loops["k0"])
        init = sch.get_sblock(MATMUL + "_init")
        for block in (a_warp, b_warp, acc):
            row, col = sch.get_loops(block)[-2:]
            row_o, row_i = sch.split(row, [None, 16])
            col_o, col_i = sch.split(col, [None, 16])
            sch.reorder(row_o, col_o, row_i, col_i)
        sch.transform_layout(a_warp, ("write", 0), _index_map)
        sch.transform_layout(b_warp, ("write", 0), _index_map)
        sch.transform_layout(acc, ("read", 0), _index_map)
        cuda = intrinsics.load_tensor_intrinsics()
        sch.tensorize(sch.get_loops(a_warp)[-2], cuda.LDMATRIX_f16_A_DYN_INTRIN)
        sch.tensorize(sch.get_loops(b_warp)[-2], cuda.LDMATRIX_f16_B_TRANS_DYN_INTRIN)
        sch.tensorize(sch.get_loops(inner)[-3], cuda.MMA_f16f16f32_TRANS_B_INTRIN)
        sch.tensorize(sch.get_loops(init)[-2], cuda.MMA_fill_16x16_f32_INTRIN)
        sch.tensorize(sch.get_loops(acc)[-2], cuda.MMA_store_16x16_f32_shared_dyn_INTRIN_SIMPLE)
        return staged

    @staticmethod
    def _epilogue(sch, staged):
        """Inline the un-padding and the fp16 cast into the shared -> global copy and spread it."""
        consumers = sch.get_consumers(staged)
        while consumers:
            sch.reverse_compute_inline(consumers[0])
            consumers = sch.get_consumers(staged)
        fused = sch.fuse(*sch.get_loops(staged)[-2:])
        _, tx, vec = sch.split(fused, [None, 32, 4])
        sch.bind(tx, "threadIdx.x")
        sch.vectorize(vec)
