"""The W4A16 group-quantized matmul as TensorIR.

``C[M, N] = A[M, K] @ dequant(B)[N, K]^T`` with fp16 activations, int4 weights packed eight to a
``uint32`` (``layout="rows"``: ``[N, K/8]``, nibble ``j`` of word ``w`` holds ``k = 8 w + j``;
``layout="mma"``: ``[N/16, K/16, 32]`` tensor-core fragments, see ``lowbit_tvm.quant.mma_layout``), fp16 group
scales (and fp16 zeros for the asymmetric scheme), fp32 accumulation and an fp16 result. ``M`` may be
symbolic (dynamic batch).

The function has three blocks that the schedule rules look for by name: ``decode`` (int4 -> fp16),
``matmul`` (fp32 accumulation) and ``cast`` (fp32 -> fp16 epilogue).

``reduction="word"`` (for the CUDA-core GEMVs) sums in two levels instead: a ``dot`` block takes fp16 dot
products of packed codes (minus the zero point, no scale) with their activations, and ``matmul`` adds those
in fp32, each times its group scale. The scale is then applied once per word instead of once per weight,
and the in-word sums map onto ``half2`` arithmetic (see ``lowbit_tvm.schedules.gemv_intrinsics``). On
``"rows"`` weights a dot covers one word (8 codes of one row); on ``"mma"`` weights it covers the four words
of lanes ``4r .. 4r + 3`` of a 16x16 tile, i.e. 16 codes of tile row ``r`` (``half=0``) or ``r + 8``
(``half=1``), so ``matmul`` is ``[M, N/16, 2, 8]`` and ``cast`` puts it back in ``[M, N]`` order. These dots
always take codes minus 8; for asymmetric schemes ``matmul`` subtracts ``(zero - 8) * asum`` in fp32, where
``asum`` holds the sums of each 16 activations (small, so little is lost to cancellation).
"""
import functools
import operator
from dataclasses import dataclass, replace

from ..quant import Int4Scheme
from ..quant import mma_layout
from ..tvm_api import te, tirx

DECODE = "decode"
DOT = "dot"
ASUM = "asum"
MATMUL = "matmul"
CAST = "cast"
REDUCTIONS = ("flat", "word")


