"""The ONNX pre-pass: every linear layer becomes ``MatMul(x, <weight input>)``, weights become graph inputs.

A linear layer is a ``MatMul`` whose second operand is a constant (an initializer or ``Constant``, possibly
through ``Transpose``/``Identity``/``Cast``, or a block-wise ``DequantizeLinear`` of constants), a ``Gemm`` with
such a weight (``alpha``/``beta``/``transB`` folded in), or a ``com.microsoft.MatMulNBits``. Each one's weight
becomes a graph input (``lowbit_w<i>``, ``[K, N]``), so the Relax function that TVM's importer makes takes it as
a parameter that the quantize pass (``onnx_quantize_pass``) can find and replace; the other large float
initializers become inputs too (they travel in the weights file, not in the library). Nodes left without
consumers (the ``Transpose``/``DequantizeLinear`` chains of the weights) are removed. MatMuls whose weight is
computed at run time stay as they are and are reported.
"""
from dataclasses import dataclass, field

import numpy as np

from ..errors import ModelError
from .onnx_fold import fold_constants
from .onnx_prequantized import Prequantized, from_dequantize_linear, from_matmul_nbits

LINEAR_PREFIX = "lowbit_w"
# Float initializers with at least this many elements become graph inputs (parameters).
PARAM_MIN_ELEMENTS = 1024
_PASS_THROUGH = ("Identity", "Cast")
_MS_DOMAIN = "com.microsoft"


@dataclass
class LinearWeight:
    """The weight of one linear layer of the graph.

    Attributes
    ----------
    param : str
        The graph input that stands for it (``[K, N]``).
    node : str
        The ONNX node's name (``MatMul``, ``Gemm`` or ``MatMulNBits``).
    source : str
        The weight tensor's name in the ONNX graph.
    k, n : int
        Input and output features.
    dtype : str
        The activations' float dtype (the kept-float weight is stored in it).
    dense : numpy.ndarray or None
        float32 ``[N, K]`` for a float weight.
    prequantized : Prequantized or None
        For a weight that the graph holds already quantized.
    activation : str
        The name of the layer's input tensor in the ONNX graph (what calibration records).
    scope : str
        The torch module the node came from, where the exporter recorded it (the dynamo exporter's
        ``pkg.torch.onnx.name_scopes`` metadata, e.g. ``model.lm_head``; it renames nodes and weights), else "".
    """

    param: str
    node: str
    source: str
    k: int
    n: int
    dtype: str
    dense: np.ndarray | None = None
    prequantized: Prequantized | None = None
    activation: str = ""
    scope: str = ""

    def float_weight(self) -> np.ndarray:
        """float32 ``[N, K]`` (the dequantized values for a pre-quantized weight)."""
        return self.dense if self.prequantized is None else self.prequantized.float_weight()


@dataclass
class NormalizedGraph:
    """The pre-pass's result.

    Attributes
    ----------
    model : onnx.ModelProto
        The rewritten model.
    inputs : list of str
        The model's own inputs, in order.
    params : list of (str, LinearWeight or numpy.ndarray)
        The graph inputs added for weights, in order (after ``inputs``).
    kept_float : list of (str, str)
        ``(node, reason)`` for MatMul/Gemm nodes left to TVM's float lowering.
    """

    model: object
    inputs: list
    params: list = field(default_factory=list)
    kept_float: list = field(default_factory=list)

    @property
    def linears(self) -> list:
        """The ``LinearWeight`` of every linear layer found."""
        return [value for _, value in self.params if isinstance(value, LinearWeight)]


class _Constants:
    """Constant values of a graph: initializers, ``Constant`` outputs, and pass-through chains of them."""

    def __init__(self, graph):
        from onnx import numpy_helper  # pylint: disable=import-outside-toplevel

        self._to_array = numpy_helper.to_array
        self.protos = {t.name: t for t in graph.initializer}
        self.producer = {out: node for node in graph.node for out in node.output}
        self._cache = {}

    def raw(self, name: str):
        """The array of an initializer or ``Constant`` output, else None."""
        if name in self._cache:
            return self._cache[name]
        value = None
        if name in self.protos:
            value = self._array(self.protos[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            attr = {a.name: a for a in node.attribute}
            if "value" in attr:
                value = self._array(attr["value"].t)
        self._cache[name] = value
        return value

    def _array(self, proto):
        try:
            return self._to_array(proto)
        except Exception as err:
            raise ModelError(f"tensor {proto.name!r} of the model is corrupted: {err}") from None

    def resolve(self, name: str):
        """The float array ``name`` holds if it is constant (through Transpose/Identity/Cast), else None."""
        value = self.raw(name)
        if value is not None:
            return value
        node = self.producer.get(name)
        if node is None or node.domain not in ("", "ai.onnx"):
            return None
        if node.op_type in _PASS_THROUGH:
            value = self.resolve(node.input[0])
            if value is not None and node.op_type == "Cast":
                value = value.astype(_onnx_dtype(_attrs(node).get("to")))
            return value
        if node.op_type == "Transpose":
            value = self.resolve(node.input[0])
            perm = _attrs(node).get("perm")
            return None if value is None else np.transpose(value, perm)
        return None

    def optional(self, node, index: int):
        if len(node.input) <= index or not node.input[index]:
            return None
        value = self.raw(node.input[index])
        if value is None:
            raise ModelError(f"input {index} ({node.input[index]!r}) of node {node.name!r} must be a constant")
        return value


def _attrs(node) -> dict:
    from onnx import helper  # pylint: disable=import-outside-toplevel

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _onnx_dtype(elem_type) -> np.dtype:
    from onnx import helper  # pylint: disable=import-outside-toplevel

    return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))


