"""GPTQ (Frantar et al., arXiv 2210.17323): error-compensating int4 quantization into our packed format.

Columns are quantized one by one; each column's rounding error, scaled by the inverse Hessian of the
layer's inputs (``H = X^T X`` over calibration tokens), is pushed onto the columns not yet quantized, so
the layer's output error ``||X (W - W_hat)^T||`` is what gets minimised, not the weight error. By default
columns go left to right and a group's scales (and zero points) are computed from the already-updated weights
when its first column is reached, with the same rules as round-to-nearest (``lowbit_tvm.quant.int4``).
With ``act_order`` the columns go in decreasing ``diag(H)`` order and every group's scales are fixed
beforehand ("static groups": from round-to-nearest of the original weights, or a given grid such as AWQ's
clipped one), so groups stay contiguous column ranges. Either way the result is an ordinary
``QuantizedWeight`` that every W4A16 kernel runs.
"""
import numpy as np

from ..errors import QuantizationError
from .int4 import SYMMETRIC_ZERO, QuantizedWeight, pack_int4, quantize, to_float_numpy
from .scheme import Int4Scheme

# Dampening added to the Hessian's diagonal, as a fraction of its mean (GPTQ's default).
DAMPING = 0.01
# Columns quantized between two lazy updates of the rest when the group scales are fixed (act-order).
BLOCK = 128


def input_hessian(activations) -> np.ndarray:
    """``X^T X`` (float64) of activations ``[tokens, K]``; sum these over calibration batches."""
    x = np.asarray(activations, dtype=np.float64).reshape(-1, np.shape(activations)[-1])
    return x.T @ x


def gptq_quantize(weight, hessian, scheme: Int4Scheme, damping: float = DAMPING, act_order: bool = False,
                  grid: QuantizedWeight | None = None) -> QuantizedWeight:
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
    act_order : bool
        Quantize columns in decreasing order of ``diag(H)`` (largest inputs first). Groups stay the
        contiguous column ranges of the packed format: their scales are fixed before reordering ("static
        groups", from ``grid`` or round-to-nearest of ``weight``).
    grid : QuantizedWeight, optional
        Fixed scales (and zeros) for every group (e.g. a clipped grid); default: each group's scales come
        from the updated weights when its first column is reached (or, with ``act_order``, from
        round-to-nearest of ``weight``).

    Returns
    -------
    QuantizedWeight

    Raises
    ------
    QuantizationError
        If the shapes do not match, the Hessian is not finite or the grid does not fit.
    """
    w = to_float_numpy(weight, "weight").astype(np.float64)
    n, k = w.shape
    h = np.array(hessian, dtype=np.float64)
    if h.shape != (k, k) or not np.isfinite(h).all():
        raise QuantizationError(f"hessian must be a finite [{k}, {k}] matrix, got shape {h.shape}")
    group = scheme.group_len(k)
    _kill_dead_inputs(h, w)
    if grid is None and act_order:
        grid = quantize(w, scheme)
    if grid is not None and (grid.shape != (n, k) or grid.scheme != scheme):
        raise QuantizationError(f"grid must be a {scheme.name} QuantizedWeight of shape {(n, k)}, got {grid!r}")
    order = np.argsort(-np.diag(h), kind="stable") if act_order else np.arange(k)
    wt = np.ascontiguousarray(w[:, order].T)  # [K, N]: one column of the weight per contiguous row
    upper = _inverse_cholesky(h[np.ix_(order, order)], damping)
    codes = np.empty((k, n), np.uint8)
    scales = np.empty((n, k // group), np.float16) if grid is None else grid.scales.copy()
    zeros = None if scheme.symmetric else np.empty((n, k // group), np.float16) if grid is None else grid.zeros.copy()
    block = group if grid is None else BLOCK
    for start in range(0, k, block):
        stop = min(start + block, k)
        if grid is None:  # columns in order: this block is group start // group, scaled from the updated weights
            fresh = quantize(wt[start:stop].T, Int4Scheme(group_size=group, symmetric=scheme.symmetric))
            scales[:, start // group] = fresh.scales[:, 0]
            if zeros is not None:
                zeros[:, start // group] = fresh.zeros[:, 0]
        column_groups = order[start:stop] // group
        errors = _quantize_block(wt, upper, start, stop, codes, scales[:, column_groups].T,
                                 None if zeros is None else zeros[:, column_groups].T)
        wt[stop:] -= upper[start:stop, stop:].T @ errors
    unordered = np.empty_like(codes)
    unordered[order] = codes
    return QuantizedWeight(pack_int4(np.ascontiguousarray(unordered.T)), scales, zeros, scheme, (n, k))


def _kill_dead_inputs(h: np.ndarray, w: np.ndarray) -> None:
    """Inputs never seen (zero diagonal) get unit diagonal and zero weight, in place."""
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0


def _inverse_cholesky(h: np.ndarray, damping: float) -> np.ndarray:
    """Upper Cholesky factor of the damped inverse Hessian."""
    h = h + damping * np.mean(np.diag(h)) * np.eye(len(h))
    try:
        return np.linalg.cholesky(np.linalg.inv(h)).T
    except np.linalg.LinAlgError as err:
        raise QuantizationError(f"the Hessian is not positive definite after damping: {err}") from None


def _quantize_block(wt, upper, start, stop, codes, scales, zeros):
    """Quantize weight columns ``start:stop`` (rows of ``wt`` [K, N]) one by one with their group's ``scales`` (and
    ``zeros``) [stop - start, N], compensating inside the block; return the block's scaled errors
    ``[stop - start, N]`` for the update of the columns after it."""
    s = scales.astype(np.float64)
    z = np.full_like(s, SYMMETRIC_ZERO) if zeros is None else zeros.astype(np.float64)
    low, high = (-8.0, 7.0) if zeros is None else (0.0, 15.0)
    errors = np.empty((stop - start, wt.shape[1]))
    for j in range(start, stop):
        i = j - start
        column = wt[j]
        if zeros is None:
            code = np.clip(np.rint(column / s[i]), low, high) + SYMMETRIC_ZERO
        else:
            code = np.clip(np.rint(column / s[i]) + z[i], low, high)
        codes[j] = code.astype(np.uint8)
        error = (column - (code - z[i]) * s[i]) / upper[j, j]
        wt[j + 1:stop] -= np.outer(upper[j, j + 1:stop], error)
        errors[i] = error
    return errors
