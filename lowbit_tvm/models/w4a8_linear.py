"""A Relax linear layer on Atom-style W4A8 / W8A8 kernels: int8 activations, int4 (or int8) weights, int8 outliers.

A call is two or three ``call_tir``s of our TensorIR (``lowbit_tvm.ops.w4a8``): the fused reorder + per-token
quantize kernel (fp16 ``x`` through the calibrated channel permutation ``perm`` -> int8 main and outlier
activations and their per-token max |x|), the main int GEMM and, with outliers, the int8 outlier GEMM adding
onto the main one's result. On CUDA the three are scheduled by our rules (``schedules.w4a8_quantize``,
``schedules.w4a8_tensor_core``; int8 ``mma.sync`` tensor cores) with the M rows padded up to the GEMM's block
tile (the quantize kernel writes zero rows there; the padded rows are dropped after the last GEMM); on other
targets the plain TensorIR runs on the rows as they are.

The rows are dynamic (prefill's sequence length, the decode batch): the functions take ``tiles`` (a scalar,
``ceil(rows / block)``) and their M is ``tiles * block``, so the schedules' splits of M by the block tile are
exact.
"""
from dataclasses import dataclass, replace

import numpy as np

from ..kernel import OPAQUE_PATTERN
from ..ops.w4a8 import IntGemmOp
from ..quant.atom import AtomScheme, AtomWeight, quantize_weight
from ..schedules.w4a8_dispatch import block_rows, plan_linear
from ..schedules.w4a8_quantize import ActQuant
from ..schedules.w4a8_tensor_core import IntGemmTensorCore
from ..tvm_api import IS_SCHEDULED, relax_nn as nn, te, tirx
from .config import ModelConfigError
from .fp_linear import fp16_rows, restore_rows
from .rows_hint import current_rows_hint

_FUNCTIONS = {}


@dataclass(frozen=True)
class _Kernels:
    """The functions of one layer shape at one rows hint: quantize, main GEMM, outlier GEMM (or None)."""

    block: int
    quant: object
    main: object
    outlier: object


