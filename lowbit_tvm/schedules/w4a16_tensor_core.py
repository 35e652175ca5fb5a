"""W4A16 on tensor cores: weights decoded in registers straight into mma.sync B fragments.

The weights come pre-shuffled offline (``layout="mma"``, see ``lowbit_tvm.quant.mma_layout``): each 16x16
tile is 32 words, one per lane, holding exactly that lane's 8 fragment values. Per K step of
``16 * k_inner``: activations and packed weights (a quarter of the fp16 bytes) are copied to shared memory
with ``cp.async``, ``prefetch`` steps ahead of the math (software pipeline). Per 16-deep slice each warp
loads its activation fragments with ``ldmatrix``, and each lane reads one word per weight tile and decodes
it in registers (``lowbit_decode_mma``: half2 exponent trick and scale) right before ``mma.sync``
m16n8k16 with fp32 accumulators. Decoded weights never touch shared memory. Each warp owns
``tile_m x tile_n`` 16x16 accumulator tiles; ``warps_m x warps_n`` warps share a block. With static M,
``raster`` M blocks of one weight tile take consecutive block indices (the weight tile is read from HBM
once, the others hit L2); results are staged through a padded shared tile on their way out.
"""
from dataclasses import dataclass

from ..ops.w4a16 import CAST, DECODE, MATMUL
from ..tvm_api import tirx
from . import intrinsics
from .rule import ScheduleRule, find_block, spread_copy, spread_store


@dataclass(frozen=True)
class TensorCoreConfig:
    """Knobs of the W4A16 tensor-core schedule."""

    warps_m: int = 1
    warps_n: int = 4
    tile_m: int = 1
    tile_n: int = 2
    k_inner: int = 4  # K step = 16 * k_inner
    prefetch: int = 2  # K steps the async copies run ahead (pipeline stages - 1)
    split_k: int = 1  # K slices computed by separate blocks, summed by a second small kernel
    raster: int = 1  # M blocks of one weight tile on consecutive blockIdx.x (they share it through L2)


def _index_map(i, j):
    lane, local = intrinsics.tile_to_warp(i % 16, j % 16)
    return i // 16, j // 16, lane, local


def _index_map_sliced(s, i, j):
    """``_index_map`` of a split-K accumulator ``[slice, M, N]``."""
    return (s, *_index_map(i, j))


def _rasterize(sch, bi, bj, raster):
    """The fused block loop over (M block ``bi``, N block ``bj``).

    Groups of up to ``raster`` M blocks (the largest count that divides a static number of M blocks)
    take consecutive block indices per N block, so the blocks that read one weight tile run together
    and all but the first read it from L2 instead of HBM (the weights are the large operand; a group's
    activation rows stay in L2). Dynamic M keeps M-major order.
    """
    extent = sch.get(bi).extent
    group = max(g for g in range(1, raster + 1) if extent.value % g == 0) if isinstance(extent, tirx.IntImm) else 1
    if group == 1:
        return sch.fuse(bi, bj)
    bo, bi = sch.split(bi, [None, group])
    sch.reorder(bo, bj, bi)
    return sch.fuse(bo, bj, bi)


