"""W4A16 for one (or a few) rows on the tensor-core weight layout: a weight-streaming GEMV on CUDA cores.

It reads the same ``"mma"`` weights as ``W4A16TensorCore``, so a model keeps one copy of its weights and
still decodes single tokens at GEMV speed. The op is ``reduction="word"`` on ``"mma"`` weights: a ``dot`` is
the fp16 sum of 16 codes of one tile row with the tile's 16 activations.

Threads: a half-warp (``threadIdx.x``, 16 lanes) reads two whole 16x16 tiles of one row tile, 256 contiguous
bytes: lane ``8t + r`` loads the 16 bytes of tile ``t`` that hold rows ``r`` and ``r + 8`` (the words of
lanes ``4r .. 4r + 3``), so every load instruction of a warp covers 512 contiguous bytes. ``ky`` half-warps
(``threadIdx.y``) split the K tiles, ``ty`` row tiles (``threadIdx.z``) share a block, and each thread makes
``tiles`` such loads per loop iteration. A thread tensorizes its dots (``gemv_intrinsics.MMA_DOT``) and keeps
fp32 sums for its two rows; the partial sums meet in shared memory, where 16 lanes per row tile add them up.
M must be static.

Two load knobs (the dataclass defaults are off; the dispatcher's default turns both on, with two steps per
iteration and no unrolling: ``w4a16_dispatch.MMA_GEMV_LOADS``, v8 sweep in benchmarks/NOTES.md): ``contiguous=1``
gives each lane octet its own K range, so a thread's ``tiles`` steps read neighbouring tiles and their
loads are issued together; ``stream=1`` reads the weights with streaming loads (``stream_load``).
"""
from dataclasses import dataclass

from ..ops.w4a16 import ASUM, CAST, DOT, MATMUL
from ..tvm_api import tirx
from . import gemv_intrinsics, stream_load
from .rule import ScheduleRule, find_block, read_index


@dataclass(frozen=True)
class MmaGemvConfig:
    """Knobs of the GEMV on tensor-core-layout weights."""

    ky: int = 8  # half-warps splitting the K tiles (each reads two whole tiles, 256 contiguous bytes, per step)
    ty: int = 1  # 16-row tiles per block
    tiles: int = 1  # steps per thread per loop iteration, their weights loaded together (loads in flight)
    unroll: int = 64  # auto-unroll limit
    contiguous: int = 0  # 1: each lane octet walks one contiguous K range (else half-warps interleave per step)
    stream: int = 0  # 1: weights by streaming loads (L1 bypass, L2 evict-first: ``stream_load``)


