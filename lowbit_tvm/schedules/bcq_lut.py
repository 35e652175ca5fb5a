"""BCQ LUT-GEMM on CUDA cores: lookup tables in shared memory, one table shared by a block of rows.

Each thread owns one output row (all M batch rows of it). Per K step of ``8 * chunks`` the block's threads
build the step's tables together in shared memory (256 signed sums of 8 activations per chunk and batch row),
then each thread walks its row's bit-plane bytes: one lookup per plane and chunk, scaled by the group's alpha,
accumulated in fp32. The per-group activation sums for the offset term are a separate tiny kernel.

First version: correct and simple. Not yet: coalesced plane loads (rows are far apart in the plane layout),
the tables' cheaper incremental construction, a K split.
"""
from dataclasses import dataclass

from ..ops.bcq_lut import CAST, GROUP_SUM, LUT, MATMUL, OFFSET
from .rule import ScheduleRule, find_block, loops_inside


@dataclass(frozen=True)
class BCQLutConfig:
    """Knobs of the BCQ LUT-GEMM schedule."""

    rows: int = 128  # output rows (threads) per block, sharing one set of tables
    chunks: int = 16  # tables (8 activations each) per K step: shared memory = M * chunks * 1 KiB


def bcq_lut_config(m: int, n: int, k: int) -> BCQLutConfig:
    """A config that tiles the workload exactly and keeps the tables within 16 KiB of shared memory."""
    rows = next((r for r in (128, 64, 32) if n % r == 0), None)
    if rows is None:
        raise ValueError(f"BCQ LUT-GEMM needs N divisible by 32, got N={n}")
    chunks = max(1, 16 // m)
    while (k // 8) % chunks:
        chunks //= 2
    return BCQLutConfig(rows, chunks)


class BCQLut(ScheduleRule):
    """CUDA rule for the BCQ LUT-GEMM operator (``lowbit_tvm.ops.bcq_lut``)."""

    name = "bcq-lut"
    Config = BCQLutConfig
    SPACE = {"rows": (64, 128, 256), "chunks": (8, 16, 32)}

    def schedule(self, sch, target, tunable=False, config=None):
        blocks = [find_block(sch, name) for name in (LUT, GROUP_SUM, MATMUL, OFFSET, CAST)]
        if any(block is None for block in blocks):
            return False
        lut, group_sum, matmul, offset, cast = blocks
        knob = self.knobs(sch, tunable, config)
        thread = self._rows(sch, cast, knob)
        sch.compute_at(matmul, thread)
        sch.set_scope(matmul, 0, "local")
        sch.compute_at(offset, thread)
        sch.set_scope(offset, 0, "local")
        step = self._k_steps(sch, matmul, thread, knob)
        self._tables(sch, lut, step, knob)
        self._group_sums(sch, group_sum)
        return True

    @staticmethod
    def _rows(sch, cast, knob):
        i, j = sch.get_loops(cast)
        block, thread = sch.split(j, [None, knob["rows"]])
        sch.reorder(block, thread, i)
        sch.bind(block, "blockIdx.x")
        sch.bind(thread, "threadIdx.x")
        return thread

    @staticmethod
    def _k_steps(sch, matmul, thread, knob):
        """Split the chunk loop into K steps; batch rows innermost so a plane byte serves all of them."""
        own = loops_inside(sch, matmul, thread)
        chunk, plane = own[-2:]
        step, inner = sch.split(chunk, [None, knob["chunks"]])
        if len(own) == 3:  # M > 1 keeps its batch loop
            sch.reorder(step, inner, plane, own[0])
        return step

    @staticmethod
    def _tables(sch, lut, step, knob):
        """The step's tables in shared memory, built by all the block's threads."""
        sch.compute_at(lut, step)
        sch.set_scope(lut, 0, "shared")
        own = loops_inside(sch, lut, step)
        fused = sch.fuse(*own[:-1])  # batch row, chunk, pattern (the last loop is the 8-term sum)
        _, thread = sch.split(fused, [None, knob["rows"]])
        sch.bind(thread, "threadIdx.x")

    @staticmethod
    def _group_sums(sch, group_sum):
        row, group, _ = sch.get_loops(group_sum)
        block, thread = sch.split(sch.fuse(row, group), [None, 64])
        sch.bind(block, "blockIdx.x")
        sch.bind(thread, "threadIdx.x")