class W4A16TensorCore(ScheduleRule):
    """Tensor-core rule for the W4A16 operator (fp16 decode, weights in the ``"mma"`` layout)."""

    name = "w4a16-tensor-core"
    Config = TensorCoreConfig
    # warps_m and tile_m size the M padding, prefetch sits in a list annotation and split_k decides
    # whether the function has a second (reduction) kernel and raster is fitted to the M blocks: all need plain
    # ints.
    FIXED_WHEN_TUNING = ("warps_m", "tile_m", "prefetch", "split_k", "raster")
    SPACE = {
        "warps_m": (1, 2, 4),
        "warps_n": (2, 4, 8),  # warps_n = tile_n = 1 changes the loop structure: traces would not replay
        "tile_m": (1, 2, 4),
        "tile_n": (1, 2, 4),
        "k_inner": (2, 4, 8),
        "prefetch": (1, 2, 3),
        "split_k": (1, 2, 4, 8),
    }

    def schedule(self, sch, target, tunable=False, config=None):
        blocks = [find_block(sch, name) for name in (DECODE, MATMUL, CAST)]
        if any(block is None for block in blocks):
            return False
        decode_block = sch.get(blocks[0])
        if decode_block.writes[0].source.dtype != "float16":
            return False
        if len(decode_block.reads[0].source.shape) != 3:
            return False  # weights packed in rows: not the fragment layout this rule reads
        intrinsics.register()
        decode, matmul, _ = blocks
        knob = self.knobs(sch, tunable, config)
        self._pad(sch, matmul, knob)
        main = self._split_k(sch, matmul, knob["split_k"])
        outer, inner, loops = self._tile(sch, main, knob)
        self._fetch(sch, outer, decode, loops, knob)
        self._decode_fragments(sch, decode, len(decode_block.reads) == 2)
        staged = self._tensorize(sch, outer, inner, loops, main)
        if knob["split_k"] == 1:
            spread_store(sch, staged)
        else:  # fp32 tiles to the split-K workspace; a second kernel sums the slices
            spread_store(sch, staged, inline_consumers=False)
            self._sum_splits(sch, matmul)
        sch.annotate(loops["k0"], "pragma_import_c", intrinsics.DECODE_SOURCE)
        return True

    @staticmethod
    def _pad(sch, matmul, knob):
        """Pad M up to whole block tiles (padded rows read zeros; their results are dropped).

        N and K are not padded: the dispatcher picks N and K tiles that divide them.
        """
        sch.pad_einsum(matmul, [16 * knob["warps_m"] * knob["tile_m"], 16, 16])

    @staticmethod
    def _split_k(sch, matmul, splits):
        """With ``splits`` > 1: an rfactor block computing one K slice per ``blockIdx.y`` into an fp32
        ``[splits, M, N]`` workspace; ``matmul`` then only sums the slices. Returns the block to tile."""
        if splits == 1:
            return matmul
        i, j, k = sch.get_loops(matmul)
        k_split, _ = sch.split(k, [splits, None])
        return sch.rfactor(k_split, factor_axis=0)

    @staticmethod
    def _tile(sch, matmul, knob):
        loops = sch.get_loops(matmul)
        k_split = None
        if len(loops) == 4:  # split-K: (i, j, slice, k)
            i, j, k_split, k = loops
            sch.reorder(k_split, i, j, k)
        else:
            i, j, k = loops
        i, i_tc = sch.split(i, [None, 16])
        j, j_tc = sch.split(j, [None, 16])
        k, k_tc = sch.split(k, [None, 16])
        sch.reorder(i, j, k, i_tc, j_tc, k_tc)
        outer = sch.blockize(i_tc)
        bi, wi, ti = sch.split(i, [None, knob["warps_m"], knob["tile_m"]])
        bj, wj, tj = sch.split(j, [None, knob["warps_n"], knob["tile_n"]])
        k0, k1 = sch.split(k, [None, knob["k_inner"]])
        sch.reorder(bi, bj, wi, wj, k0, k1, ti, tj)
        sch.bind(_rasterize(sch, bi, bj, knob["raster"]), "blockIdx.x")
        if k_split is not None:
            sch.bind(k_split, "blockIdx.y")
        warp = sch.fuse(wi, wj)
        sch.bind(warp, "threadIdx.y")
        return outer, matmul, {"k0": k0, "k1": k1, "warp": warp}

    def _fetch(self, sch, outer, decode, loops, knob):
        """Activations and packed weights to shared memory per K step; weights decoded per 16-deep slice."""
        k0 = loops["k0"]
        a_shared = sch.cache_read(outer, 0, "shared.dyn")
        sch.compute_at(a_shared, k0)
        for producer in sch.get_producers(a_shared):
            sch.compute_inline(producer)
        sch.storage_align(a_shared, 0, axis=-2, factor=32, offset=8)
        spread_copy(sch, a_shared, k0, 8, knob["warps_m"], knob["warps_n"])
        sch.set_scope(decode, 0, "warp")
        sch.compute_at(decode, loops["k1"])
        packed_shared = sch.cache_read(decode, 0, "shared.dyn")
        sch.compute_at(packed_shared, k0)
        spread_copy(sch, packed_shared, k0, 4, knob["warps_m"], knob["warps_n"])
        ahead = knob["prefetch"]
        sch.annotate(k0, "software_pipeline_stage", [0, 0, ahead])
        sch.annotate(k0, "software_pipeline_order", [0, 1, 2])
        sch.annotate(k0, "software_pipeline_async_stages", [0])

    @staticmethod
    def _decode_fragments(sch, decode, symmetric):
        """Decode each 16x16 weight tile into the warp's B-fragment registers (``lowbit_decode_mma``)."""
        row, col = sch.get_loops(decode)[-2:]
        row_o, row_i = sch.split(row, [None, 16])
        col_o, col_i = sch.split(col, [None, 16])
        sch.reorder(row_o, col_o, row_i, col_i)
        sch.transform_layout(decode, ("write", 0), _index_map)
        sch.tensorize(row_i, intrinsics.DECODE_MMA_SYM if symmetric else intrinsics.DECODE_MMA_ASYM)

    @staticmethod
    def _tensorize(sch, outer, inner, loops, main):
        a_warp = sch.cache_read(outer, 0, "warp")
        sch.compute_at(a_warp, loops["k1"])
        staged = sch.cache_write(outer, 0, "shared.dyn")
        # Rows 8 floats apart in banks: the fragment stores (8 rows x 8 columns per warp) conflict at most 2-way.
        sch.storage_align(staged, 0, axis=-2, factor=32, offset=8)
        acc = sch.cache_write(outer, 0, "warp")
        sch.reverse_compute_at(acc, loops["warp"])
        sch.reverse_compute_at(staged, loops["warp"])
        sch.decompose_reduction(outer, loops["k0"])
        init = sch.get_sblock(sch.get(main).name_hint + "_init")
        for block in (a_warp, acc):
            row, col = sch.get_loops(block)[-2:]
            row_o, row_i = sch.split(row, [None, 16])
            col_o, col_i = sch.split(col, [None, 16])
            sch.reorder(row_o, col_o, row_i, col_i)
        sch.transform_layout(a_warp, ("write", 0), _index_map)
        sliced = len(sch.get(acc).reads[0].source.shape) == 3
        sch.transform_layout(acc, ("read", 0), _index_map_sliced if sliced else _index_map)
        cuda = intrinsics.load_tensor_intrinsics()
        sch.tensorize(sch.get_loops(a_warp)[-2], cuda.LDMATRIX_f16_A_DYN_INTRIN)
        sch.tensorize(sch.get_loops(inner)[-3], cuda.MMA_f16f16f32_TRANS_B_INTRIN)
        sch.tensorize(sch.get_loops(init)[-2], cuda.MMA_fill_16x16_f32_INTRIN)
        sch.tensorize(sch.get_loops(acc)[-2], cuda.MMA_store_16x16_f32_shared_dyn_INTRIN_SIMPLE)
        return staged

    @staticmethod
    def _sum_splits(sch, matmul):
        """Second kernel: each thread sums one output's K slices, un-pads and casts it to fp16."""
        tail = sch.get_consumers(matmul)[0]
        consumers = sch.get_consumers(tail)
        while consumers:
            sch.reverse_compute_inline(consumers[0])
            consumers = sch.get_consumers(tail)
        fused = sch.fuse(*sch.get_loops(tail))
        bx, tx = sch.split(fused, [None, 256])
        sch.bind(bx, "blockIdx.x")
        sch.bind(tx, "threadIdx.x")
        sch.compute_at(matmul, tx)
        sch.set_scope(matmul, 0, "local")
