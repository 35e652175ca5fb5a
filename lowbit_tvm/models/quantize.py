"""Swap a model's linear layers for low-bit ones (torchao-style ``quantize(model, scheme)``).

A registry maps a scheme type to the layer class that runs it; each such class takes
``(in_features, out_features, scheme, target)`` and has ``pack(weight) -> {param: array}``. A weight that is
already quantized (a ``QuantizedWeight``, e.g. from GPTQ: ``lowbit_tvm.models.calibration``, or a ``BCQWeight``
from the activation-aware fit: ``checkpoints.with_aware_bcq``) is laid out as it is instead of being quantized
by round-to-nearest or plain BCQ. Atom-style W4A8 / W8A8 layers (``AtomScheme``) take an ``AtomWeight`` (its
outlier channels calibrated: ``checkpoints.with_atom_outliers``), or a float weight when the scheme has no outliers.
"""
from fnmatch import fnmatch

import numpy as np

from ..kernel import prepare_weights
from ..quant import BCQScheme, BCQWeight, Int4Scheme, QuantizedWeight
from ..quant.atom import AtomScheme, AtomWeight
from ..tvm_api import relax_nn as nn
from .bcq_linear import BCQLinear
from .config import ModelConfigError
from .fp_linear import FpLinear
from .llama import FUSED_LINEARS
from .recipe import DEFAULT_SKIP
from .w4a16_linear import W4A16Linear
from .w4a8_linear import AtomLinear

LINEAR_FOR_SCHEME = {Int4Scheme: W4A16Linear, BCQScheme: BCQLinear, AtomScheme: AtomLinear}
# Weights fit offline (GPTQ, activation-aware BCQ, calibrated outliers) that a layer lays out as they are.
FITTED = (QuantizedWeight, BCQWeight, AtomWeight)
# The layer class that takes each kind of fitted weight in ``pack`` (QuantizedWeight: laid out here, see ``_pack``).
LAYER_FOR_FITTED = {BCQWeight: BCQLinear, AtomWeight: AtomLinear}


def quantize(model, scheme, target, skip=DEFAULT_SKIP) -> list:
    """Replace every ``FpLinear`` of ``model`` (in place) by the layer that runs ``scheme``.

    Parameters
    ----------
    model : nn.Module
        A model built of ``tvm.relax.frontend.nn`` modules.
    scheme : Int4Scheme, BCQScheme or AtomScheme
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

    Quantized layers quantize and lay out their ``<layer>.weight`` (or lay out a ``QuantizedWeight`` given for
    it: K zero-padded as the layer pads it; a fused layer's parts are stacked along the rows; or a ``BCQWeight``
    given for the fused or plain layer name); every other parameter is cast to ``dtype``.

    Raises
    ------
    ModelConfigError
        If a weight is missing, its shape does not match the model, or a ``QuantizedWeight`` is given for a
        floating-point layer or does not fit its layer's scheme and shape.
    """
    layers = {full: child for _, _, full, child in _submodules(model) if hasattr(child, "pack")}
    expected = dict(model.named_parameters())
    packed = {}
    arrays = []
    for name in param_names:
        layer_name, _, param = name.rpartition(".")
        if layer_name in layers:
            if layer_name not in packed:
                packed[layer_name] = _pack(layers[layer_name], layer_name, _weight(weights, f"{layer_name}.weight"))
            arrays.append(packed[layer_name][param])
            continue
        array = _weight(weights, name)
        if isinstance(array, FITTED):
            raise ModelConfigError(f"{name} is quantized ({array.scheme.name}) but its layer is kept in floating "
                                   "point; quantize only the layers the recipe quantizes")
        shape = tuple(int(d) for d in expected[name].shape)
        if array.shape != shape:
            raise ModelConfigError(f"weight {name} has shape {array.shape}, the model config wants {shape}")
        arrays.append(np.ascontiguousarray(array, dtype=dtype))
    return arrays


def _pack(layer, name: str, weight) -> dict:
    """``layer.pack(weight)`` for a float weight, a ``BCQWeight`` or an ``AtomWeight`` (the layer checks its
    scheme and shape); a ``QuantizedWeight`` is laid out for the layer's kernel as is."""
    wanted = LAYER_FOR_FITTED.get(type(weight))
    if wanted is not None and not isinstance(layer, wanted):
        raise ModelConfigError(f"{name}: a {weight.scheme.name} weight was given for a layer that is not "
                               f"{wanted.__name__} (it is {type(layer).__name__})")
    if not isinstance(weight, QuantizedWeight):
        return layer.pack(weight)
    op = getattr(layer, "op", None)
    if op is None or (op.n, op.k) != weight.shape or op.scheme != weight.scheme:
        wanted = "a float weight" if op is None else f"{op.scheme.name} of shape {(op.n, op.k)}"
        raise ModelConfigError(f"{name}: the quantized weight is {weight.scheme.name} of shape {weight.shape}, the "
                               f"layer takes {wanted}")
    return dict(zip(("qweight", "scales", "zeros"), prepare_weights(op, weight)))


def _stack(parts: list, name: str):
    """Float parts concatenated along the rows, or quantized parts with their codes, scales and zeros stacked."""
    quantized = [isinstance(part, QuantizedWeight) for part in parts]
    if not any(quantized):
        return np.concatenate(parts, axis=0)
    if not all(quantized) or len({(p.scheme, p.shape[1]) for p in parts}) != 1:
        raise ModelConfigError(f"the parts of fused layer {name} must be all float or all quantized alike")
    zeros = None if parts[0].zeros is None else np.concatenate([p.zeros for p in parts])
    return QuantizedWeight(np.concatenate([p.packed for p in parts]), np.concatenate([p.scales for p in parts]), zeros,
                           parts[0].scheme, (sum(p.shape[0] for p in parts), parts[0].shape[1]))


def _weight(weights: dict, name: str):
    """``weights[name]``, or for a fused layer (``FUSED_LINEARS``) its HF parts stacked along the rows."""
    prefix, _, param = name.rpartition(".")
    for fused, parts in FUSED_LINEARS.items():
        if name not in weights and prefix.endswith(fused):
            base = prefix[: -len(fused)]
            return _stack([_weight(weights, f"{base}{part}.{param}") for part in parts], name)
    if name not in weights:
        raise ModelConfigError(f"weight {name} is missing (the weights have {len(weights)} tensors)")
    value = weights[name]
    return value if isinstance(value, FITTED) else np.asarray(value)
