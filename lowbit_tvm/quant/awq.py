"""Activation-aware weight scaling (the AWQ idea) for a Llama's int4 round-to-nearest quantization.

Input channels that carry large activations matter most; scaling such a channel's weights up by ``s`` (and its
activations down by ``s``) leaves the float model unchanged but gives those weights finer quantization steps.
Per group of layers that share an input, ``s = mean|x| ** alpha`` (normalized to geometric mean 1), with
``alpha`` searched on a grid to minimise the output error of the round-to-nearest layers on calibration
activations (``alpha = 0`` is plain RTN, so the search never does worse on them).

The scales are folded into the float weights (``awq_transform``), so the result is an ordinary checkpoint that
the normal build path quantizes:

- q/k/v (input: the attention's RMSNorm): the norm weight is divided by ``s``, q/k/v columns multiplied;
- gate/up (input: the MLP's RMSNorm): likewise with the post-attention norm;
- down (input: ``silu(gate) * up``): the rows of ``up`` are divided by ``s``, the columns of ``down`` multiplied.

The search can run on the inputs' second moments ``H = X^T X`` and mean magnitudes alone (``search_scale_stats``:
the output error is ``sqrt(tr(D H D^T))`` for a weight error ``D``), which
``lowbit_tvm.models.calibration`` accumulates over many tokens. ``clip_grid`` is AWQ's weight clipping: per row
and group, the range ratio whose round-to-nearest output error ``d^T H_gg d`` is smallest.

``GROUP_INPUTS`` names the layers whose inputs the search needs (see ``lowbit_tvm.models.hf_reference.linear_inputs``).
By default the attention output projection is left as is. With ``heads`` given to ``scale_layer`` it is scaled
too, as AWQ does for ``v -> o`` (there for multi-head attention only): its input channel ``(query head h, dim d)``
is ``attention(h) . v[kv head of h, d]``, so a scale folded into the rows of ``v`` divides that channel for every
query head sharing the key/value head. The scale is therefore tied: one value per ``(kv head, d)``, searched from
``mean|x|`` averaged over the query heads of each key/value head.
"""
from dataclasses import dataclass, field

import numpy as np

from .int4 import QuantizedWeight, dequantize, quantize
from .scheme import Int4Scheme

