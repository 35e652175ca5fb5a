"""Float64 reference matmul against a quantized weight (for testing kernels)."""

from __future__ import annotations

import numpy as np

from ..errors import QuantizationError
from .int4 import QuantizedWeight, _row_chunks, dequantize_rows, to_float_numpy


def reference_matmul(x, qw: QuantizedWeight) -> np.ndarray:
    """Compute ``x @ dequantize(qw).T`` in float64.

    Parameters
    ----------
    x : numpy.ndarray or torch.Tensor
        2-D ``[M, K]`` floating activations (float16/float32/float64, or
        torch bfloat16).
    qw : QuantizedWeight
        Quantized weight of shape ``(N, K)``.

    Returns
    -------
    numpy.ndarray
        float64 ``[M, N]`` equal to
        ``x.astype(float64) @ dequantize(qw).astype(float64).T``.

    Raises
    ------
    QuantizationError
        If ``x`` is not 2-D floating, ``qw`` is not a QuantizedWeight, or
        the K dimensions differ.
    """
    if not isinstance(qw, QuantizedWeight):
        raise QuantizationError(f"expected a QuantizedWeight, got {type(qw).__name__}")
    x64 = _activations_float64(x, qw.shape)
    n, k = qw.shape
    out = np.empty((x64.shape[0], n), dtype=np.float64)
    for start, stop in _row_chunks(n, k):
        weight = dequantize_rows(qw, start, stop).astype(np.float64)
        out[:, start:stop] = x64 @ weight.T
    return out


def _activations_float64(x, weight_shape: tuple) -> np.ndarray:
    """Validate activations against ``weight_shape`` and upcast to float64."""
    array = to_float_numpy(x, "x")
    if array.ndim != 2:
        raise QuantizationError(
            f"x must be 2-D [M, K], got shape {array.shape}; weight shape is {weight_shape}"
        )
    if array.shape[1] != weight_shape[1]:
        raise QuantizationError(
            f"K mismatch: x has shape {array.shape} but the weight has shape "
            f"{weight_shape} (x.shape[1] must equal weight.shape[1])"
        )
    return array.astype(np.float64)
