"""GPTQ (Frantar et al., arXiv 2210.17323): error-compensating int4 quantization into our packed format.

Columns are quantized left to right; each column's rounding error, scaled by the inverse Hessian of the
layer's inputs (``H = X^T X`` over calibration tokens), is pushed onto the columns not yet quantized, so
the layer's output error ``||X (W - W_hat)^T||`` is what gets minimised, not the weight error. Group scales
(and zero points) are computed from the already-updated weights when a group's first column is reached, with
the same rules as round-to-nearest (``lowbit_tvm.quant.int4``), so the result is an ordinary
``QuantizedWeight`` that every W4A16 kernel runs.
"""
import numpy as np

from ..errors import QuantizationError
from .int4 import QuantizedWeight, pack_int4, quantize, to_float_numpy
from .scheme import Int4Scheme

# Dampening added to the Hessian's diagonal, as a fraction of its mean (GPTQ's default).
DAMPING = 0.01


def input_hessian(activations) -> np.ndarray:
    """``X^T X`` (float64) of activations ``[tokens, K]``; sum these over calibration batches."""
    x = np.asarray(activations, dtype=np.float64).reshape(-1, np.shape(activations)[-1])
    return x.T @ x


def gptq_quantize(weight, hessian, scheme: Int4Scheme, damping: float = DAMPING) -> QuantizedWeight:
    """Quantize ``weight`` [N, K] to ``scheme`` with GPTQ error compensation.

    Parameters
    ----------
    weight : array-like
        Float weight ``[N, K]`` (K divisible by the group size).
    hessian : array-like
        ``[K, K]`` input second moments, e.g. summed ``input_hessian`` of calibration activations.
    scheme : Int4Scheme
        Group size and symmetry of the result.
    damping : float
        Fraction of the mean diagonal added to the diagonal (numerical stability).

    Returns
    -------
    QuantizedWeight

    Raises
    ------
    QuantizationError
        If the shapes do not match or the Hessian is not finite.
    """
    w = to_float_numpy(weight, "weight").astype(np.float64)
    n, k = w.shape
    h = np.array(hessian, dtype=np.float64)
    if h.shape != (k, k) or not np.isfinite(h).all():
        raise QuantizationError(f"hessian must be a finite [{k}, {k}] matrix, got shape {h.shape}")
    group = scheme.group_len(k)
    upper = _inverse_cholesky(h, w, damping)
    codes = np.empty((n, k), np.uint8)
    scales = np.empty((n, k // group), np.float16)
    zeros = None if scheme.symmetric else np.empty((n, k // group), np.float16)
    for start in range(0, k, group):
        g = start // group
        block = quantize(w[:, start:start + group], Int4Scheme(group_size=group, symmetric=scheme.symmetric))
        scales[:, g] = block.scales[:, 0]
        if zeros is not None:
            zeros[:, g] = block.zeros[:, 0]
        errors = _quantize_block(w, upper, start, start + group, codes, scales[:, g], None if zeros is None else zeros[:, g])
        w[:, start + group:] -= errors @ upper[start:start + group, start + group:]
    return QuantizedWeight(pack_int4(codes), scales, zeros, scheme, (n, k))


def _inverse_cholesky(h: np.ndarray, w: np.ndarray, damping: float) -> np.ndarray:
    """Upper Cholesky factor of the damped inverse Hessian; dead inputs get unit diagonal (and zero weight)."""
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h[np.diag_indices_from(h)] += damping * np.mean(np.diag(h))
    try:
        return np.linalg.cholesky(np.linalg.inv(h)).T
    except np.linalg.LinAlgError as err:
        raise QuantizationError(f"the Hessian is not positive definite after damping: {err}") from None


def _quantize_block(w, upper, start, stop, codes, scale, zero):
    """Quantize columns ``start:stop`` one by one, compensating inside the block; return the block's
    scaled errors ``[N, stop - start]`` for the update of the columns after it."""
    s = scale.astype(np.float64)
    errors = np.empty((w.shape[0], stop - start))
    for j in range(start, stop):
        column = w[:, j]
        if zero is None:
            code = np.clip(np.rint(column / s), -8.0, 7.0) + 8.0
            dequant = (code - 8.0) * s
        else:
            z = zero.astype(np.float64)
            code = np.clip(np.rint(column / s) + z, 0.0, 15.0)
            dequant = (code - z) * s
        codes[:, j] = code.astype(np.uint8)
        error = (column - dequant) / upper[j, j]
        w[:, j + 1:stop] -= np.outer(error, upper[j, j + 1:stop])
        errors[:, j - start] = error
    return errors
