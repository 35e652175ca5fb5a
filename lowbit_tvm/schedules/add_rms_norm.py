"""Schedule rule for the fused residual add + RMSNorm (``models.add_rms_norm``): one kernel, one block per row.

Each block reduces the squares of its row's sum across its threads, then writes the sum and the normalized
row (the sum is recomputed from the inputs, so no thread reads what another wrote). It replaces two kernels
(an add, then a norm that reads the sum back) twice in every decoder layer.
"""
from dataclasses import dataclass

from ..tvm_api import Schedule, Target
from .rule import ScheduleRule, find_block


@dataclass(frozen=True)
class AddRMSNormConfig:
    """Knobs: ``threads`` per block (one row per block)."""

    threads: int = 256


class AddRMSNorm(ScheduleRule):
    """The ``sum_squares`` and ``normed_v0/v1`` blocks of ``ops.add_rms_norm`` -> one kernel."""

    name = "add_rms_norm"
    Config = AddRMSNormConfig
    SPACE = {"threads": (128, 256, 512, 1024)}

    def schedule(self, sch: Schedule, target: Target, tunable: bool = False, config=None) -> bool:
        squares, normed = find_block(sch, "sum_squares"), find_block(sch, "normed_v1")
        if squares is None or normed is None or target.kind.name != "cuda":
            return False
        threads = self.knobs(sch, tunable, config)["threads"]
        row, col = sch.get_loops(normed)  # shared with the sum's block, "normed_v0"
        sch.bind(row, "blockIdx.x")
        _, tx = sch.split(col, [None, threads])
        sch.bind(tx, "threadIdx.x")
        sch.compute_at(squares, row)
        sch.set_scope(squares, 0, "shared")  # one value per block, read by all its threads
        _, tx = sch.split(sch.get_loops(squares)[-1], [None, threads])
        sch.bind(tx, "threadIdx.x")
        return True
