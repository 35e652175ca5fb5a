"""A Relax linear layer on binary-coding quantized (BCQ) weights: the LUT-GEMM kernel for single-token decode."""
import numpy as np

from ..kernel import OPAQUE_PATTERN
from ..ops.bcq_lut import BCQLutOp, kernel_planes
from ..ops.bcq_matmul import BCQMatmulOp
from ..quant.bcq import BITS_PER_WORD, BCQScheme, BCQWeight, bcq_quantize
from ..schedules.bcq_lut import BCQLut, bcq_lut_config
from ..tvm_api import IS_SCHEDULED, relax_nn as nn
from .config import ModelConfigError
from .fp_linear import fp16_rows, restore_rows, schedule_for_rows
from .rows_hint import current_rows_hint

_FUNCTIONS = {}


class BCQLinear(nn.Module):
    """``y = x @ W^T`` with BCQ weights ``W = offset + sum_b alpha_b * B_b`` (``lowbit_tvm.quant.bcq``).

    A single-token decode step (rows hint 1, one static row) calls the LUT-GEMM kernel (``ops.bcq_lut``, on
    CUDA scheduled by ``schedules.bcq_lut``), which never dequantizes; every other call decodes the weights
    in the prologue of a matmul (``ops.bcq_matmul``, dlight-scheduled on CUDA). Both read the same
    parameters: ``planes`` (uint32 ``[bits, N, Kp/32]``, K zero-padded to whole groups and, on CUDA, to the
    LUT kernel's K tile), ``alphas`` (fp16 ``[N, G, bits]``) and ``offsets`` (fp16 ``[N, G]``).

    Parameters
    ----------
    in_features, out_features : int
        K and N of the layer.
    scheme : BCQScheme
        Bits, group size and offset.
    target : tvm.target.Target
        The build target.
    """

    def __init__(self, in_features: int, out_features: int, scheme: BCQScheme, target):
        self.in_features, self.out_features = in_features, out_features
        self.scheme = scheme
        self.target = target
        self.k = scheme.padded_k(in_features)
        k_multiple = bcq_lut_config(1, out_features, self.k).k_multiple if _is_cuda(target) else BITS_PER_WORD
        self.lut_op = BCQLutOp(out_features, self.k, scheme, 1, k_multiple)
        groups = scheme.groups(self.k)
        self.planes = nn.Parameter((scheme.bits, out_features, self.lut_op.k_padded // BITS_PER_WORD), "uint32")
        self.alphas = nn.Parameter((out_features, groups, scheme.bits), "float16")
        self.offsets = nn.Parameter((out_features, groups), "float16")

    def forward(self, x: nn.Tensor) -> nn.Tensor:
        """Apply the layer to ``x`` [..., in_features] (the result has x's dtype)."""
        lead, rows, flat = fp16_rows(x, self.k)
        hint = current_rows_hint()
        lut = hint == 1 and isinstance(rows, int) and rows == 1
        func, name = self._lut_function() if lut else self._matmul_function(hint)
        out = nn.op.tensor_ir_op(
            func, name, args=[flat, self.planes, self.alphas, self.offsets],
            out=nn.Tensor.placeholder((rows, self.out_features), "float16"),
        )
        return restore_rows(out, x, lead)

    def to(self, dtype: str | None = None) -> None:
        """Quantized parameters keep their dtypes whatever the model's dtype."""

    def pack(self, weight) -> dict:
        """This layer's parameter arrays for a float weight ``[out_features, in_features]`` (quantized here
        with ``bcq_quantize``) or a ``BCQWeight`` of the padded shape ``[out_features, k]``.

        Raises
        ------
        ModelConfigError
            If the weight's shape or scheme is not the layer's.
        """
        if isinstance(weight, BCQWeight):
            if weight.shape != (self.out_features, self.k) or weight.scheme != self.scheme:
                raise ModelConfigError(f"a {weight.scheme.name} weight of shape {weight.shape} does not fit a "
                                       f"{self.scheme.name} layer of shape {(self.out_features, self.k)}")
            bw = weight
        else:
            bw = bcq_quantize(self._padded(np.asarray(weight, dtype=np.float32)), self.scheme)
        return {"planes": kernel_planes(bw, self.lut_op.k_multiple), "alphas": bw.alphas, "offsets": bw.offsets}

    def _padded(self, weight: np.ndarray) -> np.ndarray:
        if weight.shape != (self.out_features, self.in_features):
            raise ModelConfigError(
                f"weight of shape {weight.shape} does not fit a {self.in_features}->{self.out_features} layer"
            )
        return np.pad(weight, ((0, 0), (0, self.k - self.in_features)))

    def _lut_function(self):
        key = (self.lut_op, str(self.target))
        if key not in _FUNCTIONS:
            func = self.lut_op.prim_func()
            if _is_cuda(self.target):
                config = bcq_lut_config(1, self.out_features, self.k)
                func = BCQLut().apply(func, self.target, config=config).mod["main"].with_attr(IS_SCHEDULED, True)
            _FUNCTIONS[key] = func.with_attr("op_pattern", OPAQUE_PATTERN).without_attr("global_symbol")
        return _FUNCTIONS[key], self.lut_op.name

    def _matmul_function(self, hint: int):
        op = BCQMatmulOp(self.out_features, self.k, self.scheme, self.lut_op.k_padded)
        key = (op, str(self.target), hint)
        if key not in _FUNCTIONS:
            func = op.prim_func()
            if _is_cuda(self.target):  # dynamic rows: never the single-row GEMV rule
                func = schedule_for_rows(func, self.target, max(hint, 2))
            _FUNCTIONS[key] = func.with_attr("op_pattern", OPAQUE_PATTERN).without_attr("global_symbol")
        return _FUNCTIONS[key], f"{self.lut_op.name.replace('_m1', '')}_matmul_r{hint}"


def _is_cuda(target) -> bool:
    return target.kind.name == "cuda"
