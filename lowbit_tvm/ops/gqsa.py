"""The GQSA block-sparse int4 matmul as TensorIR.

``C[M, N] = A[M, K] @ W[N, K]^T`` where row ``n`` of ``W`` holds ``slots`` groups of ``g`` int4 weights, group
``s`` at columns ``Idx[n, s] * g ... + g`` (``lowbit_tvm.quant.gqsa.to_slots``: a row's kept groups, then padding
groups of weight 0). Arguments: ``A (M, K) f16``, ``B (N, slots * g / 8) u32`` (a row's groups one after
another, eight codes per word as in ``lowbit_tvm.quant.int4``), ``S (N, slots) f16`` group scales,
``Idx (N, slots) i32`` column blocks, ``C (M, N) f16``.

Blocks: ``gather`` copies the eight activations of packed word ``w`` of row ``n``
(``A[i, Idx[n, w / (g/8)] * g + (w % (g/8)) * 8 + j]``, contiguous); then as the W4A16 word GEMV
(``lowbit_tvm.ops.w4a16``, ``reduction="word"``) ``dot`` is the fp16 dot product of the word's eight codes
(minus 8) with them (the shape the GEMV's tensor intrinsic matches), ``matmul`` sums those in fp32 times the
group scale, and
``cast`` writes fp16. Only the kept groups' weights are read; activations are gathered by column block.
"""
from dataclasses import dataclass, replace

from ..quant.gqsa import GROUP_SIZES
from ..tvm_api import te, tirx
from .w4a16 import CAST, DOT, MATMUL, word_dot

__all__ = ["CAST", "DOT", "GATHER", "MATMUL", "GQSAOp"]

GATHER = "gather"


@dataclass(frozen=True)
class GQSAOp:
    """One GQSA workload: the key of caches, tuning records and benchmark rows.

    Parameters
    ----------
    n, k : int
        Output and input features.
    group : int
        Weights per group (16, 32, 64, 128).
    slots : int
        Groups stored per row (the largest kept count of a row, padded up; see ``to_slots``).
    m : int
        Batch rows (static).
    """

    n: int
    k: int
    group: int
    slots: int
    m: int = 1

    def __post_init__(self):
        if self.group not in GROUP_SIZES or self.k % self.group:
            raise ValueError(f"group must be one of {GROUP_SIZES} and divide K, got group={self.group}, K={self.k}")
        if not 0 < self.slots:
            raise ValueError(f"slots must be positive, got {self.slots}")

    @property
    def name(self) -> str:
        """A symbol-safe name, e.g. ``gqsa_g64_m1_n4096_k4096_s32``."""
        return f"gqsa_g{self.group}_m{self.m}_n{self.n}_k{self.k}_s{self.slots}"

    @property
    def words(self) -> int:
        """Packed words per row."""
        return self.slots * self.group // 8

    def with_m(self, m: int) -> "GQSAOp":
        """The same weights at another batch size."""
        return replace(self, m=m)

    def to_json(self) -> dict:
        """A JSON-ready record."""
        return {"op": "gqsa", "m": self.m, "n": self.n, "k": self.k, "group": self.group, "slots": self.slots}

    def arg_specs(self) -> list:
        """``(name, shape, dtype)`` of each argument, in order."""
        return [("x", (self.m, self.k), "float16"), ("words", (self.n, self.words), "uint32"),
                ("scales", (self.n, self.slots), "float16"), ("indices", (self.n, self.slots), "int32"),
                ("out", (self.m, self.n), "float16")]

    def prim_func(self) -> tirx.PrimFunc:
        """The unscheduled TensorIR function ``(A, B, S, Idx, C)``."""
        return gqsa_op(self)


def gqsa_op(op: GQSAOp) -> tirx.PrimFunc:
    """Build the TensorIR of ``op`` (see the module docstring)."""
    per_group = op.group // 8
    a = te.placeholder((op.m, op.k), "float16", name="A")
    b = te.placeholder((op.n, op.words), "uint32", name="B")
    s = te.placeholder((op.n, op.slots), "float16", name="S")
    idx = te.placeholder((op.n, op.slots), "int32", name="Idx")

    gathered = te.compute(
        (op.m, op.n, op.words, 8),
        lambda i, n, w, j: a[i, idx[n, w // per_group] * op.group + (w % per_group) * 8 + j],
        name=GATHER,
    )
    d = te.compute(
        (op.m, op.n, op.words),
        lambda i, n, w: word_dot(b[n, w], [gathered[i, n, w, j] for j in range(8)], tirx.const(1032.0, "float16")),
        name=DOT,
    )
    r = te.reduce_axis((0, op.words), name="w")
    acc = te.compute(
        (op.m, op.n),
        lambda i, n: te.sum(d[i, n, r].astype("float32") * s[n, r // per_group].astype("float32"), axis=r),
        name=MATMUL,
    )
    c = te.compute((op.m, op.n), lambda i, n: acc[i, n].astype("float16"), name=CAST)
    func = te.create_prim_func([a, b, s, idx, c])
    return func.with_attr({"global_symbol": op.name, "tir.noalias": True})