class AtomLinear(nn.Module):
    """``y = x @ W^T`` with Atom-style quantization (``lowbit_tvm.quant.atom``): per-token int8 activations of the
    main channels times int4 group-quantized weights (W4A8; int8 per output channel for W8A8), plus the
    ``scheme.outliers`` calibrated input channels in int8 (activations per token, weights per output channel).

    Parameters (all in the weights file): ``perm`` (int32 ``[main_k + outliers]``: the input channel at each
    kernel K position, ``in_features`` for a zero padding channel), ``qweight`` (uint32, the main codes in the
    int8 mma fragment layout), ``scales`` (fp16 ``[groups, N]``) and, with outliers, ``oweight`` / ``oscales``
    (the outlier part, int8 per output channel).

    Parameters
    ----------
    in_features, out_features : int
        K and N of the layer (N a multiple of 16: the kernels' weight tile).
    scheme : AtomScheme
        Weight bits, group size and outlier count.
    target : tvm.target.Target
        CUDA gets our tensor-core schedules, other targets the plain TensorIR.

    Raises
    ------
    QuantizationError
        If the outlier count does not fit K (more than K, or not a multiple of the kernels' K tile of 32).
    ModelConfigError
        If N is not a multiple of 16.
    """

    def __init__(self, in_features: int, out_features: int, scheme: AtomScheme, target):
        if out_features % 16:
            raise ModelConfigError(f"{scheme.name} layers need out_features % 16 == 0 (the int8 tensor-core "
                                   f"weight tile), got a {in_features}->{out_features} layer")
        self.in_features, self.out_features = in_features, out_features
        self.scheme = scheme
        self.target = target
        self.main_k = scheme.main_k(in_features)  # raises for outlier counts that do not fit K
        n, outliers = out_features, scheme.outliers
        main = IntGemmOp(n, self.main_k, scheme.weight_bits, scheme.group_size or self.main_k, 1)
        self.perm = nn.Parameter((self.main_k + outliers,), "int32")
        self.qweight = nn.Parameter(main.packed_shape, "uint32")
        self.scales = nn.Parameter((scheme.groups(in_features), n), "float16")
        self.oweight = self.oscales = None
        if outliers:
            self.oweight = nn.Parameter(IntGemmOp(n, outliers, 8, outliers, 1).packed_shape, "uint32")
            self.oscales = nn.Parameter((1, n), "float16")

    def forward(self, x: nn.Tensor) -> nn.Tensor:
        """Apply the layer to ``x`` [..., in_features] (any float dtype; the result has x's dtype)."""
        lead, rows, flat = fp16_rows(x, self.in_features)
        hint = current_rows_hint()
        kernels = self._kernels(hint)
        tiles = _ceil_div(rows, kernels.block)
        m_pad = tiles * kernels.block
        name = f"{self.scheme.name.replace('-', '_')}_n{self.out_features}_k{self.in_features}_r{hint}"
        acts = nn.op.tensor_ir_op(kernels.quant, f"quant_{name}", args=[flat, self.perm, _prim(tiles)],
                                  out=self._activation_outputs(m_pad))
        acts = list(acts) if isinstance(acts, (list, tuple)) else [acts]
        half = len(acts) // 2
        out_shape = nn.Tensor.placeholder((m_pad, self.out_features), "float16")
        out = nn.op.tensor_ir_op(kernels.main, f"gemm_{name}",
                                 args=[acts[0], acts[half], self.qweight, self.scales, _prim(tiles)], out=out_shape)
        if kernels.outlier is not None:
            out = nn.op.tensor_ir_op(kernels.outlier, f"gemm_outliers_{name}",
                                     args=[acts[1], acts[3], self.oweight, self.oscales, out, _prim(tiles)],
                                     out=out_shape)
        if kernels.block > 1:
            out = nn.op.tensor_expr_op(_first_rows, "first_rows", args=[out, rows])
        return restore_rows(out, x, lead)

    def to(self, dtype: str | None = None) -> None:
        """Quantized parameters keep their dtypes whatever the model's dtype."""

    def pack(self, weight) -> dict:
        """This layer's parameter arrays for an ``AtomWeight`` (its calibrated permutation included) or, without
        outliers, a float weight ``[out_features, in_features]`` (quantized here by round-to-nearest).

        Raises
        ------
        ModelConfigError
            If the weight's shape or scheme is not the layer's, or a float weight is given while the scheme has
            outliers (they are chosen on calibration activations: ``checkpoints.with_atom_outliers``).
        """
        if not isinstance(weight, AtomWeight):
            weight = self._round_to_nearest(np.asarray(weight))
        if weight.shape != (self.out_features, self.in_features) or weight.scheme != self.scheme:
            raise ModelConfigError(f"a {weight.scheme.name} weight of shape {weight.shape} does not fit a "
                                   f"{self.scheme.name} layer of shape {(self.out_features, self.in_features)}")
        arrays = {"perm": weight.perm.astype(np.int32), "qweight": weight.packed(),
                  "scales": np.ascontiguousarray(weight.scales.T)}
        if self.scheme.outliers:
            arrays.update(oweight=weight.packed_outliers(), oscales=np.ascontiguousarray(weight.outlier_scales.T))
        return arrays

    def _round_to_nearest(self, weight: np.ndarray) -> AtomWeight:
        if weight.shape != (self.out_features, self.in_features):
            raise ModelConfigError(
                f"weight of shape {weight.shape} does not fit a {self.in_features}->{self.out_features} layer")
        if self.scheme.outliers:
            raise ModelConfigError(
                f"{self.scheme.name} keeps {self.scheme.outliers} calibrated input channels in int8, and a float "
                "weight carries none: calibrate them first (checkpoints.with_atom_outliers; `lowbit-tvm build` "
                "does it), or use 0 outliers")
        return quantize_weight(weight, np.zeros(0, np.int64), self.scheme)

    def _activation_outputs(self, m_pad) -> list:
        """Placeholders of the quantize kernel's outputs: codes (main[, outliers]), then maxima."""
        codes = [nn.Tensor.placeholder((m_pad, self.main_k), "int8")]
        maxima = [nn.Tensor.placeholder((m_pad,), "float32")]
        if self.scheme.outliers:
            codes.append(nn.Tensor.placeholder((m_pad, self.scheme.outliers), "int8"))
            maxima.append(nn.Tensor.placeholder((m_pad,), "float32"))
        return codes + maxima

    def _kernels(self, hint: int) -> _Kernels:
        key = (self.out_features, self.in_features, self.scheme, str(self.target), hint)
        if key not in _FUNCTIONS:
            _FUNCTIONS[key] = layer_kernels(self.out_features, self.in_features, self.scheme, self.target, hint)
        return _FUNCTIONS[key]


