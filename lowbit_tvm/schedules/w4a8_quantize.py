"""The fused reorder + per-token activation quantization kernel (``lowbit_tvm.ops.w4a8.ActQuantOp``).

One CUDA block per token row: its ``threads`` threads gather the row through the permutation (main channels
first, outlier channels last), reduce ``max |x|`` of each part across the block (TVM's cross-thread
allreduce: warp shuffles, then shared memory; the maxima are the op's scale output), and write the int8 codes
of the main part and of the outliers (each thread ``vec`` consecutive bytes). Padding rows (beyond M) get zeros.
"""
from dataclasses import dataclass

from ..ops.w4a8 import AMAX, GATHER, QUANT, STORE
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
        knob = self.knobs(sch, tunable, config)
        sch.compute_inline(gather)
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