class W4A16MmaGemv(ScheduleRule):
    """GEMV rule for the W4A16 operator on ``"mma"`` weights (``reduction="word"``)."""

    name = "w4a16-mma-gemv"
    Config = MmaGemvConfig
    SPACE = {"ky": (4, 8, 16, 32, 64), "ty": (1, 2), "tiles": (1, 2), "unroll": (0, 16, 64)}
    FIXED_WHEN_TUNING = ("contiguous", "stream")  # loop order and load kind: plain ints

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
        kf, ko, ki = self._split_k(sch, kt, knob)
        sch.reorder(bx, tz, kf, r, half, i, ko, ki)
        rf = sch.rfactor(kf, factor_axis=0)
        self._partial_sums(sch, rf, dot, find_block(sch, ASUM), knob)
        self._reduction(sch, matmul, cast, rf)
        return True

    @staticmethod
    def _split_k(sch, kt, knob):
        """Split the K tiles into (half-warp, tile pair) ``kf`` and the steps ``ko, ki``; returns all three.

        Interleaved: step ``s`` of half-warp ``y`` reads tile pair ``s * ky + y`` (a warp's load is 512
        contiguous bytes). Contiguous: each of the ``2 ky`` lane octets (half-warp ``y``, ``pair``) walks its
        own ``K / 2 ky`` range (four 128-byte pieces per warp load), so a thread's ``tiles`` steps read
        neighbouring tiles: one load each, issued together.
        """
        if knob["contiguous"] == 1:
            ky, pair, ko, ki = sch.split(kt, [knob["ky"], 2, None, knob["tiles"]])
        else:
            ko, ki, ky, pair = sch.split(kt, [None, knob["tiles"], knob["ky"], 2])
        return sch.fuse(ky, pair), ko, ki

    @staticmethod
    def _partial_sums(sch, rf, dot, asum, knob):
        bx, tz, kf, r, half, i, ko, ki = sch.get_loops(rf)
        ky, kl = sch.split(kf, [knob["ky"], 2])
        sch.reorder(bx, tz, ky, kl, r, ko, ki, half, i)
        lane = sch.fuse(kl, r)
        sch.annotate(ko, "pragma_auto_unroll_max_step", knob["unroll"])
        sch.annotate(ko, "pragma_unroll_explicit", 1)
        stream_source = stream_load.STREAM_SOURCE if knob["stream"] == 1 else ""
        sch.annotate(ko, "pragma_import_c", gemv_intrinsics.GEMV_SOURCE + stream_source)
        sch.bind(bx, "blockIdx.x")
        sch.bind(tz, "threadIdx.z")
        sch.bind(ky, "threadIdx.y")
        sch.bind(lane, "threadIdx.x")
        local = sch.cache_write(rf, 0, "local")
        sch.reverse_compute_at(local, lane)
        sch.set_scope(local, 0, "shared")
        sch.compute_at(dot, ki)
        sch.set_scope(dot, 0, "local")
        consumers = [dot] if asum is None else [dot, asum]
        if asum is not None:
            sch.compute_at(asum, ki)
            sch.set_scope(asum, 0, "local")
        weights = sch.cache_read(dot, read_index(sch, dot, "B"), "local")
        # contiguous: the weights of all ``tiles`` steps first (loads in flight); interleaved steps are far apart
        sch.compute_at(weights, ko if knob["contiguous"] == 1 else ki, preserve_unit_loops=True)
        if knob["stream"] == 1:
            stream_load.register()
            sch.tensorize(sch.get_loops(weights)[-1], stream_load.STREAM_LOAD)
        else:
            sch.vectorize(sch.get_loops(weights)[-1])
        acts = sch.cache_read(dot, read_index(sch, dot, "A"), "local", consumer_blocks=consumers)
        sch.compute_at(acts, ki, preserve_unit_loops=True)
        _, vec = sch.split(sch.get_loops(acts)[-1], [None, 8])
        sch.vectorize(vec)
        gemv_intrinsics.register()
        sch.tensorize(sch.get_loops(dot)[-1], gemv_intrinsics.MMA_DOT)
        for loop in sch.get_loops(rf)[-2:]:  # row half, batch row
            sch.unroll(loop)
        sch.decompose_reduction(rf, ko)

    @staticmethod
    def _reduction(sch, matmul, cast, rf):
        bx = sch.get_loops(rf)[0]
        sch.reverse_compute_at(matmul, bx, preserve_unit_loops=True)
        kf, i, tz, half, r = sch.get_loops(matmul)[-5:]
        sch.reorder(tz, half, r, i, kf)
        rows = sch.fuse(half, r)
        sch.bind(tz, "threadIdx.z")
        sch.bind(rows, "threadIdx.x")
        sch.set_scope(matmul, 0, "local")
        sch.reverse_compute_at(cast, rows, preserve_unit_loops=True)


def fits_tiles(n_tiles, k_tiles, ky, ty, tiles, **_):
    """Whether a config tiles ``n_tiles`` 16-row tiles and ``k_tiles`` 16-wide K tiles exactly (and fits a block)."""
    return n_tiles % ty == 0 and k_tiles % (2 * ky * tiles) == 0 and 16 * ky * ty <= 1024
