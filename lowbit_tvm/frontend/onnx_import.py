"""Import an ONNX model into Relax: read, pre-pass (``onnx_linears``), check operators, ``from_onnx``
(TVM's importer with the converter overrides of ``onnx_converters``).

Every operator that neither TVM's ONNX importer nor our pre-pass handles is listed, with its node names, in
one ``UnsupportedOperatorError`` before anything is converted.
"""
import warnings
from dataclasses import dataclass

from ..errors import ModelError, UnsupportedOperatorError
from ..tvm_api import onnx_frontend
from .onnx_converters import from_onnx
from .onnx_linears import NormalizedGraph, normalize
from .onnx_read import read_onnx

_STANDARD_DOMAINS = ("", "ai.onnx")
# Handled by TVM's importer outside its converter map.
_DIRECT = ("Constant", "If")


@dataclass
class ImportedModel:
    """An ONNX model as a Relax module whose weights are parameters.

    Attributes
    ----------
    mod : tvm.IRModule
        ``main(inputs..., weights...)``.
    graph : NormalizedGraph
        The pre-pass's result: input names, weight parameters, MatMuls left in float.
    outputs : list of str
        The ONNX graph's output names.
    """

    mod: object
    graph: NormalizedGraph
    outputs: list


def unsupported_ops(model) -> dict:
    """``{operator: [node names]}`` of the nodes TVM's ONNX importer cannot convert."""
    from onnx import helper  # pylint: disable=import-outside-toplevel

    convert_map = onnx_frontend().onnx_frontend._get_convert_map()  # pylint: disable=protected-access
    known = set(convert_map) | set(_DIRECT)
    found = {}
    for node in model.graph.node:
        name = node.name or node.output[0]
        if node.domain not in _STANDARD_DOMAINS:
            found.setdefault(f"{node.domain}.{node.op_type}", []).append(name)
        elif node.op_type not in known:
            found.setdefault(node.op_type, []).append(name)
        elif node.op_type in ("DequantizeLinear", "QuantizeLinear"):
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            if attrs.get("block_size"):
                found.setdefault(f"{node.op_type}(block_size, not a MatMul weight)", []).append(name)
    return found


def _raise_unsupported(found: dict) -> None:
    parts = [f"{op} (nodes: {', '.join(names[:8])}{' ...' if len(names) > 8 else ''})" for op, names in found.items()]
    raise UnsupportedOperatorError(
        f"the model uses {len(found)} operator(s) that lowbit_tvm cannot compile: " + "; ".join(parts)
        + ". Supported: the standard ONNX operators of TVM's importer, com.microsoft.MatMulNBits (4 bits, no g_idx) "
        "and DequantizeLinear with block_size on a MatMul weight",
        found,
    )


def import_onnx(path) -> ImportedModel:
    """Read ``path`` and import it into Relax with its linear layers' weights as parameters.

    Parameters
    ----------
    path : str or os.PathLike
        The ONNX file.

    Returns
    -------
    ImportedModel

    Raises
    ------
    ModelError
        If the file is not a readable ONNX model (see ``read_onnx``) or TVM's importer fails on it.
    UnsupportedOperatorError
        If it uses operators we cannot compile (all of them are listed).
    """
    return convert(normalized_graph(path), path)


def normalized_graph(path) -> NormalizedGraph:
    """Read ``path`` and run the pre-pass (``onnx_linears.normalize``); every unsupported operator is reported.

    The result can be edited (calibration folds activation-aware scales into it) before ``convert``.
    """
    graph = normalize(read_onnx(path))
    found = unsupported_ops(graph.model)
    if found:
        _raise_unsupported(found)
    return graph


def convert(graph: NormalizedGraph, path) -> ImportedModel:
    """Import a pre-passed graph into Relax (``from_onnx`` with our converter overrides); ``path`` names it in
    errors."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mod = from_onnx(graph.model)
    except Exception as err:
        raise ModelError(f"TVM's ONNX importer failed on {path}: {str(err).strip().splitlines()[-1]}") from err
    return ImportedModel(mod, graph, [o.name for o in graph.model.graph.output])
