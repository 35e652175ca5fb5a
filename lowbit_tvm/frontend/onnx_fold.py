"""Fold the ONNX nodes that TVM 0.27's importer mishandles when their inputs are constants.

``ConstantOfShape`` with an empty shape (a scalar, as torch's exporter writes for attention masks) fails in the
importer (``broadcast_to`` of a 1-element value to rank 0); with a constant shape it is just a constant, so it
becomes an initializer here. The registry maps an operator to its folding function
(``(node, constant inputs) -> array``).
"""
import numpy as np


def _constant_of_shape(node, inputs):
    from onnx import helper, numpy_helper  # pylint: disable=import-outside-toplevel

    value = {a.name: helper.get_attribute_value(a) for a in node.attribute}.get("value")
    fill = np.zeros(1, np.float32) if value is None else numpy_helper.to_array(value).reshape(-1)
    return np.full(tuple(int(d) for d in inputs[0]), fill[0], dtype=fill.dtype)


FOLDERS = {"ConstantOfShape": _constant_of_shape}


def fold_constants(graph, constants) -> None:
    """Replace foldable nodes whose inputs are all constant by initializers (in place).

    Parameters
    ----------
    graph : onnx.GraphProto
        The graph to rewrite.
    constants : callable
        ``name -> numpy array or None`` (the constant value of a tensor).
    """
    from onnx import numpy_helper  # pylint: disable=import-outside-toplevel

    kept = []
    for node in graph.node:
        fold = FOLDERS.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        inputs = [constants(name) for name in node.input] if fold is not None else []
        if fold is None or any(value is None for value in inputs):
            kept.append(node)
            continue
        graph.initializer.append(numpy_helper.from_array(fold(node, inputs), node.output[0]))
    del graph.node[:]
    graph.node.extend(kept)
