"""The BCQ LUT-GEMM operator as TensorIR (LUT-GEMM, arXiv 2206.09557).

Weights are binary-coding quantized (``lowbit_tvm.quant.bcq``): ``w = offset + sum_b alpha_b * B_b`` per group,
``B_b`` in {-1, +1} stored as bit planes. For every ``MU = 8`` activations the op has a table of all 256
signed sums ``sum_e (+-1) x_e`` (block ``lut``), built from two 16-entry half tables of 4 activations each
(block ``lut_half``: one add per entry instead of an 8-term sum). Each output row then needs one lookup per
bit plane per 8 weights, indexed by that plane's byte and scaled by the group's alpha (block ``matmul``). The
offset term ``offset_g * sum(x in group)`` is folded into the same reduction, once per 32-activation word,
with the word sums of block ``word_sum``. No weight is ever dequantized. Accumulation is fp32, the result fp16
(block ``cast``).

Arguments: ``A [M, K] f16, P [bits, N, Kp/32] u32, alphas [N, G, bits] f16, offsets [N, G] f16 -> C [M, N] f16``.
``P`` is the quantizer's plane layout (``kernel_planes``), its words padded with zeros up to ``Kp``, K rounded
up to ``k_multiple`` (padded activations read as zero, so padded words add nothing).
"""
import numpy as np

from dataclasses import dataclass

from ..quant.bcq import BITS_PER_WORD, BCQScheme
from ..tvm_api import te, tirx

