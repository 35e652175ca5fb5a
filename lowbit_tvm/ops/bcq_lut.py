"""The BCQ LUT-GEMM operator as TensorIR (LUT-GEMM, arXiv 2206.09557).

Weights are binary-coding quantized (``lowbit_tvm.quant.bcq``): ``w = offset + sum_b alpha_b * B_b`` per group,
``B_b`` in {-1, +1} stored as bit planes. For every ``MU = 8`` activations the op builds a table of all 256
signed sums ``sum_e (+-1) x_e`` once (block ``lut``); each output row then needs one lookup per bit plane per
8 weights, indexed by that plane's byte, scaled by the group's alpha (block ``matmul``), plus the offset times
the group's activation sum (blocks ``group_sum`` and ``offset``). No weight is ever dequantized. Accumulation
is fp32, the result fp16 (block ``cast``).

Arguments: ``A [M, K] f16, P [bits, K/32, N] u32, alphas [N, G, bits] f16, offsets [N, G] f16 -> C [M, N] f16``.
The planes are the quantizer's ``[bits, N, K/32]`` transposed (``kernel_planes``), so that threads owning
neighbouring output rows read neighbouring words.
"""
import numpy as np

from dataclasses import dataclass

from ..quant.bcq import BITS_PER_WORD, BCQScheme
from ..tvm_api import te, tirx

MU = 8  # activations per lookup table (one byte of a plane word)
LUT = "lut"
GROUP_SUM = "group_sum"
MATMUL = "matmul"
OFFSET = "offset"
CAST = "cast"


@dataclass(frozen=True)
class BCQLutOp:
    """One BCQ LUT-GEMM workload: the key of caches, tuning records and benchmark rows.

    Parameters
    ----------
    n, k : int
        Output features and input features (K a multiple of 32).
    scheme : BCQScheme
        Bits, group size and offset of the weights.
    m : int
        Batch rows.
    """

    n: int
    k: int
    scheme: BCQScheme
    m: int

    @property
    def name(self) -> str:
        """A symbol-safe name, e.g. ``bcq3_g128_m1_n4096_k4096``."""
        group = "pc" if self.scheme.group_size < 0 else f"g{self.scheme.group_size}"
        return f"bcq{self.scheme.bits}_{group}_m{self.m}_n{self.n}_k{self.k}"

    def prim_func(self) -> tirx.PrimFunc:
        """The unscheduled TensorIR function (see the module docstring for its arguments)."""
        return bcq_lut_op(self)


def kernel_planes(bw) -> np.ndarray:
    """The op's plane argument for a ``BCQWeight``: ``[bits, K/32, N]``, contiguous."""
    return np.ascontiguousarray(bw.planes.transpose(0, 2, 1))


def _sign(pattern, e):
    """+1.0 where bit ``e`` of the table index is set, else -1.0."""
    bit = tirx.bitwise_and(tirx.shift_right(pattern, e), 1)
    return (bit * 2 - 1).astype("float32")


def bcq_lut_op(op: BCQLutOp) -> tirx.PrimFunc:
    """Build the TensorIR of ``op``.

    Raises
    ------
    ValueError
        If K is not a multiple of 32 or the group size does not divide K.
    """
    if op.k % BITS_PER_WORD or op.k % op.scheme.group_len(op.k):
        raise ValueError(f"BCQ LUT-GEMM needs K % 32 == 0 and whole groups, got K={op.k}, {op.scheme.name}")
    bits, groups, glen = op.scheme.bits, op.scheme.groups(op.k), op.scheme.group_len(op.k)
    chunks = op.k // MU
    a = te.placeholder((op.m, op.k), "float16", name="A")
    planes = te.placeholder((bits, op.k // BITS_PER_WORD, op.n), "uint32", name="P")
    alphas = te.placeholder((op.n, groups, bits), "float16", name="alphas")
    offsets = te.placeholder((op.n, groups), "float16", name="offsets")
    e = te.reduce_axis((0, MU), name="e")
    lut = te.compute(
        (op.m, chunks, 1 << MU),
        lambda i, c, p: te.sum(a[i, c * MU + e].astype("float32") * _sign(p, e), axis=e),
        name=LUT,
    )
    kk = te.reduce_axis((0, glen), name="kk")
    group_sum = te.compute(
        (op.m, groups), lambda i, g: te.sum(a[i, g * glen + kk].astype("float32"), axis=kk), name=GROUP_SUM
    )
    c = te.reduce_axis((0, chunks), name="c")
    b = te.reduce_axis((0, bits), name="b")

    def lookup(i, j):
        word = planes[b, c // (BITS_PER_WORD // MU), j]
        byte = tirx.bitwise_and(tirx.shift_right(word, (c % (BITS_PER_WORD // MU) * MU).astype("uint32")), 255)
        alpha = alphas[j, c * MU // glen, b].astype("float32")
        return te.sum(alpha * lut[i, c, byte.astype("int32")], axis=[c, b])

    acc = te.compute((op.m, op.n), lookup, name=MATMUL)
    g = te.reduce_axis((0, groups), name="g")
    offset = te.compute(
        (op.m, op.n),
        lambda i, j: te.sum(offsets[j, g].astype("float32") * group_sum[i, g], axis=g),
        name=OFFSET,
    )
    out = te.compute((op.m, op.n), lambda i, j: (acc[i, j] + offset[i, j]).astype("float16"), name=CAST)
    func = te.create_prim_func([a, planes, alphas, offsets, out])
    return func.with_attr({"global_symbol": op.name, "tir.noalias": True})
