"""W4A16 for one (or a few) rows on the tensor-core weight layout: a weight-streaming GEMV on CUDA cores.

It reads the same ``"mma"`` weights as ``W4A16TensorCore``, so a model keeps one copy of its weights and
still decodes single tokens at GEMV speed. The op is ``reduction="word"`` on ``"mma"`` weights: a ``dot`` is
the fp16 sum of 16 codes of one tile row with the tile's 16 activations.

Threads: ``threadIdx.y`` (8) is the tile row pair ``(r, r + 8)``: lanes ``4r .. 4r + 3`` of every tile, one
16-byte load per tile; ``threadIdx.x`` (``tx``) splits the K tiles, so a warp reads ``tx * 32 / 8`` whole
tiles' worth of contiguous 16-byte pieces (every 32-byte sector fully used); ``threadIdx.z`` (``ty``) takes
``ty`` 16-row tiles per block. Each thread loads ``tiles`` K tiles per step (independent loads in flight),
tensorizes their dots (``gemv_intrinsics.MMA_DOT``) and keeps fp32 sums for its two rows, which a warp
shuffle reduction over ``threadIdx.x`` adds up. M must be static.
"""
from dataclasses import dataclass

from ..ops.w4a16 import ASUM, CAST, DOT, MATMUL
from ..tvm_api import tirx
from . import gemv_intrinsics
from .rule import ScheduleRule, find_block, read_index


@dataclass(frozen=True)
class MmaGemvConfig:
    """Knobs of the GEMV on tensor-core-layout weights."""

    tx: int = 32  # threads splitting the K tiles
    ty: int = 1  # 16-row tiles per block
    tiles: int = 1  # K tiles per thread per step
    unroll: int = 64  # auto-unroll limit


class W4A16MmaGemv(ScheduleRule):
    """GEMV rule for the W4A16 operator on ``"mma"`` weights (``reduction="word"``)."""

    name = "w4a16-mma-gemv"
    Config = MmaGemvConfig
    SPACE = {"tx": (4, 8, 16, 32), "ty": (1, 2, 4), "tiles": (1, 2, 4), "unroll": (0, 16, 64)}

    def schedule(self, sch, target, tunable=False, config=None):
        dot, matmul, cast = find_block(sch, DOT), find_block(sch, MATMUL), find_block(sch, CAST)
        if dot is None or matmul is None or cast is None or len(sch.get(dot).iter_vars) != 5:
            return False  # not the "mma" word op
        if not isinstance(sch.get(sch.get_loops(matmul)[0]).extent, tirx.IntImm):
            return False  # per-thread accumulators for every row need a static M
        knob = self.knobs(sch, tunable, config)
        i, nt, half, r, kt = sch.get_loops(matmul)
        shape = (int(sch.get(nt).extent), int(sch.get(kt).extent))
        if all(isinstance(v, int) for v in knob.values()) and not fits_tiles(*shape, **knob):
            raise ValueError(f"GEMV config {knob} does not tile N/16={shape[0]}, K/16={shape[1]} exactly")
        bx, tz = sch.split(nt, [None, knob["ty"]])
        ko, ki, tx = sch.split(kt, [None, knob["tiles"], knob["tx"]])
        sch.reorder(bx, tz, r, half, i, ko, ki, tx)
        rf = sch.rfactor(tx, factor_axis=0)
        self._schedule_partial_sums(sch, rf, dot, find_block(sch, ASUM), knob)
        self._schedule_reduction(sch, matmul, cast, rf, knob)
        return True

    @staticmethod
    def _schedule_partial_sums(sch, rf, dot, asum, knob):
        bx, tz, r, half, i, ko, ki, tx = sch.get_loops(rf)
        sch.reorder(bx, tz, r, tx, ko, ki, half, i)
        sch.annotate(ko, "pragma_auto_unroll_max_step", knob["unroll"])
        sch.annotate(ko, "pragma_unroll_explicit", 1)
        sch.annotate(ko, "pragma_import_c", gemv_intrinsics.GEMV_SOURCE)
        sch.bind(bx, "blockIdx.x")
        sch.bind(tz, "threadIdx.z")
        sch.bind(r, "threadIdx.y")
        sch.bind(tx, "threadIdx.x")
        sch.set_scope(rf, 0, "local")
        sch.compute_at(dot, ki)
        sch.set_scope(dot, 0, "local")
        consumers = [dot] if asum is None else [dot, asum]
        if asum is not None:
            sch.compute_at(asum, ki)
            sch.set_scope(asum, 0, "local")
        weights = sch.cache_read(dot, read_index(sch, dot, "B"), "local")
        sch.compute_at(weights, ki, preserve_unit_loops=True)
        sch.vectorize(sch.get_loops(weights)[-1])
        acts = sch.cache_read(dot, read_index(sch, dot, "A"), "local", consumer_blocks=consumers)
        sch.compute_at(acts, ki, preserve_unit_loops=True)
        _, vec = sch.split(sch.get_loops(acts)[-1], [None, 8])
        sch.vectorize(vec)
        gemv_intrinsics.register()
        sch.tensorize(sch.get_loops(dot)[-1], gemv_intrinsics.MMA_DOT)
        for loop in sch.get_loops(rf)[-3:]:  # tile, row half, batch row: registers need constant indices
            sch.unroll(loop)
        sch.decompose_reduction(rf, ko)

    @staticmethod
    def _schedule_reduction(sch, matmul, cast, rf, knob):
        bx = sch.get_loops(rf)[0]
        sch.reverse_compute_at(matmul, bx, preserve_unit_loops=True)
        tx, i, tz, half, r = sch.get_loops(matmul)[-5:]
        sch.reorder(tz, r, half, i, tx)
        sch.bind(tz, "threadIdx.z")
        sch.bind(r, "threadIdx.y")
        sch.bind(tx, "threadIdx.x")
        sch.set_scope(matmul, 0, "local")
        sch.reverse_compute_at(cast, bx, preserve_unit_loops=True)
        i, j = sch.get_loops(cast)[-2:]
        tz, half, r = sch.split(j, [knob["ty"], 2, 8])
        sch.reorder(tz, r, half, i)
        sch.bind(tz, "threadIdx.z")
        sch.bind(r, "threadIdx.y")


def fits_tiles(n_tiles, k_tiles, tx, ty, tiles, **_):
    """Whether a config tiles ``n_tiles`` 16-row tiles and ``k_tiles`` 16-wide K tiles exactly."""
    return n_tiles % ty == 0 and k_tiles % (tx * tiles) == 0
