"""GQSA: group-structured pruning plus int4 quantization of the kept groups, stored as Block Sparse Row.

A *group* is a run of ``g`` weights of one output row along K (``k`` in ``[c g, (c + 1) g)``, column block
``c``). Groups are ranked by a saliency score (``"magnitude"``: sum of ``|W|``; ``"wanda"``: sum of
``|W| * ||X_k||_2`` with per-input-channel norms of calibration activations), the least salient ``sparsity``
fraction is dropped either per row (``balance="row"``: every row keeps the same number of groups) or over the
whole layer (``balance="layer"``), and each kept group is quantized to symmetric int4 with its own fp16 scale
(``s = max|w| / 7``, ``q = clip(round(w / s), -8, 7) + 8``, ``w_hat = (q - 8) s``).

Storage (``GQSAWeight``, BSR with ``1 x g`` blocks): ``indptr`` int32 ``[N + 1]`` (row ``n`` owns blocks
``indptr[n]:indptr[n + 1]``), ``indices`` int32 ``[nnz]`` (column block of each kept group, strictly increasing
within a row), ``blocks`` uint32 ``[nnz, g / 8]`` (codes packed as ``lowbit_tvm.quant.int4.pack_int4``) and
``scales`` fp16 ``[nnz]``. The kernels read it padded to a fixed number of slots per row (``to_slots``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..errors import QuantizationError
from .int4 import _symmetric_scales, pack_int4, to_float_numpy, unpack_int4

GROUP_SIZES = (16, 32, 64, 128)
#: A padding slot: all codes 8 (weight 0 whatever the scale), scale 0, column block 0.
PAD_WORD = 0x88888888
SYMMETRIC_ZERO = 8


def _magnitude(weight, channel_norms):
    del channel_norms
    return np.abs(weight)


def _wanda(weight, channel_norms):
    if channel_norms is None:
        raise QuantizationError(
            "saliency 'wanda' needs calibration activations: pass activations=[T, K] (or use 'magnitude')"
        )
    return np.abs(weight) * channel_norms[None, :]


#: Saliency name -> per-weight score ``f(weight [N, K], channel_norms [K] or None)``.
SALIENCY = {"magnitude": _magnitude, "wanda": _wanda}


def _keep_per_row(scores, keep_fraction):
    n, groups = scores.shape
    keep = int(round(keep_fraction * groups))
    mask = np.zeros((n, groups), dtype=bool)
    if keep:
        top = np.argpartition(-scores, keep - 1, axis=1)[:, :keep]
        np.put_along_axis(mask, top, True, axis=1)
    return mask


def _keep_per_layer(scores, keep_fraction):
    keep = int(round(keep_fraction * scores.size))
    mask = np.zeros(scores.size, dtype=bool)
    if keep:
        mask[np.argpartition(-scores.ravel(), keep - 1)[:keep]] = True
    return mask.reshape(scores.shape)


#: Balance name -> ``f(group scores [N, G], keep fraction) -> keep mask [N, G]``.
BALANCE = {"row": _keep_per_row, "layer": _keep_per_layer}


@dataclass(frozen=True)
class GQSAScheme:
    """How a weight is pruned and quantized (a cache and JSON key).

    Parameters
    ----------
    group : int
        Weights per group along K (16, 32, 64 or 128); also the quantization group.
    sparsity : float
        Fraction of groups dropped, in ``[0, 1)``.
    balance : str
        ``"row"`` (every row keeps the same number of groups) or ``"layer"``.
    saliency : str
        ``"magnitude"`` or ``"wanda"`` (needs calibration activations).

    Raises
    ------
    QuantizationError
        If a field is out of range.
    """

    group: int = 64
    sparsity: float = 0.5
    balance: str = "row"
    saliency: str = "magnitude"

    def __post_init__(self):
        if self.group not in GROUP_SIZES:
            raise QuantizationError(f"GQSA group must be one of {GROUP_SIZES}, got {self.group!r}")
        if not isinstance(self.sparsity, (int, float)) or not 0.0 <= float(self.sparsity) < 1.0:
            raise QuantizationError(f"sparsity must be in [0, 1) (fraction of groups dropped), got {self.sparsity!r}")
        if self.balance not in BALANCE:
            raise QuantizationError(f"balance must be one of {sorted(BALANCE)}, got {self.balance!r}")
        if self.saliency not in SALIENCY:
            raise QuantizationError(f"saliency must be one of {sorted(SALIENCY)}, got {self.saliency!r}")

    @property
    def name(self) -> str:
        """E.g. ``gqsa-g64-s50-row-magnitude``."""
        return f"gqsa-g{self.group}-s{round(100 * self.sparsity)}-{self.balance}-{self.saliency}"

    def groups(self, k: int) -> int:
        """Column blocks along ``k``; raises ``QuantizationError`` unless ``group`` divides ``k``."""
        if not isinstance(k, (int, np.integer)) or k <= 0 or k % self.group:
            raise QuantizationError(
                f"K={k} is not a multiple of the GQSA group {self.group}; zero-pad K or pick a group dividing it"
            )
        return int(k) // self.group

    def to_json(self) -> dict:
        """A JSON-ready record."""
        return asdict(self)


@dataclass(frozen=True, eq=False)
class GQSAWeight:
    """A pruned, int4-quantized weight in BSR form (see the module docstring); validated on creation.

    Raises
    ------
    QuantizationError
        If the arrays are malformed (dtypes, shapes, row pointers, column indices out of range or unsorted).
    """

    indptr: np.ndarray
    indices: np.ndarray
    blocks: np.ndarray
    scales: np.ndarray
    scheme: GQSAScheme
    shape: tuple

    def __post_init__(self):
        validate_bsr(self.indptr, self.indices, self.blocks, self.scales, self.scheme, self.shape)

    @property
    def nnz(self) -> int:
        """Kept groups."""
        return int(self.indices.shape[0])

    @property
    def row_counts(self) -> np.ndarray:
        """Kept groups per row, int64 ``[N]``."""
        return np.diff(self.indptr.astype(np.int64))

    @property
    def density(self) -> float:
        """Kept fraction of all groups."""
        n, k = self.shape
        return self.nnz / (n * self.scheme.groups(k))

    @property
    def nbytes(self) -> int:
        """Bytes of the BSR arrays."""
        return sum(a.nbytes for a in (self.indptr, self.indices, self.blocks, self.scales))


def _fail(message):
    raise QuantizationError(f"malformed GQSA BSR weight: {message}")


def _check(name, array, dtype, shape):
    if not isinstance(array, np.ndarray) or array.dtype != dtype or array.shape != shape:
        got = f"{array.dtype} {array.shape}" if isinstance(array, np.ndarray) else type(array).__name__
        _fail(f"{name} must be a {np.dtype(dtype)} array of shape {shape}, got {got}")


def validate_bsr(indptr, indices, blocks, scales, scheme: GQSAScheme, shape) -> None:
    """Check BSR arrays against ``scheme`` and ``shape = (N, K)``.

    Raises
    ------
    QuantizationError
        Naming the first problem: dtypes/shapes, row pointers not starting at 0, decreasing or not ending at
        ``nnz``, a column block outside ``[0, K / g)``, or column blocks of a row not strictly increasing.
    """
    if not isinstance(scheme, GQSAScheme):
        _fail(f"scheme must be a GQSAScheme, got {type(scheme).__name__}")
    if not (isinstance(shape, tuple) and len(shape) == 2 and all(isinstance(d, (int, np.integer)) and d > 0
                                                                 for d in shape)):
        _fail(f"shape must be a tuple (N, K) of positive ints, got {shape!r}")
    n, k = shape
    groups = scheme.groups(k)
    _check("indptr", indptr, np.int32, (n + 1,))
    nnz = int(indptr[-1])
    if indptr[0] != 0 or np.any(np.diff(indptr.astype(np.int64)) < 0):
        _fail("indptr must start at 0 and never decrease")
    _check("indices", indices, np.int32, (nnz,))
    _check("blocks", blocks, np.uint32, (nnz, scheme.group // 8))
    _check("scales", scales, np.float16, (nnz,))
    if nnz and (indices.min() < 0 or indices.max() >= groups):
        bad = int(np.flatnonzero((indices < 0) | (indices >= groups))[0])
        _fail(f"column block index {int(indices[bad])} at position {bad} is outside [0, {groups}) "
              f"(K={k}, g={scheme.group})")
    rising = np.diff(indices.astype(np.int64)) > 0
    row_starts = np.zeros(max(nnz - 1, 0), dtype=bool)
    starts = indptr[1:-1].astype(np.int64)
    row_starts[starts[(starts > 0) & (starts < nnz)] - 1] = True
    if not np.all(rising | row_starts):
        bad = int(np.flatnonzero(~(rising | row_starts))[0])
        row = int(np.searchsorted(indptr, bad, side="right") - 1)
        _fail(f"column blocks of row {row} are not strictly increasing (positions {bad}, {bad + 1}); sort each row")


def channel_norms(activations) -> np.ndarray:
    """``||X_k||_2`` per input channel of calibration activations ``[T, K]`` (float64 ``[K]``)."""
    x = to_float_numpy(activations, "activations").astype(np.float64)
    if x.ndim != 2:
        raise QuantizationError(f"activations must be 2-D [tokens, K], got shape {x.shape}")
    return np.sqrt(np.square(x).sum(axis=0))


def keep_mask(weight, scheme: GQSAScheme, activations=None) -> np.ndarray:
    """Which groups survive pruning: bool ``[N, K / g]``.

    Parameters
    ----------
    weight : array [N, K]
        The dense weight.
    scheme : GQSAScheme
        Group, sparsity, balance and saliency.
    activations : array [T, K] or None
        Calibration inputs of the layer (needed by ``"wanda"``).
    """
    w = _weight_float(weight, scheme)
    norms = None if activations is None else channel_norms(activations)
    if norms is not None and norms.shape[0] != w.shape[1]:
        raise QuantizationError(f"activations have K={norms.shape[0]}, the weight has K={w.shape[1]}")
    score = SALIENCY[scheme.saliency](w, norms)
    group_scores = score.reshape(w.shape[0], -1, scheme.group).sum(axis=2)
    return BALANCE[scheme.balance](group_scores, 1.0 - float(scheme.sparsity))


def _weight_float(weight, scheme):
    w = to_float_numpy(weight, "weight").astype(np.float64)
    if w.ndim != 2:
        raise QuantizationError(f"weight must be 2-D [N, K], got shape {w.shape}")
    scheme.groups(w.shape[1])
    if not np.all(np.isfinite(w)):
        raise QuantizationError("weight holds NaN or infinite values")
    return w


def pack_bsr(codes, scales, mask, scheme: GQSAScheme) -> GQSAWeight:
    """BSR from dense codes ``uint8 [N, K]``, group scales ``fp16 [N, K / g]`` and a keep mask ``[N, K / g]``.

    Only kept groups are stored; the inverse is ``unpack_bsr``.
    """
    n, k = codes.shape
    groups = scheme.groups(k)
    rows, cols = np.nonzero(mask)  # row-major: sorted by row, then column block
    indptr = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(np.bincount(rows, minlength=n), out=indptr[1:])
    grouped = codes.reshape(n, groups, scheme.group)[rows, cols]
    blocks = pack_int4(np.ascontiguousarray(grouped, dtype=np.uint8)) if rows.size else np.zeros(
        (0, scheme.group // 8), np.uint32)
    return GQSAWeight(indptr, cols.astype(np.int32), blocks, scales[rows, cols].astype(np.float16), scheme, (n, k))


def unpack_bsr(qw: GQSAWeight) -> tuple:
    """``(codes uint8 [N, K], scales fp16 [N, K / g], mask bool [N, K / g])``; dropped groups hold code 8
    and scale 0."""
    n, k = qw.shape
    groups = qw.scheme.groups(k)
    rows = np.repeat(np.arange(n), qw.row_counts)
    codes = np.full((n, groups, qw.scheme.group), SYMMETRIC_ZERO, dtype=np.uint8)
    scales = np.zeros((n, groups), dtype=np.float16)
    mask = np.zeros((n, groups), dtype=bool)
    if qw.nnz:
        codes[rows, qw.indices] = unpack_int4(qw.blocks)
        scales[rows, qw.indices] = qw.scales
        mask[rows, qw.indices] = True
    return codes.reshape(n, k), scales, mask


def gqsa_quantize(weight, scheme: GQSAScheme, activations=None, mask=None) -> GQSAWeight:
    """Prune ``weight`` [N, K] by ``scheme`` and quantize the kept groups to int4 (see the module docstring).

    Parameters
    ----------
    weight : array [N, K]
        Dense weight (numpy or CPU torch).
    scheme : GQSAScheme
        Group, sparsity, balance and saliency.
    activations : array [T, K] or None
        Calibration inputs (needed by ``saliency="wanda"``).
    mask : bool array [N, K / g] or None
        Groups to keep; None chooses them with ``keep_mask`` (e.g. pass the mask ``refit_kept`` was given).

    Returns
    -------
    GQSAWeight

    Raises
    ------
    QuantizationError
        On bad input: ``group`` not dividing K, non-finite weights, wanda without activations, a mask of the
        wrong shape.
    """
    w = _weight_float(weight, scheme)
    n, k = w.shape
    if mask is None:
        mask = keep_mask(w, scheme, activations)
    elif np.shape(mask) != (n, k // scheme.group):
        raise QuantizationError(f"mask must have shape {(n, k // scheme.group)}, got {np.shape(mask)}")
    grouped = w.reshape(n, -1, scheme.group)
    scales = _symmetric_scales(grouped)
    q = np.clip(np.rint(grouped / scales.astype(np.float64)[:, :, None]), -8, 7) + SYMMETRIC_ZERO
    return pack_bsr(q.astype(np.uint8).reshape(n, k), scales, np.asarray(mask, dtype=bool), scheme)


def refit_kept(weight, mask, activations, group: int, damping: float = 0.01) -> np.ndarray:
    """Block-wise reconstruction: re-fit each row's kept weights to the dense output on calibration data.

    Row ``n`` keeps columns ``C`` (its kept groups); with ``H = X^T X`` the kept weights become
    ``argmin_v ||X_C v - X w_n||^2 = H_CC^{-1} H_C: w_n`` (``damping`` times the mean diagonal added to ``H_CC``),
    dropped weights are 0. Quantize the result with ``gqsa_quantize(..., mask=mask)``.

    Parameters
    ----------
    weight : array [N, K]
    mask : bool array [N, K / group]
        Kept groups (``keep_mask``).
    activations : array [T, K]
        Calibration inputs of the layer.
    group : int
    damping : float

    Returns
    -------
    numpy.ndarray
        float64 ``[N, K]``.
    """
    w = to_float_numpy(weight, "weight").astype(np.float64)
    x = to_float_numpy(activations, "activations").astype(np.float64)
    hessian = x.T @ x
    hessian += damping * float(np.mean(np.diag(hessian))) * np.eye(hessian.shape[0])
    target = hessian @ w.T  # [K, N]: H w_n for every row
    out = np.zeros_like(w)
    columns = np.repeat(np.asarray(mask, dtype=bool), group, axis=1)
    for n in range(w.shape[0]):
        keep = columns[n]
        if keep.any():
            out[n, keep] = np.linalg.solve(hessian[np.ix_(keep, keep)], target[keep, n])
    return out


def gqsa_dequantize(qw: GQSAWeight) -> np.ndarray:
    """The dense reconstruction, float32 ``[N, K]`` (zeros at dropped groups)."""
    codes, scales, _ = unpack_bsr(qw)
    n, k = qw.shape
    values = codes.reshape(n, -1, qw.scheme.group).astype(np.float32) - SYMMETRIC_ZERO
    return (values * scales.astype(np.float32)[:, :, None]).reshape(n, k)


def to_slots(qw: GQSAWeight, slots: int) -> tuple:
    """The kernel's padded form: every row holds ``slots`` groups (its kept ones, then padding).

    Parameters
    ----------
    qw : GQSAWeight
    slots : int
        At least the largest row count.

    Returns
    -------
    (words, scales, indices)
        uint32 ``[N, slots * g / 8]`` (a row's groups one after another), fp16 ``[N, slots]``, int32
        ``[N, slots]`` column blocks. Padding slots hold code 8 (weight 0), scale 0 and column block 0.
    """
    counts = qw.row_counts
    if slots < (int(counts.max()) if counts.size else 0):
        raise QuantizationError(f"{slots} slots per row cannot hold a row with {int(counts.max())} kept groups")
    n = qw.shape[0]
    per_group = qw.scheme.group // 8
    rows = np.repeat(np.arange(n), counts)
    position = np.arange(qw.nnz) - np.repeat(qw.indptr[:-1].astype(np.int64), counts)
    words = np.full((n, slots, per_group), PAD_WORD, dtype=np.uint32)
    scales = np.zeros((n, slots), dtype=np.float16)
    indices = np.zeros((n, slots), dtype=np.int32)
    words[rows, position] = qw.blocks
    scales[rows, position] = qw.scales
    indices[rows, position] = qw.indices
    return words.reshape(n, slots * per_group), scales, indices


def dense_reference(x, qw: GQSAWeight) -> np.ndarray:
    """``x @ gqsa_dequantize(qw).T`` in float64 (the kernels' reference)."""
    return to_float_numpy(x, "x").astype(np.float64) @ gqsa_dequantize(qw).astype(np.float64).T
