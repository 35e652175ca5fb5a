"""BCQ weights decoded to fp16 inside a matmul: the model graph's BCQ path for more than one row.

The LUT-GEMM operator (``ops.bcq_lut``) serves 1 to 8 static rows; prefill and batched decode steps have
dynamic rows, so there the weights are decoded in the matmul's prologue instead (block ``decode``:
``w = offset + sum_b alpha_b * (2 * bit_b - 1)``, computed in fp32 and rounded to fp16, as the float16
weights a dequantized checkpoint would hold), followed by an fp32-accumulated matmul (block ``matmul``)
and the fp16 result (block ``cast``). On CUDA dlight schedules it with the decode inlined into the matmul's
loads (its GEMV, low-batch GEMV and matmul rules all take such a prologue).

Arguments: ``x [M, K] f16, P [bits, N, Kp/32] u32, alphas [N, G, bits] f16, offsets [N, G] f16 -> [M, N] f16``
(the LUT operator's weight arguments; plane words beyond K are ignored).
"""
from dataclasses import dataclass

from ..quant.bcq import BITS_PER_WORD, BCQScheme
from ..tvm_api import te, tirx

DECODE = "decode"
MATMUL = "matmul"
CAST = "cast"


@dataclass(frozen=True)
class BCQMatmulOp:
    """One decode-then-matmul BCQ workload (the cache key of its PrimFunc).

    Parameters
    ----------
    n, k : int
        Output and input features (K a multiple of 32 and of the group size).
    scheme : BCQScheme
        Bits, group size and offset of the weights.
    k_padded : int
        K of the plane words (``>= k``; the LUT operator pads it to its K tile).
    m : int or None
        Static rows, or None for dynamic.
    """

    n: int
    k: int
    scheme: BCQScheme
    k_padded: int
    m: int | None = None

    def prim_func(self) -> tirx.PrimFunc:
        """The unscheduled TensorIR function (see the module docstring for its arguments)."""
        return bcq_matmul(self)


def _decoded(planes, alphas, offsets, op: BCQMatmulOp):
    """Block ``decode``: the fp16 weight ``[N, K]``."""
    glen = op.scheme.group_len(op.k)

    def value(j, kk):
        g = kk // glen
        total = offsets[j, g].astype("float32")
        for b in range(op.scheme.bits):
            word = planes[b, j, kk // BITS_PER_WORD]
            bit = tirx.bitwise_and(tirx.shift_right(word, (kk % BITS_PER_WORD).astype("uint32")), tirx.const(1, "uint32"))
            sign = bit.astype("float32") * tirx.const(2.0, "float32") - tirx.const(1.0, "float32")
            total = total + alphas[j, g, b].astype("float32") * sign
        return total.astype("float16")

    return te.compute((op.n, op.k), value, name=DECODE)


def bcq_matmul(op: BCQMatmulOp) -> tirx.PrimFunc:
    """Build the TensorIR of ``op``.

    Raises
    ------
    ValueError
        If K is not a multiple of 32 and of the group size, or ``k_padded`` is smaller than K or not a
        multiple of 32.
    """
    if op.k % BITS_PER_WORD or op.k % op.scheme.group_len(op.k) or op.k_padded < op.k or op.k_padded % BITS_PER_WORD:
        raise ValueError(f"BCQ matmul needs K % 32 == 0, whole groups and 32 | k_padded >= K, got K={op.k}, "
                         f"{op.scheme.name}, k_padded={op.k_padded}")
    bits, groups = op.scheme.bits, op.scheme.groups(op.k)
    m = tirx.Var("m", "int32") if op.m is None else op.m
    x = te.placeholder((m, op.k), "float16", name="x")
    planes = te.placeholder((bits, op.n, op.k_padded // BITS_PER_WORD), "uint32", name="P")
    alphas = te.placeholder((op.n, groups, bits), "float16", name="alphas")
    offsets = te.placeholder((op.n, groups), "float16", name="offsets")
    w = _decoded(planes, alphas, offsets, op)
    r = te.reduce_axis((0, op.k), name="k")
    acc = te.compute((m, op.n), lambda i, j: te.sum(x[i, r].astype("float32") * w[j, r].astype("float32"), axis=r),
                     name=MATMUL)
    out = te.compute((m, op.n), lambda i, j: acc[i, j].astype("float16"), name=CAST)
    return te.create_prim_func([x, planes, alphas, offsets, out])