# (layers sharing an input, scaled by s; where 1/s is folded: into a norm weight, or into the rows of a layer)
_GROUPS = (
    (("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), ("norm", "input_layernorm")),
    (("mlp.gate_proj", "mlp.up_proj"), ("norm", "post_attention_layernorm")),
    (("mlp.down_proj",), ("rows", "mlp.up_proj")),
)
# The optional o_proj group (scale tied per key/value head, folded into the rows of v), searched after q/k/v.
_O_GROUP = (("self_attn.o_proj",), ("heads", "self_attn.v_proj"))


# The layer kinds whose inputs ``awq_transform`` needs (each group's first layer).
GROUP_INPUTS = tuple(names[0].split(".")[-1] for names, _ in _GROUPS)


@dataclass(frozen=True)
class ScaleChoice:
    """The chosen scale of one group of layers and what it bought on the calibration inputs."""

    layers: tuple
    alpha: float
    error: float
    rtn_error: float
    scale: np.ndarray = field(default=None, compare=False, repr=False)


# Clipping ratios tried per row and group (AWQ's grid: 1.0 down to 0.55).
CLIP_RATIOS = tuple(1.0 - i / 20 for i in range(10))


def rtn_reconstruction(w: np.ndarray, scheme: Int4Scheme) -> np.ndarray:
    """Round-to-nearest int4 of ``w`` [N, K] (K zero-padded to whole groups), dequantized back to [N, K]."""
    k = w.shape[1]
    step = k if scheme.group_size < 0 else scheme.group_size
    padded = np.pad(w, ((0, 0), (0, -k % step)))
    return dequantize(quantize(padded, scheme))[:, :k]


def output_error(diff: np.ndarray, hessian: np.ndarray) -> float:
    """``||X diff^T||_F`` from the inputs' second moments ``hessian = X^T X`` (float32 products)."""
    d = diff.astype(np.float32)
    return float(np.sqrt(max(np.sum((d @ hessian.astype(np.float32)) * d, dtype=np.float64), 0.0)))


def search_scale(x: np.ndarray, w: np.ndarray, scheme: Int4Scheme, grid: int = 20):
    """The activation-aware input-channel scale of ``w`` [N, K] for inputs ``x`` [T, K].

    Returns
    -------
    (numpy.ndarray, float, float, float)
        The scale [K], its exponent, the output error ``||x w^T - x (Q(w s) / s)^T|| / ||x w^T||`` with it,
        and the same error of plain round-to-nearest.
    """
    x = np.asarray(x, dtype=np.float64)
    return _search(_error_on_inputs(x), np.abs(x).mean(axis=0), w, scheme, grid)


def _error_on_inputs(x: np.ndarray):
    """``error_of(weight difference) -> ||x diff^T||`` for inputs ``x`` [T, K]."""
    return lambda diff: float(np.linalg.norm(x @ diff.T))


def search_scale_stats(hessian: np.ndarray, mean_abs: np.ndarray, w: np.ndarray, scheme: Int4Scheme, grid: int = 20):
    """``search_scale`` from input statistics: ``hessian = X^T X`` [K, K] and ``mean_abs = mean |x|`` [K] (its
    cost does not grow with the number of tokens)."""
    return _search(lambda diff: output_error(diff, hessian), mean_abs, w, scheme, grid)


def _search(error_of, mean_abs, w, scheme, grid):
    """The grid search of ``search_scale``; ``error_of(weight difference) -> ||X diff^T||``."""
    magnitude = mean_abs + 1e-8
    norm = error_of(w)
    best = None
    for alpha in np.arange(grid) / grid:
        scale = magnitude**alpha
        scale = scale / np.sqrt(scale.max() * scale.min())
        approx = rtn_reconstruction((w * scale).astype(np.float32), scheme) / scale
        error = error_of(w - approx) / norm
        if alpha == 0:
            rtn_error = error
        if best is None or error < best[2]:
            best = (scale, float(alpha), error)
    return (*best, rtn_error)


def scale_layer(weights: dict, prefix: str, stats: dict, scheme: Int4Scheme, grid: int = 20, heads=None) -> list:
    """Search and fold the AWQ scales of one decoder layer into ``weights`` (in place).

    Parameters
    ----------
    weights : dict of str to numpy.ndarray
        HF-named float weights; the layer's scaled layers, norms and ``up`` rows are replaced.
    prefix : str
        The layer's name prefix, e.g. ``model.layers.3.``.
    stats : dict
        Per group's first layer kind (``self_attn.q_proj``, ``mlp.gate_proj``, ``mlp.down_proj``, and
        ``self_attn.o_proj`` with ``heads``): either ``("hessian", X^T X [K, K], mean |x| [K])`` or
        ``("inputs", X [T, K], mean |x| [K] or None)`` of its inputs in the unscaled model.
    scheme : Int4Scheme
        The int4 scheme the layers will be quantized with.
    grid : int
        Exponents tried: ``0, 1/grid, ..., (grid - 1)/grid``.
    heads : (int, int), optional
        ``(attention heads, key/value heads)``: also scale o_proj, the scale tied per key/value head and
        folded into the rows of v (see the module docstring). Default: o_proj is not scaled.

    Returns
    -------
    list of ScaleChoice
        One per group, in ``_GROUPS`` order with the o_proj group after q/k/v (each group's inputs are divided
        by its ``scale``).
    """
    groups = _GROUPS if heads is None else (_GROUPS[0], _O_GROUP, *_GROUPS[1:])
    choices = []
    for names, (kind, target) in groups:
        keys = [f"{prefix}{name}.weight" for name in names]
        stacked = np.concatenate([weights[key] for key in keys], axis=0).astype(np.float64)
        kind_of_stats, moments, mean_abs = stats[names[0]]
        if mean_abs is None:
            mean_abs = np.abs(np.asarray(moments, dtype=np.float64)).mean(axis=0)
        if kind == "heads":
            mean_abs = tie_heads(mean_abs, *heads)
        if kind_of_stats == "inputs":
            error_of = _error_on_inputs(np.asarray(moments, dtype=np.float64))
        else:
            error_of = lambda diff, h=moments: output_error(diff, h)  # noqa: E731
        scale, alpha, error, rtn_error = _search(error_of, mean_abs, stacked, scheme, grid)
        for key in keys:
            weights[key] = (weights[key] * scale).astype(np.float32)
        fold = f"{prefix}{target}.weight"
        weights[fold] = (weights[fold] / _fold_divisor(kind, scale, heads)).astype(np.float32)
        choices.append(ScaleChoice(tuple(keys), alpha, error, rtn_error, scale))
    return choices


def tie_heads(values: np.ndarray, heads: int, kv_heads: int) -> np.ndarray:
    """Per-channel ``values`` of the attention output [heads * head_dim], averaged over the query heads that
    share each key/value head and repeated back to [heads * head_dim] (HF's ``repeat_kv`` order: query head
    ``h`` reads key/value head ``h // (heads // kv_heads)``)."""
    per_head = np.asarray(values, dtype=np.float64).reshape(kv_heads, heads // kv_heads, -1)
    return np.broadcast_to(per_head.mean(axis=1, keepdims=True), per_head.shape).reshape(-1).copy()


def _fold_divisor(kind: str, scale: np.ndarray, heads) -> np.ndarray:
    """What the fold target is divided by: a norm weight by ``scale``, rows of ``up`` by ``scale[:, None]``, rows
    of ``v`` [kv_heads * head_dim, K] by one query head's copy of the tied scale per key/value head."""
    if kind == "norm":
        return scale
    if kind == "rows":
        return scale[:, None]
    count, kv_heads = heads
    return scale.reshape(kv_heads, count // kv_heads, -1)[:, 0, :].reshape(-1, 1)


def clip_grid(w: np.ndarray, hessian: np.ndarray, scheme: Int4Scheme, ratios=CLIP_RATIOS) -> QuantizedWeight:
    """Round-to-nearest int4 of ``w`` [N, K] with each row's group range shrunk by the ratio (of ``ratios``)
    that minimises the group's output error ``e_g^T H_gg e_g`` (AWQ's weight clipping; ``hessian = X^T X``).

    Returns
    -------
    QuantizedWeight
        Codes of the clipped weights; its scales (and zeros) are the clipped grid.
    """
    n, k = w.shape
    group = scheme.group_len(k)
    groups = k // group
    blocks = np.stack([hessian[g * group:(g + 1) * group, g * group:(g + 1) * group] for g in range(groups)])
    blocks = blocks.astype(np.float32)
    wg = np.asarray(w, dtype=np.float64).reshape(n, groups, group)
    hi = np.maximum(wg.max(axis=2, keepdims=True), 0.0)
    lo = np.minimum(wg.min(axis=2, keepdims=True), 0.0)
    best, best_error = wg, np.full((n, groups), np.inf)
    for ratio in ratios:
        clipped = np.clip(wg, ratio * lo, ratio * hi)
        diff = (wg - dequantize(quantize(clipped.reshape(n, k), scheme)).reshape(n, groups, group))
        d = diff.transpose(1, 0, 2).astype(np.float32)  # [G, N, group]
        error = np.sum((d @ blocks) * d, axis=2).T  # [N, G]
        better = error < best_error
        best = np.where(better[:, :, None], clipped, best)
        best_error = np.where(better, error, best_error)
    return quantize(best.reshape(n, k), scheme)


def awq_transform(weights: dict, num_layers: int, inputs: dict, scheme: Int4Scheme, grid: int = 20):
    """An equivalent float checkpoint whose round-to-nearest int4 quantization loses less.

    Parameters
    ----------
    weights : dict of str to numpy.ndarray
        HF-named float weights of a Llama (``model.layers.0.self_attn.q_proj.weight`` ...).
    num_layers : int
        Decoder layers.
    inputs : dict of str to numpy.ndarray
        Calibration inputs [tokens, in_features] of each group's first layer, keyed by its weight name
        (``...q_proj.weight``, ``...gate_proj.weight``, ``...down_proj.weight``), from the float model.
    scheme : Int4Scheme
        The int4 scheme the checkpoint will be quantized with.
    grid : int
        Exponents tried: ``0, 1/grid, ..., (grid - 1)/grid``.

    Returns
    -------
    (dict, list of ScaleChoice)
        The transformed weights (a new dict; unscaled tensors are shared) and the choice per group.
    """
    out = dict(weights)
    choices = []
    for layer in range(num_layers):
        prefix = f"model.layers.{layer}."
        stats = {}
        for names, _ in _GROUPS:
            x = np.asarray(inputs[f"{prefix}{names[0]}.weight"], dtype=np.float64)
            stats[names[0]] = ("inputs", x, None)
        choices += scale_layer(out, prefix, stats, scheme, grid)
    return out, choices
