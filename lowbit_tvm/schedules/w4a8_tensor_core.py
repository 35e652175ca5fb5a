"""W4A8 / W8A8 on int8 tensor cores: int32 accumulation per K group, rescaled into fp32 in registers.

The structure follows ``w4a16_tensor_core``: weights pre-shuffled offline into mma B fragments
(``lowbit_tvm.quant.s8_layout``), a ``cp.async`` pipeline for int8 activations and packed weights, each lane
unpacking its words into int8 fragment registers right before ``mma.sync.m16n8k32.s8`` (activations by
``ldmatrix``). Per K group (``group`` = 128 for W4A8) the warp's int32 accumulator tiles are filled by the
group's mma, then added into fp32 accumulator tiles times the group's weight scale (``lowbit_rescale_i32``);
the epilogue multiplies by the token's activation scale (and adds ``R`` for the outlier GEMM) while copying
the staged fp32 tiles to global memory as fp16. With one group (per-channel W8A8 weights) the pipeline runs
over K steps of ``32 * k_inner`` and the rescale happens once.
"""
from dataclasses import dataclass

from ..ops.w4a8 import DECODE, EPILOGUE, IGEMM, RESCALE
from . import w4a8_intrinsics as intrin
from .rule import ScheduleRule, find_block, loops_inside, read_index, spread_copy, spread_store


@dataclass(frozen=True)
class IntGemmConfig:
    """Knobs of the int8 tensor-core schedule (block tile: ``16 warps_m tile_m`` x ``16 warps_n tile_n``)."""

    warps_m: int = 2
    warps_n: int = 4
    tile_m: int = 4
    tile_n: int = 2
    k_inner: int = 4  # K step of the per-channel pipeline = 32 * k_inner (within a group otherwise)
    prefetch: int = 2  # pipeline stages - 1