def layer_kernels(n: int, k: int, scheme: AtomScheme, target, hint: int) -> _Kernels:
    """The PrimFuncs of an ``[n, k]`` layer for about ``hint`` rows on ``target``: the kernels and configs that
    ``schedules.w4a8_dispatch.plan_linear`` plans for ``hint`` rows, with a symbolic M. CUDA: scheduled by our
    rules, M padded to the plan's block tile; elsewhere: the plain TensorIR on the rows as they are.

    Each takes its inputs, then the int32 scalar ``tiles`` (its M is ``tiles * block``), then its outputs."""
    cuda = target.kind.name == "cuda"
    plan = plan_linear(hint, n, k, scheme)
    block = block_rows(plan.gemms[0][1]) if cuda else 1
    tiles = tirx.Var("tiles", "int32")
    m_pad = tiles * block
    quant = replace(plan.quant, m=tirx.Var("m", "int32"), m_pad=m_pad)
    functions = [_with_tiles(quant.prim_func(), tiles, 2)]
    functions += [_with_tiles(replace(op, m=m_pad).prim_func(), tiles, 5 if op.accumulate else 4)
                  for op, _ in plan.gemms]
    if cuda:
        functions[0] = _scheduled(ActQuant(), functions[0], target, plan.quant_config)
        functions[1:] = [_scheduled(IntGemmTensorCore(), func, target, config)
                         for func, (_, config) in zip(functions[1:], plan.gemms)]
    done = [func.with_attr("op_pattern", OPAQUE_PATTERN).without_attr("global_symbol") for func in functions]
    return _Kernels(block, done[0], done[1], done[2] if len(done) > 2 else None)


def _with_tiles(func, tiles, inputs: int):
    """``func`` with the scalar parameter ``tiles`` inserted after its first ``inputs`` parameters (Relax passes a
    ``call_tir``'s scalar arguments between its tensor inputs and its outputs)."""
    params = list(func.params)
    return tirx.PrimFunc(params[:inputs] + [tiles] + params[inputs:], func.body, func.ret_type, func.attrs)


def _scheduled(rule, func, target, config):
    sch = rule.apply(func, target, config=config)
    return sch.mod["main"].with_attr(IS_SCHEDULED, True)


def _first_rows(out: te.Tensor, rows) -> te.Tensor:
    """The first ``rows`` rows of ``out`` (dropping the GEMM's padding rows)."""
    return te.compute((rows, out.shape[1]), lambda i, j: out[i, j], name="first_rows")


def _ceil_div(rows, block: int):
    if isinstance(rows, int):
        return -(-rows // block)
    return tirx.floordiv(rows + (block - 1), block)


def _prim(value):
    """A scalar ``call_tir`` argument (int32, as the index type of the kernels)."""
    return tirx.IntImm("int32", value) if isinstance(value, int) else tirx.Cast("int32", value)