MU = 8  # activations per lookup table (one byte of a plane word)
MAX_M = 8  # batch rows: the tables (and lookups) grow with every row
HALF = 4  # activations per half table
BYTES = BITS_PER_WORD // MU  # tables per plane word
LUT_HALF = "lut_half"
LUT = "lut"
WORD_SUM = "word_sum"
MATMUL = "matmul"
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
        Batch rows, 1 to ``MAX_M``.
    k_multiple : int
        The planes' K is padded up to a multiple of this (a multiple of 32): the schedule's K tile.

    Raises
    ------
    ValueError
        If ``m`` is outside 1..``MAX_M``.
    """

    n: int
    k: int
    scheme: BCQScheme
    m: int
    k_multiple: int = BITS_PER_WORD

    def __post_init__(self):
        if not 1 <= self.m <= MAX_M:
            raise ValueError(
                f"BCQ LUT-GEMM serves batches of 1 to {MAX_M} rows (every row needs its own lookup tables), "
                f"got M={self.m}; for larger batches convert the weights with quant.bcq and use the W4A16 "
                "tensor-core kernel, or split the batch"
            )

    @property
    def k_padded(self) -> int:
        """K rounded up to ``k_multiple``: the planes' K."""
        return -(-self.k // self.k_multiple) * self.k_multiple

    @property
    def name(self) -> str:
        """A symbol-safe name, e.g. ``bcq3_g128_m1_n4096_k4096`` (``_kp<Kp>`` appended when padded)."""
        group = "pc" if self.scheme.group_size < 0 else f"g{self.scheme.group_size}"
        pad = "" if self.k_padded == self.k else f"_kp{self.k_padded}"
        return f"bcq{self.scheme.bits}_{group}_m{self.m}_n{self.n}_k{self.k}{pad}"

    def prim_func(self) -> tirx.PrimFunc:
        """The unscheduled TensorIR function (see the module docstring for its arguments)."""
        return bcq_lut_op(self)


def kernel_planes(bw, k_multiple: int = BITS_PER_WORD) -> np.ndarray:
    """The op's plane argument for a ``BCQWeight``: ``[bits, N, Kp/32]``, zero-padded, contiguous."""
    words = bw.planes.shape[2]
    padded = -(-words * BITS_PER_WORD // k_multiple) * k_multiple // BITS_PER_WORD
    return np.ascontiguousarray(np.pad(bw.planes, ((0, 0), (0, 0), (0, padded - words))))


def _sign(pattern, e):
    """+1.0 where bit ``e`` of the table index is set, else -1.0."""
    bit = tirx.bitwise_and(tirx.shift_right(pattern, e), 1)
    return (bit * 2 - 1).astype("float32")


def _sum(terms):
    """The sum of ``terms`` as one expression (no reduction block: the tables are plain element-wise writes)."""
    terms = list(terms)
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    return total


def _activation(a, op):
    """``A[i, k]`` as fp32, zero for the padded ``k >= K``."""
    if op.k_padded == op.k:
        return lambda i, k: a[i, k].astype("float32")
    return lambda i, k: tirx.if_then_else(k < op.k, a[i, tirx.min(k, op.k - 1)], tirx.const(0, "float16")).astype(
        "float32"
    )


def _tables(a, op):
    """Blocks ``lut_half`` (4-activation tables), ``lut`` (8-activation tables) and ``word_sum`` (per word)."""
    act = _activation(a, op)
    half = te.compute(
        (op.m, op.k_padded // HALF, 1 << HALF),
        lambda i, h, q: _sum(act(i, h * HALF + e) * _sign(q, e) for e in range(HALF)),
        name=LUT_HALF,
    )
    lut = te.compute(
        (op.m, op.k_padded // MU, 1 << MU),
        lambda i, c, p: half[i, c * 2, tirx.bitwise_and(p, 15)] + half[i, c * 2 + 1, tirx.shift_right(p, 4)],
        name=LUT,
    )
    word_sum = te.compute(
        (op.m, op.k_padded // BITS_PER_WORD),
        lambda i, w: _sum(half[i, w * (BITS_PER_WORD // HALF) + h, 15] for h in range(BITS_PER_WORD // HALF)),
        name=WORD_SUM,
    )
    return lut, word_sum


def bcq_lut_op(op: BCQLutOp) -> tirx.PrimFunc:
    """Build the TensorIR of ``op``.

    Raises
    ------
    ValueError
        If K is not a multiple of 32, the group size does not divide K or ``k_multiple`` is not a multiple of 32.
    """
    if op.k % BITS_PER_WORD or op.k % op.scheme.group_len(op.k) or op.k_multiple % BITS_PER_WORD:
        raise ValueError(
            f"BCQ LUT-GEMM needs K % 32 == 0, whole groups and k_multiple % 32 == 0, got K={op.k}, "
            f"{op.scheme.name}, k_multiple={op.k_multiple}"
        )
    bits, groups, glen = op.scheme.bits, op.scheme.groups(op.k), op.scheme.group_len(op.k)
    words = op.k_padded // BITS_PER_WORD
    a = te.placeholder((op.m, op.k), "float16", name="A")
    planes = te.placeholder((bits, op.n, words), "uint32", name="P")
    alphas = te.placeholder((op.n, groups, bits), "float16", name="alphas")
    offsets = te.placeholder((op.n, groups), "float16", name="offsets")
    lut, word_sum = _tables(a, op)
    w = te.reduce_axis((0, words), name="w")
    b = te.reduce_axis((0, bits), name="b")
    jb = te.reduce_axis((0, BYTES), name="jb")

    def term(i, j):
        g = tirx.min(w * BITS_PER_WORD // glen, groups - 1)
        byte = tirx.bitwise_and(tirx.shift_right(planes[b, j, w], (jb * MU).astype("uint32")), 255)
        look = alphas[j, g, b].astype("float32") * lut[i, w * BYTES + jb, byte.astype("int32")]
        offset = offsets[j, g].astype("float32") * word_sum[i, w]
        first = tirx.all(b == 0, jb == 0)
        return te.sum(look + tirx.if_then_else(first, offset, tirx.const(0, "float32")), axis=[w, b, jb])

    acc = te.compute((op.m, op.n), term, name=MATMUL)
    out = te.compute((op.m, op.n), lambda i, j: acc[i, j].astype("float16"), name=CAST)
    func = te.create_prim_func([a, planes, alphas, offsets, out])
    return func.with_attr({"global_symbol": op.name, "tir.noalias": True})
