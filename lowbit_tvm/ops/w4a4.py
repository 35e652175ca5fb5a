"""Atom's W4A4 main GEMM as TensorIR (the math: ``lowbit_tvm.quant.atom_w4a4``).

:class:`Int4GemmOp`: ``C[m, n] = c * sum_g SA[m, g] S[g, n] P[m, n, g]`` with the int32 partial sums
``P[m, n, g] = sum_{k in group g} a[m, k] w[n, k]`` of int4 codes, ``SA`` the per-token per-group max |x| and
``c = 1/7``. Both operands are bytes holding two codes (``A`` int8 ``[M, K/2]``; the weights in the int8
fragment layout of ``s8_layout``, ``[N/16, K/64, 32, 4]``), so the sum runs over byte ``b`` and nibble ``h``.
Blocks as ``IntGemmOp``'s: ``decode`` (fragment words -> bytes), ``igemm``, ``rescale``, ``epilogue``.
The outlier part is ``IntGemmOp`` (int8 x int8), accumulating onto this one's result.
"""
from dataclasses import dataclass

from ..quant import s8_layout
from ..quant.atom_w4a4 import ACT4_MAX
from ..tvm_api import te, tirx
from .w4a8 import DECODE, EPILOGUE, IGEMM, RESCALE, fragment_value


def nibble(byte, h):
    """Signed int4 code ``h`` (0: low, 1: high) of an int8 ``byte``, as int32; shared by the op and the mma
    intrinsic's description so that tensorize matches them."""
    return (tirx.Cast("int32", byte) << (28 - 4 * h)) >> 28


@dataclass(frozen=True)
class Int4GemmOp:
    """One W4A4 main-part workload.

    Parameters
    ----------
    n, k : int
        Output features and (padded, permuted) input channels (``k`` codes; N % 16 == 0, K % group == 0).
    group : int
        Channels per activation and weight scale (128).
    m : int
        Rows (already padded to the kernel's block tile).
    """

    n: int
    k: int
    group: int
    m: int

    @property
    def groups(self) -> int:
        return self.k // self.group

    @property
    def name(self) -> str:
        return f"w4a4_g{self.group}_m{self.m}_n{self.n}_k{self.k}"

    @property
    def packed_shape(self) -> tuple:
        return (self.n // s8_layout.TILE_N, self.k // (2 * s8_layout.TILE_K), s8_layout.WARP, s8_layout.WORDS[8])

    def to_json(self) -> dict:
        return {"op": "int4_gemm", "m": self.m, "n": self.n, "k": self.k, "group": self.group}

    def prim_func(self) -> tirx.PrimFunc:
        """``(A, SA, B, S, C)``."""
        return int4_gemm_op(self)


def int4_gemm_op(op: Int4GemmOp) -> tirx.PrimFunc:
    """The TensorIR of ``op`` (see :class:`Int4GemmOp`)."""
    tn, tk = s8_layout.TILE_N, s8_layout.TILE_K
    kb, gb = op.k // 2, op.group // 2  # bytes
    a = te.placeholder((op.m, kb), "int8", name="A")
    sa = te.placeholder((op.m, op.groups), "float32", name="SA")
    b = te.placeholder(op.packed_shape, "uint32", name="B")
    s = te.placeholder((op.groups, op.n), "float16", name="S")

    def decode(n, k):
        lane = s8_layout.lane_of(n % tn, k % tk)
        return fragment_value(lambda w: b[n // tn, k // tk, lane, w], 8, n % tn, k % tk)

    w = te.compute((op.n, kb), decode, name=DECODE)
    r = te.reduce_axis((0, gb), name="r")
    h = te.reduce_axis((0, 2), name="h")
    p = te.compute(
        (op.m, op.n, op.groups),
        lambda i, j, g: te.sum(nibble(a[i, g * gb + r], h) * nibble(w[j, g * gb + r], h), axis=[r, h]),
        name=IGEMM,
    )
    rg = te.reduce_axis((0, op.groups), name="g")
    acc = te.compute(
        (op.m, op.n),
        lambda i, j: te.sum(p[i, j, rg].astype("float32") * (s[rg, j].astype("float32") * sa[i, rg]), axis=rg),
        name=RESCALE,
    )
    factor = tirx.const(1.0 / ACT4_MAX, "float32")
    c = te.compute((op.m, op.n), lambda i, j: (acc[i, j] * factor).astype("float16"), name=EPILOGUE)
    func = te.create_prim_func([a, sa, b, s, c])
    return func.with_attr({"global_symbol": op.name, "tir.noalias": True})
