"""Atom-style W4A8 / W8A8 operators as TensorIR (the math: ``lowbit_tvm.quant.atom``).

Two operators, each a frozen dataclass (cache, tuning and benchmark key) -> unscheduled TensorIR:

- :class:`ActQuantOp`: the fused reorder + per-token activation quantization. ``X`` fp16 ``[M, K]`` and the
  channel permutation -> int8 ``[M_pad, main_k]`` (main channels), int8 ``[M_pad, outliers]`` and fp32
  ``max |x|`` per token of each (``[M_pad]`` each; the scale is that / 127, which the GEMM folds into its
  epilogue constant). Rows ``M..M_pad`` (padding
  up to the GEMM's block tile) are zeros. Blocks: ``gather`` (inlined), ``amax``/``quant``/``amax_store`` and
  ``amax_o``/``quant_o``/``amax_store_o``. With ``bits=4`` (W4A4) the main part is int4 per token and group of
  128 channels (``q`` in [-7, 7], two codes per byte: int8 ``[M_pad, main_k / 2]``, ``max |x|`` fp32
  ``[M_pad, main_k / 128]``, scale = that / 7); the outliers stay int8, and their blocks come first.
- :class:`IntGemmOp`: ``C[m, n] = SA[m] * c * sum_g S[g, n] * P[m, n, g] (+ R[m, n])`` with
  ``P[m, n, g] = sum_{k in group g} A[m, k] * W[n, k]`` in int32 (``SA`` = max|x|, ``c = 1/127``, times
  1/16 for int4 weights, which the kernel unpacks to ``16 q``, see ``lowbit_tvm.quant.s8_layout``). Per-channel int8 weights (W8A8) are one
  group of all K. ``accumulate`` adds ``R`` (the outlier GEMM adds onto the main one's result). Blocks:
  ``decode`` (fragments -> int8), ``igemm`` (int32 per group), ``rescale`` (fp32 over groups), ``epilogue``.
"""
from dataclasses import dataclass

from ..quant import s8_layout
from ..quant.atom import ACT_MAX, AMAX_FLOOR
from ..quant.atom_w4a4 import ACT4_MAX, GROUP
from ..tvm_api import te, tirx

DECODE, IGEMM, RESCALE, EPILOGUE = "decode", "igemm", "rescale", "epilogue"
GATHER, AMAX, QUANT, STORE = "gather", "amax", "quant", "amax_store"