@dataclass(frozen=True)
class W4A16Op:
    """One W4A16 workload: the key of caches, tuning records and benchmark rows.

    Parameters
    ----------
    n, k : int
        Output features and input features.
    scheme : Int4Scheme
        Group size and symmetry of the weights.
    m : int or None
        Batch rows; ``None`` builds a function with a dynamic ``M``.
    decode_dtype : str
        What the weights are decoded to before the fp32 multiply-add: ``"float16"`` for tensor cores,
        ``"float32"`` for CUDA-core kernels (exact, and no conversion instruction per weight).
    layout : str
        ``"rows"`` (``[N, K/8]`` words) or ``"mma"`` (pre-shuffled tensor-core fragments).
    reduction : str
        ``"flat"``: one fp32 sum over K of decoded, scaled weights. ``"word"``: fp16 dot products per packed
        word (``"rows"``) or per tile row and four words (``"mma"``), summed in fp32 times the group scale;
        ``decode_dtype`` is then unused.
    """

    n: int
    k: int
    scheme: Int4Scheme
    m: int | None = None
    decode_dtype: str = "float16"
    layout: str = "rows"
    reduction: str = "flat"

    @property
    def name(self) -> str:
        """A symbol-safe name, e.g. ``w4a16_g128_m16_n4096_k4096``."""
        m = "dyn" if self.m is None else str(self.m)
        scheme = self.scheme.name.replace("w4a16-", "").replace("-", "_")
        decode = "" if self.decode_dtype == "float16" else "_d32"
        layout = "" if self.layout == "rows" else f"_{self.layout}"
        if self.reduction == "word":
            return f"w4a16_{scheme}_m{m}_n{self.n}_k{self.k}_wd{layout}"
        return f"w4a16_{scheme}_m{m}_n{self.n}_k{self.k}{decode}{layout}"

    def with_m(self, m: int | None) -> "W4A16Op":
        """The same weights at another batch size."""
        return replace(self, m=m)

    def with_decode(self, decode_dtype: str) -> "W4A16Op":
        """The same workload decoding weights to ``decode_dtype``."""
        return replace(self, decode_dtype=decode_dtype)

    def with_layout(self, layout: str) -> "W4A16Op":
        """The same workload with its weights packed in ``layout``."""
        return replace(self, layout=layout)

    def with_reduction(self, reduction: str) -> "W4A16Op":
        """The same workload summed as ``reduction`` (``"flat"`` or ``"word"``)."""
        return replace(self, reduction=reduction)

    @property
    def packed_shape(self) -> tuple:
        """Shape of the packed uint32 weight argument."""
        if self.layout == "mma":
            return (self.n // mma_layout.TILE, self.k // mma_layout.TILE, mma_layout.WARP)
        return (self.n, self.k // 8)

    def to_json(self) -> dict:
        """A JSON-ready record of this workload."""
        return {
            "op": "w4a16",
            "m": self.m,
            "n": self.n,
            "k": self.k,
            "scheme": self.scheme.to_json(),
            "decode_dtype": self.decode_dtype,
            "layout": self.layout,
        } | ({"reduction": self.reduction} if self.reduction != "flat" else {})

    def prim_func(self) -> tirx.PrimFunc:
        """The unscheduled TensorIR function ``(A, B, S[, Z], C)``."""
        return w4a16_op(self)


# Decoding without conversion instructions: OR-ing a 4-bit code q into the mantissa of a power of two
# gives that power plus q exactly (fp16: 0x6400 = 1024, fp32: 0x4B000000 = 2^23). Subtracting
# (power + zero) then leaves q - zero exactly, at the cost of one logic op and one add.
_MAGIC = {
    "float16": ("uint16", 0x6400, 1024.0),
    "float32": ("uint32", 0x4B000000, 8388608.0),
}


def _code_rows(b, n, k):
    shift = (k % 8 * 4).astype("uint32")
    return (b[n, k // 8] >> shift) & tirx.const(15, "uint32")


def _code_mma(b, n, k):
    tile = mma_layout.TILE
    i, j = n % tile, k % tile
    lane, _ = mma_layout.fragment_position(i, j)
    shift = (mma_layout.nibble_of(i, j) * 4).astype("uint32")
    return (b[n // tile, k // tile, lane] >> shift) & tirx.const(15, "uint32")


_LAYOUTS = {"rows": _code_rows, "mma": _code_mma}


def _decode_fn(b, s, z, group, dtype, layout):
    bits, magic, power = _MAGIC[dtype]
    code_of = _LAYOUTS[layout]

    def decode(n, k):
        code = code_of(b, n, k)
        biased = tirx.reinterpret(dtype, (code | tirx.const(magic, "uint32")).astype(bits))
        if z is None:
            offset = tirx.const(power + 8, dtype)
        else:
            offset = z[n, k // group].astype(dtype) + tirx.const(power, dtype)
        return (biased - offset) * s[n, k // group].astype(dtype)

    return decode


def word_dot(word, acts, offset):
    """The fp16 dot product of one packed word's codes minus ``offset - 1024`` with ``acts``.

    Parameters
    ----------
    word : PrimExpr
        A uint32 holding eight 4-bit codes, nibble ``j`` for activation ``j``.
    acts : list of PrimExpr
        The eight fp16 activations.
    offset : PrimExpr
        fp16 ``1024 + zero point`` (1032 for symmetric schemes).

    Returns
    -------
    PrimExpr
        fp16 ``sum_j (code_j - zero) * acts[j]``: the op's ``dot`` block and the GEMV intrinsic's description
        share this expression, so tensorize matches it.
    """
    terms = []
    for j, act in enumerate(acts):
        code = (word >> tirx.const(4 * j, "uint32")) & tirx.const(15, "uint32")
        biased = tirx.reinterpret("float16", (code | tirx.const(0x6400, "uint32")).astype("uint16"))
        terms.append((biased - offset) * act)
    return functools.reduce(operator.add, terms)


# The nibbles of an "mma" word that hold tile row r (half 0) and the activations they multiply: nibble
# (with 2 * half added) -> offset of the activation within the word's pair block (see quant.mma_layout:
# nibbles p, p + 4 hold fragment registers 2p, 2p + 1; registers 0-3 are row r, K 2q, 2q + 1, 2q + 8, 2q + 9).
_MMA_NIBBLE_ACTS = ((0, 0), (4, 1), (1, 8), (5, 9))


def mma_word_dot(words, acts, offset, half):
    """fp16 dot product of 16 codes of one tile row with the tile's 16 activations.

    Parameters
    ----------
    words : list of PrimExpr
        The uint32 words of lanes ``4r .. 4r + 3`` of a 16x16 ``"mma"`` tile.
    acts : list of PrimExpr
        The tile's 16 fp16 activations (K order).
    offset : PrimExpr
        fp16 ``1024 + zero point`` (the op uses 1032: codes minus 8).
    half : int or PrimExpr
        0 for tile row ``r``, 1 for row ``r + 8``.

    Returns
    -------
    PrimExpr
        fp16 ``sum (code - zero) * act``; the op's ``dot`` block and the GEMV intrinsic share it.
    """
    terms = []
    for q, word in enumerate(words):
        for nibble, act in _MMA_NIBBLE_ACTS:
            if isinstance(half, int):
                shift = tirx.const(4 * nibble + 8 * half, "uint32")
            else:
                shift = tirx.const(4 * nibble, "uint32") + half.astype("uint32") * tirx.const(8, "uint32")
            code = (word >> shift) & tirx.const(15, "uint32")
            biased = tirx.reinterpret("float16", (code | tirx.const(0x6400, "uint32")).astype("uint16"))
            terms.append((biased - offset) * acts[2 * q + act])
    return functools.reduce(operator.add, terms)


def _mma_word_op(op: W4A16Op, a, b, s, z, m):
    """``dot`` per (tile, row pair), ``matmul`` ``[M, N/16, 2, 8]``; returns the value of ``C[i, n]``."""
    tile = mma_layout.TILE
    group = op.k // op.scheme.groups(op.k)
    offset = tirx.const(1032.0, "float16")

    def dot(i, nt, kt, r, half):
        words = [b[nt, kt, 4 * r + q] for q in range(4)]
        return mma_word_dot(words, [a[i, kt * tile + j] for j in range(tile)], offset, half)

    d = te.compute((m, op.n // tile, op.k // tile, 8, 2), dot, name=DOT)
    kt = te.reduce_axis((0, op.k // tile), name="kt")

    def row(nt, half, r):
        return nt * tile + half * 8 + r

    if z is None:
        def term(i, nt, half, r):
            return d[i, nt, kt, r, half].astype("float32") * s[row(nt, half, r), kt * tile // group].astype("float32")
    else:
        j = te.reduce_axis((0, tile), name="j")
        asum = te.compute((m, op.k // tile), lambda i, t: te.sum(a[i, t * tile + j].astype("float32"), axis=j),
                          name=ASUM)

        def term(i, nt, half, r):
            n, g = row(nt, half, r), kt * tile // group
            centre = z[n, g].astype("float32") - tirx.const(8.0, "float32")
            shifted = d[i, nt, kt, r, half].astype("float32") - centre * asum[i, kt]
            return shifted * s[n, g].astype("float32")

    acc = te.compute((m, op.n // tile, 2, 8), lambda i, nt, half, r: te.sum(term(i, nt, half, r), axis=kt),
                     name=MATMUL)
    return lambda i, n: acc[i, n // tile, n % tile // 8, n % 8]


def _word_op(op: W4A16Op, a, b, s, z, m):
    """``dot`` (fp16 per packed word) and ``matmul`` (fp32 over words, times the group scale)."""
    group = op.k // op.scheme.groups(op.k)

    def dot(i, n, w):
        offset = tirx.const(1032.0, "float16") if z is None else z[n, w * 8 // group] + tirx.const(1024.0, "float16")
        return word_dot(b[n, w], [a[i, w * 8 + j] for j in range(8)], offset)

    d = te.compute((m, op.n, op.k // 8), dot, name=DOT)
    r = te.reduce_axis((0, op.k // 8), name="w")
    acc = te.compute(
        (m, op.n),
        lambda i, j: te.sum(d[i, j, r].astype("float32") * s[j, r * 8 // group].astype("float32"), axis=r),
        name=MATMUL,
    )
    return lambda i, n: acc[i, n]


def w4a16_op(op: W4A16Op) -> tirx.PrimFunc:
    """Build the TensorIR of ``op``.

    Parameters
    ----------
    op : W4A16Op
        The workload.

    Returns
    -------
    tvm.tirx.PrimFunc
        Arguments ``A (M, K) f16, B op.packed_shape u32, S (N, G) f16[, Z (N, G) f16], C (M, N) f16``.
    """
    groups = op.scheme.groups(op.k)
    group = op.k // groups
    m = tirx.Var("m", "int32") if op.m is None else op.m
    a = te.placeholder((m, op.k), "float16", name="A")
    if op.layout not in _LAYOUTS:
        raise ValueError(f"layout must be one of {sorted(_LAYOUTS)}, got {op.layout!r}")
    b = te.placeholder(op.packed_shape, "uint32", name="B")
    s = te.placeholder((op.n, groups), "float16", name="S")
    z = None if op.scheme.symmetric else te.placeholder((op.n, groups), "float16", name="Z")
    if op.decode_dtype not in _MAGIC:
        raise ValueError(f"decode_dtype must be one of {sorted(_MAGIC)}, got {op.decode_dtype!r}")
    if op.reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {op.reduction!r}")
    if op.reduction == "word":
        value = (_word_op if op.layout == "rows" else _mma_word_op)(op, a, b, s, z, m)
    else:
        w = te.compute((op.n, op.k), _decode_fn(b, s, z, group, op.decode_dtype, op.layout), name=DECODE)
        r = te.reduce_axis((0, op.k), name="k")
        acc = te.compute(
            (m, op.n),
            lambda i, j: te.sum(a[i, r].astype("float32") * w[j, r].astype("float32"), axis=r),
            name=MATMUL,
        )
        value = lambda i, n: acc[i, n]  # noqa: E731
    c = te.compute((m, op.n), lambda i, j: value(i, j).astype("float16"), name=CAST)
    args = [a, b, s] + ([] if z is None else [z]) + [c]
    func = te.create_prim_func(args)
    return func.with_attr({"global_symbol": op.name, "tir.noalias": True})