_TORCH_SCOPES = "pkg.torch.onnx.name_scopes"


def _torch_scope(node) -> str:
    """The innermost torch module scope the dynamo exporter recorded for ``node`` ("" if none)."""
    import ast  # pylint: disable=import-outside-toplevel

    for prop in node.metadata_props:
        if prop.key == _TORCH_SCOPES:
            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return ""
            return str(scopes[-2]) if isinstance(scopes, list) and len(scopes) >= 2 else ""
    return ""


class _Rewriter:
    """Walks the nodes, replacing linear layers (see the module docstring)."""

    def __init__(self, graph):
        self.graph = graph
        self.constants = _Constants(graph)
        self.linears = []
        self.kept_float = []
        self.new_initializers = []

    def _add_linear(self, node, source, k, n, dtype, dense=None, prequantized=None) -> str:
        param = f"{LINEAR_PREFIX}{len(self.linears)}"
        name = node.name or node.output[0]
        self.linears.append(
            LinearWeight(param, name, source, k, n, dtype, dense, prequantized, node.input[0], _torch_scope(node))
        )
        return param

    def _matmul_node(self, node, x: str, param: str, output: str, bias: str | None):
        from onnx import helper  # pylint: disable=import-outside-toplevel

        if bias is None:
            return [helper.make_node("MatMul", [x, param], [output], name=node.name)]
        mid = f"{output}__lowbit_matmul"
        return [helper.make_node("MatMul", [x, param], [mid], name=node.name),
                helper.make_node("Add", [mid, bias], [output], name=f"{node.name}__bias")]

    def matmul(self, node):
        """``MatMul(x, W)`` with a constant (or block-dequantized) ``W``."""
        weight = self.constants.resolve(node.input[1])
        if weight is not None and weight.ndim == 2 and weight.dtype.kind == "f":
            k, n = weight.shape
            param = self._add_linear(node, node.input[1], k, n, str(weight.dtype), dense=weight.T.astype(np.float32))
            return self._matmul_node(node, node.input[0], param, node.output[0], None)
        pre = self._block_dequantized(node.input[1])
        if pre is not None:
            prequantized, dtype = pre
            param = self._add_linear(node, node.input[1], prequantized.k, prequantized.n, dtype, prequantized=prequantized)
            return self._matmul_node(node, node.input[0], param, node.output[0], None)
        reason = "its weight is computed at run time" if weight is None else f"its weight is {weight.ndim}-D"
        self.kept_float.append((node.name or node.output[0], reason))
        return [node]

    def _block_dequantized(self, name: str):
        node = self.constants.producer.get(name)
        if node is None or node.op_type != "DequantizeLinear" or node.domain not in ("", "ai.onnx"):
            return None
        attrs = _attrs(node)
        if not attrs.get("block_size"):
            return None
        x = self.constants.raw(node.input[0])
        scale = self.constants.raw(node.input[1])
        if x is None or scale is None:
            return None
        zero = self.constants.optional(node, 2)
        pre = from_dequantize_linear(x, scale, zero, int(attrs.get("axis", 1)), int(attrs["block_size"]))
        return None if pre is None else (pre, str(scale.dtype))

    def gemm(self, node):
        """``Gemm(A, B, C)`` with a constant B: ``MatMul(A, alpha * op(B))`` plus ``beta * C``."""
        attrs = _attrs(node)
        weight = self.constants.resolve(node.input[1])
        bias_name = node.input[2] if len(node.input) > 2 and node.input[2] else None
        beta = float(attrs.get("beta", 1.0))
        bias = None if bias_name is None else self.constants.resolve(bias_name)
        if attrs.get("transA", 0) or weight is None or weight.ndim != 2 or (bias is None and bias_name and beta != 1.0):
            self.kept_float.append((node.name or node.output[0], "Gemm with transA, a run-time weight or scaled bias"))
            return [node]
        dtype = str(weight.dtype)
        if attrs.get("transB", 0):
            weight = weight.T
        weight = weight.astype(np.float32) * float(attrs.get("alpha", 1.0))
        k, n = weight.shape
        param = self._add_linear(node, node.input[1], k, n, dtype, dense=np.ascontiguousarray(weight.T))
        if bias is not None and beta != 1.0:
            bias_name = self._initializer(f"{param}_bias", (bias * beta).astype(bias.dtype))
        return self._matmul_node(node, node.input[0], param, node.output[0], bias_name)

    def matmul_nbits(self, node):
        """``com.microsoft.MatMulNBits`` (4 bits, no ``g_idx``): its codes as they are."""
        attrs = _attrs(node)
        if int(attrs.get("bits", 4)) != 4 or (len(node.input) > 4 and node.input[4]):
            return None  # unsupported: reported with the other unsupported ops
        b = self.constants.optional(node, 1)
        scales = self.constants.optional(node, 2)
        zeros = self.constants.optional(node, 3)
        k, n, block = int(attrs["K"]), int(attrs["N"]), int(attrs["block_size"])
        prequantized = from_matmul_nbits(b, scales, zeros, k, n, block)
        param = self._add_linear(node, node.input[1], k, n, str(scales.dtype), prequantized=prequantized)
        bias = node.input[5] if len(node.input) > 5 and node.input[5] else None
        return self._matmul_node(node, node.input[0], param, node.output[0], bias)

    def _initializer(self, name: str, array: np.ndarray) -> str:
        from onnx import numpy_helper  # pylint: disable=import-outside-toplevel

        self.new_initializers.append(numpy_helper.from_array(array, name))
        return name


