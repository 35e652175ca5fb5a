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

``GROUP_INPUTS`` names the layers whose inputs the search needs (see ``lowbit_tvm.models.hf_reference.linear_inputs``).
The attention output projection is left as is (its input channels belong to query heads that share key/value
heads, so a per-channel scale cannot be folded into ``v`` without tying heads together).
"""
from dataclasses import dataclass

import numpy as np

from .int4 import dequantize, quantize
from .scheme import Int4Scheme

# (layers sharing an input, scaled by s; where 1/s is folded: into a norm weight, or into the rows of a layer)
_GROUPS = (
    (("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), ("norm", "input_layernorm")),
    (("mlp.gate_proj", "mlp.up_proj"), ("norm", "post_attention_layernorm")),
    (("mlp.down_proj",), ("rows", "mlp.up_proj")),
)


# The layer kinds whose inputs ``awq_transform`` needs (each group's first layer).
GROUP_INPUTS = tuple(names[0].split(".")[-1] for names, _ in _GROUPS)


@dataclass(frozen=True)
class ScaleChoice:
    """The chosen scale exponent of one group of layers and what it bought on the calibration inputs."""

    layers: tuple
    alpha: float
    error: float
    rtn_error: float


def rtn_reconstruction(w: np.ndarray, scheme: Int4Scheme) -> np.ndarray:
    """Round-to-nearest int4 of ``w`` [N, K] (K zero-padded to whole groups), dequantized back to [N, K]."""
    k = w.shape[1]
    step = k if scheme.group_size < 0 else scheme.group_size
    padded = np.pad(w, ((0, 0), (0, -k % step)))
    return dequantize(quantize(padded, scheme))[:, :k]


def search_scale(x: np.ndarray, w: np.ndarray, scheme: Int4Scheme, grid: int = 20):
    """The activation-aware input-channel scale of ``w`` [N, K] for inputs ``x`` [T, K].

    Returns
    -------
    (numpy.ndarray, float, float, float)
        The scale [K], its exponent, the output error ``||x w^T - x (Q(w s) / s)^T|| / ||x w^T||`` with it,
        and the same error of plain round-to-nearest.
    """
    magnitude = np.abs(x).mean(axis=0) + 1e-8
    reference = x @ w.T
    norm = np.linalg.norm(reference)
    best = None
    for alpha in np.arange(grid) / grid:
        scale = magnitude**alpha
        scale = scale / np.sqrt(scale.max() * scale.min())
        approx = rtn_reconstruction((w * scale).astype(np.float32), scheme) / scale
        error = float(np.linalg.norm(x @ approx.T - reference) / norm)
        if alpha == 0:
            rtn_error = error
        if best is None or error < best[2]:
            best = (scale, float(alpha), error)
    return (*best, rtn_error)


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
        for names, (kind, target) in _GROUPS:
            keys = [f"{prefix}{name}.weight" for name in names]
            stacked = np.concatenate([out[key] for key in keys], axis=0).astype(np.float64)
            scale, alpha, error, rtn_error = search_scale(inputs[keys[0]], stacked, scheme, grid)
            for key in keys:
                out[key] = (out[key] * scale).astype(np.float32)
            fold = f"{prefix}{target}.weight"
            out[fold] = (out[fold] / (scale if kind == "norm" else scale[:, None])).astype(np.float32)
            choices.append(ScaleChoice(tuple(keys), alpha, error, rtn_error))
    return out, choices
