"""Activation-aware input scales in an ONNX graph: which linear layers share an input, and where ``1 / s`` goes.

A group is the linear layers (``MatMul`` of a weight input, after the pre-pass) that read the same activation
tensor; an AWQ scale ``s`` per input channel multiplies their weights (``W[k, :] * s[k]``) and divides the
activation. ``apply_scale`` puts that division into the graph, keeping the float model's outputs:

- ``folded``: the activation is the output of a ``Mul`` by a constant of ``K`` values (e.g. an RMSNorm's
  gamma; an initializer or ``Constant``, possibly through ``Identity``/``Cast`` as exporters share equal
  initializers) that only the group's MatMuls read: that ``Mul`` reads ``constant / s`` from a new initializer
  instead, so a constant shared with other nodes is left alone;
- ``multiply``: otherwise an elementwise ``Mul`` by ``1 / s`` is inserted before the group's MatMuls (TVM lowers
  it as an ordinary elementwise op before the kernel; other readers of the activation still see it unscaled).

The graph is not assumed to be a Llama: attention outputs, ``silu(gate) * up`` and the like get the inserted
multiply.
"""
from dataclasses import dataclass

import numpy as np

_STANDARD = ("", "ai.onnx")


@dataclass(frozen=True)
class LinearGroup:
    """Linear layers reading one activation tensor.

    Attributes
    ----------
    activation : str
        The tensor they read.
    params : tuple of str
        Their weight parameters (``lowbit_w<i>``), in graph order.
    """

    activation: str
    params: tuple


def linear_groups(model, params) -> list:
    """The groups of the MatMuls whose weight input is in ``params``, in the graph order of their first MatMul."""
    groups = {}
    for node in model.graph.node:
        if node.op_type == "MatMul" and node.domain in _STANDARD and node.input[1] in params:
            groups.setdefault(node.input[0], []).append(node.input[1])
    return [LinearGroup(activation, tuple(dict.fromkeys(names))) for activation, names in groups.items()]


def _constant(constants, name: str):
    """The float array of tensor ``name`` if it is constant (initializer, ``Constant``, through Identity/Cast/
    Transpose, as the exporters' shared initializers are), else None."""
    value = constants.resolve(name)
    return None if value is None else np.asarray(value)


def _foldable(graph, group: LinearGroup, k: int):
    """``(Mul node, index of its constant input, constant)`` where ``1 / s`` can be folded, else None."""
    if group.activation in {o.name for o in graph.output}:
        return None
    readers = [node for node in graph.node if group.activation in node.input]
    if any(node.op_type != "MatMul" or node.input[0] != group.activation or node.input[1] not in group.params
           for node in readers):
        return None
    producer = next((node for node in graph.node if group.activation in node.output), None)
    if producer is None or producer.op_type != "Mul" or producer.domain not in _STANDARD or len(producer.input) != 2:
        return None
    from .onnx_linears import _Constants  # pylint: disable=import-outside-toplevel

    constants = _Constants(graph)
    values = [_constant(constants, name) for name in producer.input]
    for index, value in enumerate(values):
        other = values[1 - index]
        if value is not None and other is None and value.dtype.kind == "f" and value.size == k \
                and value.shape[-1] == k:
            return producer, index, value
    return None


def apply_scale(model, group: LinearGroup, scale: np.ndarray, dtype, tag: str) -> tuple:
    """Divide ``group``'s activation by ``scale`` [K] in ``model`` (in place; see the module docstring).

    Parameters
    ----------
    model : onnx.ModelProto
        The pre-passed model.
    group : LinearGroup
        The layers whose weights the caller multiplies by ``scale``.
    scale : numpy.ndarray
        ``s`` [K].
    dtype : numpy.dtype
        The activation's dtype (of the inserted multiplier).
    tag : str
        Makes the names of new tensors unique.

    Returns
    -------
    (str, str)
        ``("folded", constant name)`` or ``("multiply", the scaled activation's name)``.
    """
    from onnx import helper, numpy_helper  # pylint: disable=import-outside-toplevel

    graph = model.graph
    scale = np.asarray(scale, dtype=np.float64)
    found = _foldable(graph, group, scale.size)
    if found is not None:
        mul, index, value = found
        name = f"{mul.input[index]}__lowbit_awq{tag}"
        folded = (value.astype(np.float64) / scale.reshape(value.shape)).astype(value.dtype)
        graph.initializer.append(numpy_helper.from_array(folded, name))
        old, mul.input[index] = mul.input[index], name
        if not any(old in node.input for node in graph.node):
            _remove_initializer(graph, old)
        return "folded", name
    inverse = f"{group.activation}__lowbit_awq{tag}_inv"
    scaled = f"{group.activation}__lowbit_awq{tag}"
    graph.initializer.append(numpy_helper.from_array((1.0 / scale).astype(dtype), inverse))
    nodes = list(graph.node)
    first = next(i for i, node in enumerate(nodes) if node.op_type == "MatMul" and node.input[1] in group.params)
    for node in nodes:
        if node.op_type == "MatMul" and node.input[0] == group.activation and node.input[1] in group.params:
            node.input[0] = scaled
    nodes.insert(first, helper.make_node("Mul", [group.activation, inverse], [scaled], name=f"{scaled}_mul"))
    del graph.node[:]
    graph.node.extend(nodes)
    return "multiply", scaled


def _remove_initializer(graph, name: str) -> None:
    """Drop initializer ``name`` (no node reads it any more)."""
    for index, tensor in enumerate(graph.initializer):
        if tensor.name == name:
            del graph.initializer[index]
            return