# (domain, op type) -> the rewriter method that handles it.
LINEAR_HANDLERS = {
    ("", "MatMul"): _Rewriter.matmul,
    ("", "Gemm"): _Rewriter.gemm,
    (_MS_DOMAIN, "MatMulNBits"): _Rewriter.matmul_nbits,
}


def normalize(model) -> NormalizedGraph:
    """Rewrite ``model`` (a copy) so every linear layer reads its weight from a graph input.

    Parameters
    ----------
    model : onnx.ModelProto
        The imported model (external data loaded).

    Returns
    -------
    NormalizedGraph
    """
    import onnx  # pylint: disable=import-outside-toplevel

    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    initializer_names = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializer_names]
    fold_constants(graph, _Constants(graph).raw)
    rewriter = _Rewriter(graph)
    nodes = []
    for node in graph.node:
        handler = LINEAR_HANDLERS.get((node.domain if node.domain != "ai.onnx" else "", node.op_type))
        replaced = None if handler is None else handler(rewriter, node)
        nodes.extend([node] if replaced is None else replaced)
    del graph.node[:]
    graph.node.extend(_live_nodes(nodes, {o.name for o in graph.output}))
    graph.initializer.extend(rewriter.new_initializers)
    params = [(w.param, w) for w in rewriter.linears]
    params += _tensor_params(graph, rewriter.constants)
    _prune_initializers(graph)
    del graph.input[:]
    graph.input.extend(inputs)
    for name, value in params:
        graph.input.append(_value_info(name, value))
    return NormalizedGraph(model, [i.name for i in inputs], params, rewriter.kept_float)


def _live_nodes(nodes: list, outputs: set) -> list:
    """``nodes`` without those whose outputs nothing reads (repeated until none is left)."""
    while True:
        used = set(outputs) | {name for node in nodes for name in node.input}
        live = [node for node in nodes if any(out in used for out in node.output)]
        if len(live) == len(nodes):
            return live
        nodes = live


def _prune_initializers(graph) -> None:
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)


def _tensor_params(graph, constants: _Constants) -> list:
    """Large float initializers still read by the graph, moved to graph inputs: ``[(name, array)]``."""
    used = {name for node in graph.node for name in node.input}
    params, keep = [], []
    for tensor in graph.initializer:
        elements = int(np.prod(tensor.dims)) if tensor.dims else 1
        is_float = _onnx_dtype(tensor.data_type).kind == "f"
        if tensor.name in used and is_float and elements >= PARAM_MIN_ELEMENTS:
            params.append((tensor.name, constants.raw(tensor.name)))
        else:
            keep.append(tensor)
    del graph.initializer[:]
    graph.initializer.extend(keep)
    return params


def _value_info(name: str, value):
    from onnx import helper  # pylint: disable=import-outside-toplevel

    if isinstance(value, LinearWeight):
        shape, dtype = (value.k, value.n), np.dtype(value.dtype)
    else:
        shape, dtype = value.shape, value.dtype
    return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(dtype), list(shape))
