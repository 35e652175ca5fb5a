"""Swap a model's linear layers for low-bit ones (torchao-style ``quantize(model, scheme)``).

A registry maps a scheme type to the layer class that runs it; each such class takes
``(in_features, out_features, scheme, target)`` and has ``pack(weight) -> {param: array}``.
"""
from fnmatch import fnmatch

import numpy as np

from ..quant import Int4Scheme
from ..tvm_api import relax_nn as nn
from .config import ModelConfigError
from .fp_linear import FpLinear
from .llama import FUSED_LINEARS
from .recipe import DEFAULT_SKIP
from .w4a16_linear import W4A16Linear

LINEAR_FOR_SCHEME = {Int4Scheme: W4A16Linear}


def quantize(model, scheme, target, skip=DEFAULT_SKIP) -> list:
    """Replace every ``FpLinear`` of ``model`` (in place) by the layer that runs ``scheme``.

    Parameters
    ----------
    model : nn.Module
        A model built of ``tvm.relax.frontend.nn`` modules.
    scheme : Int4Scheme
        The weight quantization scheme (its type picks the layer class).
    target : tvm.target.Target
        The build target (the layers' kernels are scheduled for it).
    skip : tuple of str
        Module-name patterns (``fnmatch``) that stay in floating point.

    Returns
    -------
    list of str
        The names of the replaced layers.

    Raises
    ------
    ModelConfigError
        If no layer class is registered for the scheme's type.
    """
    layer_class = LINEAR_FOR_SCHEME.get(type(scheme))
    if layer_class is None:
        known = ", ".join(cls.__name__ for cls in LINEAR_FOR_SCHEME)
        raise ModelConfigError(f"no quantized layer for a {type(scheme).__name__}; known scheme types: {known}")
    replaced = []
    for parent, attr, full, child in list(_submodules(model)):
        if not isinstance(child, FpLinear):
            continue
        if any(fnmatch(full, pattern) for pattern in skip):
            continue
        layer = layer_class(child.in_features, child.out_features, scheme, target)
        if isinstance(parent, nn.ModuleList):
            parent[int(attr)] = layer
        else:
            setattr(parent, attr, layer)
        replaced.append(full)
    return replaced


def _submodules(module, prefix=""):
    """``(parent, attribute, full name, module)`` for every module under ``module``, depth first."""
    children = vars(module).items()
    if isinstance(module, nn.ModuleList):
        children = ((str(i), child) for i, child in enumerate(module))
    for attr, child in children:
        if isinstance(child, nn.Module):
            yield module, attr, f"{prefix}{attr}", child
            yield from _submodules(child, f"{prefix}{attr}.")


def pack_weights(model, weights: dict, param_names: list, dtype: str) -> list:
    """The model's parameter arrays in ``param_names`` order, from float weights with HF names.

    Quantized layers quantize and lay out their ``<layer>.weight``; every other parameter is cast to
    ``dtype``.

    Raises
    ------
    ModelConfigError
        If a weight is missing or its shape does not match the model.
    """
    layers = {full: child for _, _, full, child in _submodules(model) if hasattr(child, "pack")}
    expected = dict(model.named_parameters())
    packed = {}
    arrays = []
    for name in param_names:
        layer_name, _, param = name.rpartition(".")
        if layer_name in layers:
            if layer_name not in packed:
                packed[layer_name] = layers[layer_name].pack(_weight(weights, f"{layer_name}.weight"))
            arrays.append(packed[layer_name][param])
            continue
        array = _weight(weights, name)
        shape = tuple(int(d) for d in expected[name].shape)
        if array.shape != shape:
            raise ModelConfigError(f"weight {name} has shape {array.shape}, the model config wants {shape}")
        arrays.append(np.ascontiguousarray(array, dtype=dtype))
    return arrays


def _weight(weights: dict, name: str) -> np.ndarray:
    """``weights[name]``, or for a fused layer (``FUSED_LINEARS``) its HF parts stacked along the rows."""
    prefix, _, param = name.rpartition(".")
    for fused, parts in FUSED_LINEARS.items():
        if name not in weights and prefix.endswith(fused):
            base = prefix[: -len(fused)]
            return np.concatenate([_weight(weights, f"{base}{part}.{param}") for part in parts], axis=0)
    if name not in weights:
        raise ModelConfigError(f"weight {name} is missing (the weights have {len(weights)} tensors)")
    return np.asarray(weights[name])
