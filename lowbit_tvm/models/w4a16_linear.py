"""A Relax linear layer that calls our W4A16 TensorIR kernel."""
import numpy as np

from ..kernel import graph_function, graph_variant, prepare_weights
from ..ops.w4a16 import W4A16Op
from ..quant import Int4Scheme, quantize
from ..tvm_api import relax_nn as nn
from .config import ModelConfigError
from .fp_linear import fp16_rows, restore_rows
from .rows_hint import current_rows_hint


class W4A16Linear(nn.Module):
    """``y = x @ dequant(W)^T`` with int4 group-quantized weights, fp16 in and out of the kernel.

    K is zero-padded to whole groups when the group size does not divide it (the activations are padded
    in the graph, so the padding adds nothing). Parameters: ``qweight`` (uint32, the kernel's layout),
    ``scales`` (fp16) and, for asymmetric schemes, ``zeros`` (fp16).

    Parameters
    ----------
    in_features, out_features : int
        K and N of the layer.
    scheme : Int4Scheme
        Group size and symmetry.
    target : tvm.target.Target
        CUDA gets the tensor-core schedule, other targets the plain TensorIR.
    The CUDA schedule's tiles are sized for the rows of the enclosing ``rows_hint.rows_hint`` (default 64).
    """

    def __init__(self, in_features: int, out_features: int, scheme: Int4Scheme, target):
        self.in_features, self.out_features = in_features, out_features
        self.scheme = scheme
        self.target = target
        self.k = scheme.padded_k(in_features)
        self.op = graph_variant(W4A16Op(out_features, self.k, scheme), target)
        groups = scheme.groups(self.k)
        self.qweight = nn.Parameter(self.op.packed_shape, "uint32")
        self.scales = nn.Parameter((out_features, groups), "float16")
        self.zeros = None if scheme.symmetric else nn.Parameter((out_features, groups), "float16")

    def forward(self, x: nn.Tensor) -> nn.Tensor:
        """Apply the layer to ``x`` [..., in_features] (any float dtype; the result has x's dtype)."""
        lead, rows, flat = fp16_rows(x, self.k)
        weights = [self.qweight, self.scales] + ([] if self.zeros is None else [self.zeros])
        rows_wanted = current_rows_hint()
        out = nn.op.tensor_ir_op(
            graph_function(self.op, self.target, rows_wanted),
            f"{self.op.name}_r{rows_wanted}",
            args=[flat, *weights],
            out=nn.Tensor.placeholder((rows, self.out_features), "float16"),
        )
        return restore_rows(out, x, lead)

    def to(self, dtype: str | None = None) -> None:
        """Quantized parameters keep their dtypes whatever the model's dtype."""

    def pack(self, weight: np.ndarray) -> dict:
        """This layer's parameter arrays for a float weight ``[out_features, in_features]``.

        Raises
        ------
        ModelConfigError
            If the weight's shape is not the layer's.
        """
        if weight.shape != (self.out_features, self.in_features):
            raise ModelConfigError(
                f"weight of shape {weight.shape} does not fit a {self.in_features}->{self.out_features} layer"
            )
        if self.k != self.in_features:
            weight = np.pad(weight, ((0, 0), (0, self.k - self.in_features)))
        arrays = prepare_weights(self.op, quantize(weight, self.scheme))
        names = ["qweight", "scales", "zeros"]
        return dict(zip(names, arrays))