def _a_index(i, j):
    return (i // 16, j // 32, *intrin.a_map(i % 16, j % 32))


def _c_index(i, j):
    return (i // 16, j // 16, *intrin.c_map(i % 16, j % 16))


def _p_index(i, j, g):
    return (i // 16, j // 16, g, *intrin.c_map(i % 16, j % 16))


class IntGemmTensorCore(ScheduleRule):
    """Tensor-core rule for ``lowbit_tvm.ops.w4a8.IntGemmOp`` (W4A8 main part, W8A8, outlier part)."""

    name = "int-gemm-tensor-core"
    Config = IntGemmConfig
    FIXED_WHEN_TUNING = ("warps_m", "tile_m", "prefetch")  # M is padded to the block tile; list annotation
    SPACE = {
        "warps_m": (1, 2, 4),
        "warps_n": (2, 4),
        "tile_m": (1, 2, 4),
        "tile_n": (1, 2, 4),
        "k_inner": (1, 2, 4),
        "prefetch": (1, 2, 3),
    }

    # The igemm block's reduction axes (W4A4's adds the nibble axis), TVM's 16x16x32 int8 mma, the rescale ones.
    REDUCE_AXES = 1
    MMA_INTRIN = "mma_i8i8i32_trans_b"
    RESCALE_INTRINS = (intrin.RESCALE, intrin.RESCALE_FAST)

    def schedule(self, sch, target, tunable=False, config=None):
        blocks = [find_block(sch, name) for name in (DECODE, IGEMM, RESCALE, EPILOGUE)]
        if any(block is None for block in blocks):
            return False
        decode, igemm, rescale, _ = blocks
        if sum(int(v.iter_type) == 2 for v in sch.get(igemm).iter_vars) != self.REDUCE_AXES:  # 2: reduction
            return False
        intrin.register()
        bits = 4 if len(sch.get(decode).reads[0].source.shape) == 4 and int(sch.get(decode).reads[0].source.shape[3]) == 2 else 8
        knob = self.knobs(sch, tunable, config)
        loops = self._tile(sch, rescale, knob)
        groups = int(sch.get(loops["g"]).extent)
        igemm_outer = self._igemm(sch, igemm, loops, knob)
        pipe = loops["g"] if groups > 1 else loops["k0"]
        a_shared = self._fetch(sch, igemm_outer, decode, pipe, loops, knob)
        self._decode_fragments(sch, decode, bits)
        self._tensorize(sch, igemm, igemm_outer, loops, a_shared)
        staged = self._accumulators(sch, rescale, loops, self._fast_convert(sch, loops, bits))
        spread_store(sch, staged)
        self._pipeline(sch, pipe, knob["prefetch"])
        sch.annotate(pipe, "pragma_import_c", intrin.SOURCE)
        return True

    @staticmethod
    def _tile(sch, rescale, knob):
        """Block/warp tiles over the rescale block; its K-group loop ``g`` inside the warp loop."""
        i, j, g = sch.get_loops(rescale)
        i, i_tc = sch.split(i, [None, 16])
        j, j_tc = sch.split(j, [None, 16])
        bi, wi, ti = sch.split(i, [None, knob["warps_m"], knob["tile_m"]])
        bj, wj, tj = sch.split(j, [None, knob["warps_n"], knob["tile_n"]])
        sch.reorder(bi, bj, wi, wj, g, ti, tj, i_tc, j_tc)
        sch.bind(sch.fuse(bi, bj), "blockIdx.x")
        warp = sch.fuse(wi, wj)
        sch.bind(warp, "threadIdx.y")
        return {"g": g, "warp": warp, "rescale_outer": sch.blockize(i_tc)}

    def _igemm(self, sch, igemm, loops, knob):
        """The group's int32 GEMM under ``g``: 16x16x32 mma tiles (32 bytes of K), K split into ``k0`` x ``k1``."""
        sch.compute_at(igemm, loops["g"])
        own = loops_inside(sch, igemm, loops["g"])
        i, j, r, inner = own[0], own[1], own[2], own[3:]  # inner: W4A4's nibble axis
        i_o, i_tc = sch.split(i, [None, 16])
        j_o, j_tc = sch.split(j, [None, 16])
        k0, k1, k_tc = sch.split(r, [None, knob["k_inner"], 32])
        sch.reorder(k0, k1, i_o, j_o, i_tc, j_tc, k_tc, *inner)
        loops["k0"], loops["k1"] = k0, k1
        return sch.blockize(i_tc)

    def _fetch(self, sch, igemm_outer, decode, pipe, loops, knob):
        """Activations and packed weights to shared memory per pipeline step (``cp.async``)."""
        a_shared = sch.cache_read(igemm_outer, read_index(sch, igemm_outer, "A"), "shared.dyn")
        sch.compute_at(a_shared, pipe)
        sch.storage_align(a_shared, 0, axis=-2, factor=128, offset=16)
        spread_copy(sch, a_shared, pipe, 16, knob["warps_m"], knob["warps_n"])
        sch.set_scope(decode, 0, "warp")
        sch.compute_at(decode, loops["k1"])
        packed_shared = sch.cache_read(decode, 0, "shared.dyn")
        sch.compute_at(packed_shared, pipe)
        spread_copy(sch, packed_shared, pipe, 4, knob["warps_m"], knob["warps_n"])
        return a_shared

    @staticmethod
    def _pipeline(sch, pipe, ahead):
        """The two copies run ``ahead`` steps before the math under ``pipe`` (int32 init, mma, rescale)."""
        if int(sch.get(pipe).extent) < 2:
            return  # one step: nothing to overlap
        body = sch.get(pipe).body
        children = len(body.seq) if hasattr(body, "seq") else 1
        sch.annotate(pipe, "software_pipeline_stage", [0, 0] + [ahead] * (children - 2))
        sch.annotate(pipe, "software_pipeline_order", list(range(children)))
        sch.annotate(pipe, "software_pipeline_async_stages", [0])

    @staticmethod
    def _decode_fragments(sch, decode, bits):
        row, col = sch.get_loops(decode)[-2:]
        row_o, row_i = sch.split(row, [None, 16])
        col_o, col_i = sch.split(col, [None, 32])
        sch.reorder(row_o, col_o, row_i, col_i)
        sch.transform_layout(decode, ("write", 0), _a_index)
        sch.tensorize(row_i, intrin.DECODE_S4 if bits == 4 else intrin.DECODE_S8)

    def _tensorize(self, sch, igemm, igemm_outer, loops, a_shared):
        cuda = intrin.register()
        a_warp = sch.cache_read(igemm_outer, read_index(sch, igemm_outer, sch.get(a_shared).writes[0].source.name), "warp")
        sch.compute_at(a_warp, loops["k1"])
        row, col = sch.get_loops(a_warp)[-2:]
        row_o, row_i = sch.split(row, [None, 16])
        col_o, col_i = sch.split(col, [None, 32])
        sch.reorder(row_o, col_o, row_i, col_i)
        sch.transform_layout(a_warp, ("write", 0), _a_index)
        sch.tensorize(row_i, intrin.LDMATRIX_I8_A_DYN)
        sch.set_scope(igemm_outer, 0, "warp")
        sch.transform_layout(igemm_outer, ("write", 0), _p_index)
        sch.decompose_reduction(igemm_outer, loops["k0"])
        init = sch.get_sblock(sch.get(igemm).name_hint + "_init")
        sch.tensorize(sch.get_loops(igemm)[-2 - self.REDUCE_AXES], self.MMA_INTRIN)
        sch.tensorize(sch.get_loops(init)[-2], cuda.MMA_fill_16x16_i32_INTRIN)

    @staticmethod
    def _fast_convert(sch, loops, bits):
        """Whether a group's int32 sums stay below ``FAST_CONVERT_LIMIT`` (int8 codes up to 127, int4 ones
        unpacked to 16 q, up to 128 in magnitude)."""
        group = 32 * int(sch.get(loops["k0"]).extent) * int(sch.get(loops["k1"]).extent)
        return group * 127 * (128 if bits == 4 else 127) < intrin.FAST_CONVERT_LIMIT

    def _accumulators(self, sch, rescale, loops, fast):
        """fp32 accumulators in registers, staged through shared memory for the epilogue."""
        cuda = intrin.register()
        outer = loops["rescale_outer"]
        staged = sch.cache_write(outer, 0, "shared.dyn")
        acc = sch.cache_write(outer, 0, "warp")
        sch.reverse_compute_at(acc, loops["warp"])
        sch.reverse_compute_at(staged, loops["warp"])
        sch.decompose_reduction(outer, loops["g"])
        init = sch.get_sblock(sch.get(rescale).name_hint + "_init")
        row, col = sch.get_loops(acc)[-2:]
        row_o, row_i = sch.split(row, [None, 16])
        col_o, col_i = sch.split(col, [None, 16])
        sch.reorder(row_o, col_o, row_i, col_i)
        sch.transform_layout(acc, ("read", 0), _c_index)
        sch.tensorize(sch.get_loops(rescale)[-2], self.RESCALE_INTRINS[fast])
        sch.tensorize(sch.get_loops(init)[-2], cuda.MMA_fill_16x16_f32_INTRIN)
        sch.tensorize(row_i, cuda.MMA_store_16x16_f32_shared_dyn_INTRIN_SIMPLE)
        return staged