@dataclass(frozen=True)
class ActQuantOp:
    """Reorder + per-token int8 quantization of ``m`` rows of ``k`` channels.

    Outputs ``A`` int8 ``[m_pad, main_k]`` (main channels), ``AO`` int8 ``[m_pad, outliers]`` (if any), and fp32
    ``SA`` ``[m_pad]`` (``SO`` ``[m_pad]``): each row's max |x| of the main part (the outliers); scale = max/127.

    Parameters
    ----------
    k : int
        Input channels of ``X``.
    main_k : int
        Main (non-outlier) channels after the permutation, padded (``AtomScheme.main_k``).
    outliers : int
        Outlier channels (0: one part only).
    m : int
        Rows of ``X``.
    m_pad : int
        Rows of the outputs (the GEMM's M, a multiple of its block tile).
    bits : int
        Main-part codes: 8 (one scale per token) or 4 (W4A4: packed pairs, one scale per token and group of
        ``GROUP`` channels).
    """

    k: int
    main_k: int
    outliers: int
    m: int
    m_pad: int
    bits: int = 8

    @property
    def name(self) -> str:
        return f"a{self.bits}quant_m{self.m}_p{self.m_pad}_k{self.k}_main{self.main_k}_o{self.outliers}"

    @property
    def main_shapes(self) -> tuple:
        """``((rows, bytes), maxima shape)`` of the main part's outputs."""
        if self.bits == 4:
            return (self.m_pad, self.main_k // 2), (self.m_pad, self.main_k // GROUP)
        return (self.m_pad, self.main_k), (self.m_pad,)

    def to_json(self) -> dict:
        record = {"op": "a8quant", "m": self.m, "m_pad": self.m_pad, "k": self.k, "main_k": self.main_k,
                  "outliers": self.outliers}
        return record if self.bits == 8 else {**record, "op": "a4quant", "bits": self.bits}

    def prim_func(self) -> tirx.PrimFunc:
        """``(X, perm, A[, AO], SA[, SO])``."""
        return act_quant_op(self) if self.bits == 8 else act_quant4_op(self)


def _in_part(r, p, main_k):
    """Whether channel ``r`` belongs to part ``p`` (0: main, 1: outliers)."""
    return tirx.any(tirx.all(r < main_k, p == 0), tirx.all(r >= main_k, p > 0))


def _copy(tensor):
    return lambda i: tensor[i]


def _quantizer(g, amax, start):
    """``q[i, j] = clip(floor(x[i, start + j] * 127 / amax[i] + 1/2), -127, 127)`` (amax floored)."""
    qmax = tirx.const(ACT_MAX, "float32")

    def quant(i, j):
        inv = qmax / tirx.max(amax[i], tirx.const(AMAX_FLOOR, "float32"))
        q = tirx.floor(g[i, start + j] * inv + tirx.const(0.5, "float32"))
        return tirx.max(tirx.min(q, qmax), -qmax).astype("int8")

    return quant


def _gathered(op: ActQuantOp) -> tuple:
    """``(X, perm, G)``: ``G[i, j] = X[i, perm[j]]`` in fp32, zero for padding rows and channels."""
    x = te.placeholder((op.m, op.k), "float16", name="X")
    perm = te.placeholder((op.main_k + op.outliers,), "int32", name="perm")

    def gather(i, j):
        p = perm[j]
        inside = tirx.all(i < op.m, p < op.k)
        value = x[tirx.min(i, op.m - 1), tirx.min(p, op.k - 1)].astype("float32")
        return tirx.if_then_else(inside, value, tirx.const(0.0, "float32"))

    return x, perm, te.compute((op.m_pad, op.main_k + op.outliers), gather, name=GATHER)


def act_quant_op(op: ActQuantOp) -> tirx.PrimFunc:
    """The TensorIR of ``op`` (see :class:`ActQuantOp`)."""
    x, perm, g = _gathered(op)
    quants, maxima = [], []
    for start, width, suffix in ((0, op.main_k, ""), (op.main_k, op.outliers, "_o")):
        if not width:
            continue
        r = te.reduce_axis((0, width), name="r" + suffix)
        # The outlier maximum also reads the main one (as min(max_main, 0) = 0: |x| >= 0 leaves it unchanged).
        # The dependency lets the schedule place it in the main part's row loop (one CUDA block per row).
        after = maxima[0] if maxima else None
        amax = te.compute(
            (op.m_pad,),
            lambda i: te.max(te.abs(g[i, start + r]) if after is None else tirx.max(te.abs(g[i, start + r]), tirx.min(after[i], tirx.const(0.0, "float32"))), axis=r),
            name=AMAX + suffix,
        )
        quants.append(te.compute((op.m_pad, width), _quantizer(g, amax, start), name=QUANT + suffix))
        maxima.append(amax)
    stores = [te.compute((op.m_pad,), _copy(a), name=STORE + s) for a, s in zip(maxima, ("", "_o"))]
    func = te.create_prim_func([x, perm, *quants, *stores])
    return func.with_attr({"global_symbol": op.name, "tir.noalias": True})


def _code4(g, amax, i, c):
    """int32 ``clip(floor(x * 7 / amax + 1/2), -7, 7)`` of gathered channel ``c`` (its group's amax, floored)."""
    qmax = tirx.const(ACT4_MAX, "float32")
    inv = qmax / tirx.max(amax[i, c // GROUP], tirx.const(AMAX_FLOOR, "float32"))
    q = tirx.floor(g[i, c] * inv + tirx.const(0.5, "float32"))
    return tirx.max(tirx.min(q, qmax), -qmax).astype("int32")


def act_quant4_op(op: ActQuantOp) -> tirx.PrimFunc:
    """The TensorIR of an int4-mode ``op``: the outlier blocks (int8 per token) first, then the main part's per
    group maxima (reading the outliers' maximum as ``min(amax_o, 0)``, which changes nothing, so the schedule can
    place them in the outliers' row loop) and packed codes."""
    x, perm, g = _gathered(op)
    outputs, maxima = [], []
    amax_o = None
    if op.outliers:
        r = te.reduce_axis((0, op.outliers), name="r_o")
        amax_o = te.compute((op.m_pad,), lambda i: te.max(te.abs(g[i, op.main_k + r]), axis=r), name=AMAX + "_o")
        outputs.append(te.compute((op.m_pad, op.outliers), _quantizer(g, amax_o, op.main_k), name=QUANT + "_o"))
        maxima.append(te.compute((op.m_pad,), _copy(amax_o), name=STORE + "_o"))
    r = te.reduce_axis((0, GROUP), name="r")

    def group_max(i, gi):
        value = te.abs(g[i, gi * GROUP + r])
        if amax_o is not None:
            value = tirx.max(value, tirx.min(amax_o[i], tirx.const(0.0, "float32")))
        return te.max(value, axis=r)

    amax = te.compute((op.m_pad, op.main_k // GROUP), group_max, name=AMAX)
    low, high = (lambda i, b: _code4(g, amax, i, 2 * b)), (lambda i, b: _code4(g, amax, i, 2 * b + 1))
    packed = te.compute(
        (op.m_pad, op.main_k // 2),
        lambda i, b: ((low(i, b) & tirx.const(15, "int32")) | (high(i, b) << tirx.const(4, "int32"))).astype("int8"),
        name=QUANT,
    )
    store = te.compute((op.m_pad, op.main_k // GROUP), lambda i, gi: amax[i, gi], name=STORE)
    # Argument order as the int8 mode's: (X, perm, A[, AO], SA[, SO]).
    func = te.create_prim_func([x, perm, packed, *outputs, store, *maxima])
    return func.with_attr({"global_symbol": op.name, "tir.noalias": True})


@dataclass(frozen=True)
class IntGemmOp:
    """One int8-tensor-core GEMM workload (W4A8 main part, W8A8, or the outlier part).

    Parameters
    ----------
    n, k : int
        Output features and (padded, permuted) input features; N % 16 == 0, K % 32 == 0.
    weight_bits : int
        4 (int4 codes, ``group`` along K) or 8 (int8 codes).
    group : int
        K per weight scale (``k`` for per-channel scales).
    m : int
        Rows (already padded to the kernel's block tile).
    accumulate : bool
        Add an fp16 ``R [M, N]`` to the result.
    """

    n: int
    k: int
    weight_bits: int
    group: int
    m: int
    accumulate: bool = False

    @property
    def groups(self) -> int:
        return self.k // self.group

    @property
    def name(self) -> str:
        acc = "_acc" if self.accumulate else ""
        return f"w{self.weight_bits}a8_g{self.group}_m{self.m}_n{self.n}_k{self.k}{acc}"

    @property
    def packed_shape(self) -> tuple:
        return (self.n // s8_layout.TILE_N, self.k // s8_layout.TILE_K, s8_layout.WARP, s8_layout.WORDS[self.weight_bits])

    def to_json(self) -> dict:
        return {"op": "int_gemm", "m": self.m, "n": self.n, "k": self.k, "weight_bits": self.weight_bits,
                "group": self.group, "accumulate": self.accumulate}

    def prim_func(self) -> tirx.PrimFunc:
        """``(A, SA, B, S[, R], C)``."""
        return int_gemm_op(self)


def fragment_value(word_of, bits, i, j):
    """The int8 the kernel holds for tile element ``(i, j)``: ``16 q`` (int4) or ``q`` (int8).

    ``word_of(w)`` returns the lane's uint32 word ``w``; shared by the op and the decode intrinsic's
    description so that tensorize matches them.
    """
    if bits == 4:
        word, nibble = s8_layout.int4_position(i, j)
        code = (word_of(word) >> tirx.Cast("uint32", nibble * 4)) & tirx.const(15, "uint32")
        return tirx.reinterpret("int8", tirx.Cast("uint8", code << tirx.const(4, "uint32")))
    word, byte = s8_layout.int8_position(i, j)
    return tirx.reinterpret("int8", tirx.Cast("uint8", (word_of(word) >> tirx.Cast("uint32", byte * 8)) & tirx.const(255, "uint32")))


def int_gemm_op(op: IntGemmOp) -> tirx.PrimFunc:
    """The TensorIR of ``op`` (see :class:`IntGemmOp`)."""
    tn, tk = s8_layout.TILE_N, s8_layout.TILE_K
    a = te.placeholder((op.m, op.k), "int8", name="A")
    sa = te.placeholder((op.m,), "float32", name="SA")
    b = te.placeholder(op.packed_shape, "uint32", name="B")
    s = te.placeholder((op.groups, op.n), "float16", name="S")  # group-major: a group's scales are contiguous

    def decode(n, k):
        lane = s8_layout.lane_of(n % tn, k % tk)
        return fragment_value(lambda w: b[n // tn, k // tk, lane, w], op.weight_bits, n % tn, k % tk)

    w = te.compute((op.n, op.k), decode, name=DECODE)
    r = te.reduce_axis((0, op.group), name="r")
    p = te.compute(
        (op.m, op.n, op.groups),
        lambda i, j, g: te.sum(a[i, g * op.group + r].astype("int32") * w[j, g * op.group + r].astype("int32"), axis=r),
        name=IGEMM,
    )
    rg = te.reduce_axis((0, op.groups), name="g")
    acc = te.compute(
        (op.m, op.n), lambda i, j: te.sum(p[i, j, rg].astype("float32") * s[rg, j].astype("float32"), axis=rg),
        name=RESCALE,
    )
    factor = tirx.const((1.0 / 16 if op.weight_bits == 4 else 1.0) / ACT_MAX, "float32")
    args = [a, sa, b, s]
    if op.accumulate:
        res = te.placeholder((op.m, op.n), "float16", name="R")
        args.append(res)
        c = te.compute((op.m, op.n), lambda i, j: (acc[i, j] * (sa[i] * factor) + res[i, j].astype("float32")).astype("float16"), name=EPILOGUE)
    else:
        c = te.compute((op.m, op.n), lambda i, j: (acc[i, j] * (sa[i] * factor)).astype("float16"), name=EPILOGUE)
    func = te.create_prim_func([*args, c])
    return func.with_attr({"global_symbol": op.name, "tir.noalias": True})
