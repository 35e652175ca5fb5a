"""GQSA for small batches: a GEMV over the kept groups only, on CUDA cores.

Each warp owns ``rows`` output rows per ``threadIdx.y``; its ``tx`` lanes walk the row's packed words (kept
groups one after another), each lane ``vec / 8`` consecutive words per step in one vector load (8 or 16 bytes;
adjacent lanes read adjacent chunks: coalesced). For each word the lane gathers its eight activations with one
16-byte load at ``I[n, group] * g + 8 * word_in_group`` (column blocks are multiples of ``g >= 16``, so the
load is aligned) and takes the word's fp16 dot product with ``half2`` arithmetic (``lowbit_word_dot_sym``,
the W4A16 GEMV's tensor intrinsic), then adds it in fp32 times the group scale. Lanes are reduced with warp
shuffles. Activations are not shared between rows (each row gathers its own groups), so ``rows`` only adds
independent work per lane.
"""
from dataclasses import dataclass

from ..ops.gqsa import CAST, DOT, GATHER, MATMUL
from . import gemv_intrinsics
from .rule import ScheduleRule, find_block, read_index


@dataclass(frozen=True)
class GQSAGemvConfig:
    """Knobs of the GQSA GEMV schedule."""

    tx: int = 32  # lanes splitting a row's words
    ty: int = 4  # rows of warps per block
    vec: int = 32  # weights per lane per step (vec / 8 words, one vector load)
    unroll: int = 64  # auto-unroll limit
    rows: int = 1  # output rows per lane

    @property
    def words_per_step(self) -> int:
        """Words one step of the whole warp reads per row."""
        return self.tx * self.vec // 8

    def fits(self, n: int, words: int) -> bool:
        """Whether this config tiles ``n`` rows and ``words`` words per row exactly."""
        return n % (self.ty * self.rows) == 0 and words % self.words_per_step == 0


class GQSAGemv(ScheduleRule):
    """GEMV rule for the GQSA operator (static M; serves every M, as there is no GQSA tensor-core rule yet)."""

    name = "gqsa-gemv"
    Config = GQSAGemvConfig
    SPACE = {"tx": (8, 16, 32), "ty": (1, 2, 4, 8), "vec": (8, 16, 32), "unroll": (0, 16, 64, 256),
             "rows": (1, 2, 4)}

    def schedule(self, sch, target, tunable=False, config=None):
        gather, dot, matmul, cast = (find_block(sch, name) for name in (GATHER, DOT, MATMUL, CAST))
        if None in (gather, dot, matmul, cast):
            return False
        knob = self.knobs(sch, tunable, config)
        i, j, w = sch.get_loops(matmul)
        if not tunable and not (config or self.Config()).fits(int(sch.get(j).extent), int(sch.get(w).extent)):
            raise ValueError(
                f"GQSA GEMV config {config} does not tile N={sch.get(j).extent}, words={sch.get(w).extent}"
            )
        bx, ty, row = sch.split(j, [None, knob["ty"], knob["rows"]])
        ko, tx, wv = sch.split(w, [None, knob["tx"], self._words_per_step(sch, knob)])
        sch.reorder(bx, ty, row, i, ko, tx, wv)
        rf = sch.rfactor(tx, factor_axis=0)
        bx, ty, row, i, ko, tx, wv = sch.get_loops(rf)
        sch.reorder(bx, ty, tx, ko, row, wv, i)
        sch.annotate(ko, "pragma_auto_unroll_max_step", knob["unroll"])
        sch.annotate(ko, "pragma_unroll_explicit", 1)
        sch.annotate(ko, "pragma_import_c", gemv_intrinsics.GEMV_SOURCE)
        sch.bind(bx, "blockIdx.x")
        sch.bind(ty, "threadIdx.y")
        sch.bind(tx, "threadIdx.x")
        sch.set_scope(rf, 0, "local")
        sch.compute_at(dot, sch.get_loops(rf)[-1])
        sch.set_scope(dot, 0, "local")
        weights = sch.cache_read(dot, read_index(sch, dot, "B"), "local")
        sch.compute_at(weights, ko, preserve_unit_loops=True)
        sch.vectorize(sch.get_loops(weights)[-1])
        sch.compute_at(gather, sch.get_loops(dot)[-1], preserve_unit_loops=True)
        sch.set_scope(gather, 0, "local")
        sch.vectorize(sch.get_loops(gather)[-1])
        gemv_intrinsics.register()
        sch.tensorize(dot, gemv_intrinsics.WORD_DOT_SYM)
        for loop in sch.get_loops(rf)[-3:]:  # row, word, batch row: registers need constant indices
            sch.unroll(loop)
        sch.decompose_reduction(rf, ko)
        self._schedule_reduction(sch, matmul, cast, rf, knob)
        return True

    def _words_per_step(self, sch, knob):
        """``vec / 8``; when tuning a decision of its own (a trace cannot hold ``vec // 8``)."""
        if isinstance(knob["vec"], int):
            return knob["vec"] // 8
        choices = [vec // 8 for vec in self.SPACE["vec"]]
        return sch.sample_categorical(choices, [1.0 / len(choices)] * len(choices))

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
