"""W4A16 for small batches: a weight-streaming GEMV on CUDA cores.

Each thread owns ``vec`` consecutive K of one output row per step: it loads ``vec / 8`` packed words in
one vectorised load, decodes them in registers and multiplies them with the activations of every batch
row, so each weight byte is read once for the whole batch. ``tx`` threads split K and are reduced
with warp shuffles; ``ty`` rows share a block. M must be static (a dynamic-M workload gets one such
kernel per small M, see ``lowbit_tvm.kernel.build``).
"""
from dataclasses import dataclass

from ..ops.w4a16 import CAST, DECODE, MATMUL
from ..tvm_api import tirx
from .rule import ScheduleRule, find_block


@dataclass(frozen=True)
class GemvConfig:
    """Knobs of the W4A16 GEMV schedule."""

    tx: int = 32  # threads splitting K
    ty: int = 4  # output rows per block
    vec: int = 32  # K elements per thread per step (vec / 8 packed words per load)
    unroll: int = 64  # auto-unroll limit
    rows: int = 2  # output rows per thread: each activation load then serves this many weight rows


class W4A16Gemv(ScheduleRule):
    """GEMV / low-batch rule for the W4A16 operator."""

    name = "w4a16-gemv"
    Config = GemvConfig
    SPACE = {"tx": (16, 32, 64), "ty": (1, 2, 4, 8, 16), "vec": (8, 16, 32), "unroll": (0, 16, 64, 256),
             "rows": (1, 2, 4)}

    def schedule(self, sch, target, tunable=False, config=None):
        blocks = [find_block(sch, name) for name in (DECODE, MATMUL, CAST)]
        if any(block is None for block in blocks):
            return False
        decode, matmul, cast = blocks
        if not isinstance(sch.get(sch.get_loops(matmul)[0]).extent, tirx.IntImm):
            return False  # per-thread accumulators for every row need a static M
        knob = self.knobs(sch, tunable, config)
        sch.compute_inline(decode)
        i, j, k = sch.get_loops(matmul)
        bx, ty, row = sch.split(j, [None, knob["ty"], knob["rows"]])
        ko, tx, kv = sch.split(k, [None, knob["tx"], knob["vec"]])
        sch.reorder(bx, ty, row, i, ko, tx, kv)
        rf = sch.rfactor(tx, factor_axis=0)
        self._schedule_partial_sums(sch, rf, knob)
        self._schedule_reduction(sch, matmul, cast, rf, knob)
        return True

    @staticmethod
    def _schedule_partial_sums(sch, rf, knob):
        bx, ty, row, i, ko, tx, kv = sch.get_loops(rf)
        sch.reorder(bx, ty, tx, ko, row, kv, i)
        sch.annotate(ko, "pragma_auto_unroll_max_step", knob["unroll"])
        sch.annotate(ko, "pragma_unroll_explicit", 1)
        sch.bind(bx, "blockIdx.x")
        sch.bind(ty, "threadIdx.y")
        sch.bind(tx, "threadIdx.x")
        sch.set_scope(rf, 0, "local")
        weights = sch.cache_read(rf, 1, "local")
        sch.compute_at(weights, ko, preserve_unit_loops=True)
        sch.vectorize(sch.get_loops(weights)[-1])
        acts = sch.cache_read(rf, 0, "local")
        sch.compute_at(acts, ko, preserve_unit_loops=True)
        _, vec = sch.split(sch.get_loops(acts)[-1], [None, 8])
        sch.vectorize(vec)
        sch.decompose_reduction(rf, ko)

    @staticmethod
    def _schedule_reduction(sch, matmul, cast, rf, knob):
        bx = sch.get_loops(rf)[0]
        sch.reverse_compute_at(matmul, bx, preserve_unit_loops=True)
        tx, i, j = sch.get_loops(matmul)[-3:]
        ty, row = sch.split(j, [knob["ty"], knob["rows"]])
        sch.reorder(ty, row, i, tx)
        sch.bind(ty, "threadIdx.y")
        sch.bind(tx, "threadIdx.x")
        sch.set_scope(matmul, 0, "local")
        sch.reverse_compute_at(cast, bx, preserve_unit_loops=True)
        i, j = sch.get_loops(cast)[-2:]
        ty, row = sch.split(j, [knob["ty"], knob["rows"]])
        sch.reorder(ty, row, i)
        sch.bind(ty, "threadIdx.y")
