"""The fused reorder + per-token activation quantization kernel (``lowbit_tvm.ops.w4a8.ActQuantOp``).

One CUDA block per token row: its ``threads`` threads gather the row through the permutation (main channels
first, outlier channels last), reduce ``max |x|`` of each part across the block (TVM's cross-thread
allreduce: warp shuffles, then shared memory; the maxima are the op's scale output), and write the int8 codes
of the main part and of the outliers (each thread ``vec`` consecutive bytes). Padding rows (beyond M) get zeros.

int4 mode (W4A4, ``ActQuantOp(bits=4)``): the block is ``threadIdx.y`` x ``threadIdx.x`` = ``threads / lanes`` x
``lanes`` with ``lanes = 64 / vec`` (a group's 64 packed bytes, ``vec`` per thread): the outliers as above over all
threads, then per step of ``threadIdx.y`` groups each group's max |x| by its ``lanes`` lanes (warp shuffles;
every lane keeps the result in a register) and its packed codes by the same lanes. Tuning samples ``threads``
only (``vec`` sets the lanes per group, which the other splits derive from).
"""
from dataclasses import dataclass

from ..ops.w4a8 import AMAX, GATHER, QUANT, STORE
from ..quant.atom_w4a4 import GROUP
from .rule import ScheduleRule, find_block


@dataclass(frozen=True)
class ActQuantConfig:
    """Knobs of the activation-quantize schedule."""

    threads: int = 256
    vec: int = 4  # int8 codes written per thread and step


class ActQuant(ScheduleRule):
    """Rule for the reorder + quantize operator."""

    name = "a8-quantize"
    Config = ActQuantConfig
    SPACE = {"threads": (256, 512, 1024), "vec": (1, 2, 4)}

    def schedule(self, sch, target, tunable=False, config=None):
        blocks = [find_block(sch, name) for name in (GATHER, AMAX, QUANT)]
        if any(block is None for block in blocks):
            return False
        gather, amax, quant = blocks
        sch.compute_inline(gather)
        if len(sch.get(amax).writes[0].source.shape) == 2:  # per-group maxima: int4 mode
            self._schedule_int4(sch, amax, quant, self._int4_knobs(sch, tunable, config or self.Config()))
            return True
        knob = self.knobs(sch, tunable, config)
        row, red = sch.get_loops(amax)
        sch.bind(row, "blockIdx.x")
        self._spread_reduction(sch, amax, red, knob)
        for name in (STORE, QUANT, AMAX + "_o", STORE + "_o", QUANT + "_o"):
            block = find_block(sch, name)
            if block is None:
                continue
            sch.reverse_compute_at(block, row)
            if name == AMAX + "_o":
                self._spread_reduction(sch, block, sch.get_loops(block)[-1], knob)
            elif name.startswith(QUANT):
                _, tx, _ = sch.split(sch.get_loops(block)[-1], [None, knob["threads"], knob["vec"]])
                sch.bind(tx, "threadIdx.x")
        return True

    @staticmethod
    def _spread_reduction(sch, block, loop, knob):
        """A row's max |x| over the block's threads: a cross-thread allreduce into a register, so every thread
        holds the result (no barrier needed before the quantize loop reads it)."""
        _, r_tx = sch.split(loop, [None, knob["threads"]])
        sch.bind(r_tx, "threadIdx.x")
        sch.set_scope(block, 0, "local")

    def _int4_knobs(self, sch, tunable, config) -> dict:
        """``vec``, ``lanes`` (ints: ``vec`` stays the config's when tuning) and ``ty`` (groups per step; sampled
        from ``SPACE["threads"] / lanes`` when tuning)."""
        lanes = GROUP // 2 // config.vec
        choices = [max(1, t // lanes) for t in self.SPACE["threads"]]
        ty = sch.sample_categorical(choices, [1.0 / len(choices)] * len(choices)) if tunable else max(1, config.threads // lanes)
        return {"vec": config.vec, "lanes": lanes, "ty": ty}

    @staticmethod
    def _schedule_int4(sch, amax, quant, knob):
        """One block per row: the outlier part (if any) over all ``ty x lanes`` threads, then per group step."""
        lanes, ty = knob["lanes"], knob["ty"]
        amax_o = find_block(sch, AMAX + "_o")
        row = sch.get_loops(amax_o if amax_o is not None else amax)[0]
        sch.bind(row, "blockIdx.x")
        if amax_o is not None:
            _, r_y, r_x = sch.split(sch.get_loops(amax_o)[-1], [None, ty, lanes])
            sch.bind(r_y, "threadIdx.y")
            sch.bind(r_x, "threadIdx.x")
            sch.set_scope(amax_o, 0, "local")
            for name in (STORE + "_o", QUANT + "_o"):
                block = find_block(sch, name)
                sch.reverse_compute_at(block, row)
                if name.startswith(QUANT):
                    _, t_y, t_x, _ = sch.split(sch.get_loops(block)[-1], [None, ty, lanes, knob["vec"]])
                    sch.bind(t_y, "threadIdx.y")
                    sch.bind(t_x, "threadIdx.x")
            sch.reverse_compute_at(amax, row)
        group, red = sch.get_loops(amax)[-2:]
        step, g_y = sch.split(group, [None, ty])
        r_o, r_x = sch.split(red, [None, lanes])
        sch.reorder(step, g_y, r_o, r_x)
        sch.bind(g_y, "threadIdx.y")
        sch.bind(r_x, "threadIdx.x")
        sch.set_scope(amax, 0, "local")
        sch.reverse_compute_at(quant, step)
        b_y, b_x, _ = sch.split(sch.get_loops(quant)[-1], [ty, lanes, knob["vec"]])
        sch.bind(b_y, "threadIdx.y")
        sch.bind(b_x, "threadIdx.x")
        store = find_block(sch, STORE)
        sch.reverse_compute_at(store, step)
        # Split by ty even when the step's loop is shorter (fewer groups than ty): the split guards the extra
        # threadIdx.y (a loop bound with a smaller extent than the launch gets no guard: they wrote past the row).
        _, s_y = sch.split(sch.get_loops(store)[-1], [None, ty])
        sch.bind(s_y, "threadIdx.y")
