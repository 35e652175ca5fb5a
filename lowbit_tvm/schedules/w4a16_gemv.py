"""W4A16 for small batches: a weight-streaming GEMV on CUDA cores.

Each thread owns ``vec`` consecutive K of one output row per step: it loads ``vec / 8`` packed words in
one vectorised load, decodes them in registers and multiplies them with the activations of every batch
row, so each weight byte is read once for the whole batch. ``tx`` threads split K and are reduced
with warp shuffles; ``ty`` rows share a block. M must be static (a dynamic-M workload gets one such
kernel per small M, see ``lowbit_tvm.kernel.build``).

Two forms of the op: ``reduction="flat"`` decodes each weight to fp32 and multiplies it by its scale
(about 6 instructions per weight); ``reduction="word"`` tensorizes each packed word's fp16 dot product
with ``half2`` arithmetic (``gemv_intrinsics``) and applies the scale once per word in fp32; its weights
can be read by streaming loads (``stream=1``: L1 bypass, L2 evict-first, ``stream_load``; the
dispatcher's configs use them, v8 sweep in benchmarks/NOTES.md).
"""
from dataclasses import dataclass

from ..ops.w4a16 import CAST, DECODE, DOT, MATMUL
from ..tvm_api import tirx
from . import gemv_intrinsics, stream_load
from .rule import ScheduleRule, find_block, read_index


@dataclass(frozen=True)
class GemvConfig:
    """Knobs of the W4A16 GEMV schedule."""

    tx: int = 32  # threads splitting K
    ty: int = 4  # output rows per block
    vec: int = 32  # K elements per thread per step (vec / 8 packed words per load)
    unroll: int = 64  # auto-unroll limit
    rows: int = 2  # output rows per thread: each activation load then serves this many weight rows
    stream: int = 0  # 1: word GEMV weights by streaming loads (``stream_load``; with vec = 32: 16-byte loads)


class W4A16Gemv(ScheduleRule):
    """GEMV / low-batch rule for the W4A16 operator."""

    name = "w4a16-gemv"
    Config = GemvConfig
    SPACE = {"tx": (16, 32, 64), "ty": (1, 2, 4, 8, 16), "vec": (8, 16, 32), "unroll": (0, 16, 64, 256),
             "rows": (1, 2, 4)}
    FIXED_WHEN_TUNING = ("stream",)  # the load kind: a plain int

    def schedule(self, sch, target, tunable=False, config=None):
        producer = find_block(sch, DOT) or find_block(sch, DECODE)
        matmul, cast = find_block(sch, MATMUL), find_block(sch, CAST)
        if producer is None or matmul is None or cast is None:
            return False
        if not isinstance(sch.get(sch.get_loops(matmul)[0]).extent, tirx.IntImm):
            return False  # per-thread accumulators for every row need a static M
        if sch.get(producer).name_hint == DOT:
            return self._schedule_words(sch, producer, matmul, cast, self.knobs(sch, tunable, config))
        knob = self.knobs(sch, tunable, config)
        sch.compute_inline(producer)
        i, j, k = sch.get_loops(matmul)
        bx, ty, row = sch.split(j, [None, knob["ty"], knob["rows"]])
        ko, tx, kv = sch.split(k, [None, knob["tx"], knob["vec"]])
        sch.reorder(bx, ty, row, i, ko, tx, kv)
        rf = sch.rfactor(tx, factor_axis=0)
        self._schedule_partial_sums(sch, rf, knob)
        self._schedule_reduction(sch, matmul, cast, rf, knob)
        return True

    def _schedule_words(self, sch, dot, matmul, cast, knob):
        """The ``reduction="word"`` op: K is split in packed words, each word's dot product tensorized.

        The splits must divide N and K/8 exactly (``fits_words``): tensorize cannot match a predicated block.
        """
        i, j, w = sch.get_loops(matmul)
        shape = (sch.get(j).extent, sch.get(w).extent)
        if all(isinstance(v, int) for v in knob.values()) and not fits_words(*(int(e) for e in shape), **knob):
            raise ValueError(f"GEMV config {knob} does not tile N={shape[0]}, K/8={shape[1]} exactly")
        bx, ty, row = sch.split(j, [None, knob["ty"], knob["rows"]])
        ko, tx, wv = sch.split(w, [None, knob["tx"], self._words_per_step(sch, knob)])
        sch.reorder(bx, ty, row, i, ko, tx, wv)
        rf = sch.rfactor(tx, factor_axis=0)
        bx, ty, row, i, ko, tx, wv = sch.get_loops(rf)
        sch.reorder(bx, ty, tx, ko, row, wv, i)
        sch.annotate(ko, "pragma_auto_unroll_max_step", knob["unroll"])
        sch.annotate(ko, "pragma_unroll_explicit", 1)
        stream_source = stream_load.STREAM_SOURCE if knob["stream"] == 1 else ""
        sch.annotate(ko, "pragma_import_c", gemv_intrinsics.GEMV_SOURCE + stream_source)
        sch.bind(bx, "blockIdx.x")
        sch.bind(ty, "threadIdx.y")
        sch.bind(tx, "threadIdx.x")
        sch.set_scope(rf, 0, "local")
        sch.compute_at(dot, sch.get_loops(rf)[-1])
        sch.set_scope(dot, 0, "local")
        weights = sch.cache_read(dot, read_index(sch, dot, "B"), "local")
        sch.compute_at(weights, ko, preserve_unit_loops=True)
        words = sch.get_loops(weights)[-1]
        if knob["stream"] == 1 and isinstance(sch.get(words).extent, tirx.IntImm) and sch.get(words).extent == 4:
            stream_load.register()
            sch.tensorize(words, stream_load.STREAM_LOAD)
        else:
            sch.vectorize(words)
        acts = sch.cache_read(dot, read_index(sch, dot, "A"), "local")
        sch.compute_at(acts, ko, preserve_unit_loops=True)
        _, vec = sch.split(sch.get_loops(acts)[-1], [None, 8])
        sch.vectorize(vec)
        gemv_intrinsics.register()
        symmetric = len(sch.get(dot).reads) == 2
        sch.tensorize(dot, gemv_intrinsics.WORD_DOT_SYM if symmetric else gemv_intrinsics.WORD_DOT_ASYM)
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


def fits_words(n, words, tx, ty, vec, rows, **_):
    """Whether a word-GEMV config tiles ``n`` rows and ``words`` packed words without remainders."""
    return n % (ty * rows) == 0 and words % (tx * vec // 8) == 0
