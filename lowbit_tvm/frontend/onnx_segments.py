"""Run a pre-passed ONNX graph piece by piece in onnxruntime, so that calibration can change weights in between.

``SegmentRunner.compute(names)`` runs only the nodes that ``names`` need and that have not run yet (a segment),
as its own small ONNX model whose inputs are the tensors already computed, the graph's weight inputs (fed from
``weights``, which the caller may replace between calls) and the model's inputs; it keeps, per calibration feed,
only the tensors that nodes not yet run still read. Walking a model's linear layers in graph order this way runs
every node once in all (sequential calibration costs one forward pass, not one per layer), and each layer's
input is computed with the weights that the layers before it hold at that moment. The graph may be edited
between calls (nodes inserted, inputs rewired, constants replaced) as long as nodes that already ran keep
their outputs' meaning, or the caller updates the kept values (``values``).
"""
import numpy as np

from ..errors import MissingPackageError, ModelError


# AttributeProto.GRAPH and AttributeProto.GRAPHS.
_GRAPH_ATTRIBUTES = (5, 10)


def _ort():
    try:
        import onnxruntime as ort  # pylint: disable=import-outside-toplevel
    except ImportError as err:
        raise MissingPackageError("calibration runs the model in onnxruntime: pip install onnxruntime") from err
    return ort


def node_inputs(node) -> list:
    """The tensors ``node`` reads: its inputs and, for nodes with subgraphs (If, Loop, Scan), the outer-scope
    names their bodies read."""
    names = [name for name in node.input if name]
    for attr in node.attribute:
        if attr.type not in _GRAPH_ATTRIBUTES:
            continue
        for body in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
            produced = {out for sub in body.node for out in sub.output}
            produced |= {i.name for i in body.input} | {t.name for t in body.initializer}
            names += [name for sub in body.node for name in node_inputs(sub) if name not in produced]
    return names


def _key(node) -> str:
    return node.output[0]


class SegmentRunner:
    """Incremental onnxruntime execution of ``model`` over calibration ``feeds`` (see the module docstring).

    Parameters
    ----------
    model : onnx.ModelProto
        The pre-passed model; its graph inputs after the model's own are weights.
    feeds : list of dict
        Per calibration sample, the model's inputs (name -> array).
    weights : dict of str to numpy.ndarray
        The values of the weight inputs; read at every ``compute``, so replacing an entry changes the weight
        that nodes not yet run see.
    """

    def __init__(self, model, feeds: list, weights: dict):
        import onnx  # pylint: disable=import-outside-toplevel

        self.model = model
        self.weights = weights
        self.values = [dict(feed) for feed in feeds]
        self.done = set()
        inferred = onnx.shape_inference.infer_shapes(model)
        self._types = {v.name: v.type.tensor_type.elem_type
                       for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
        self.runs = 0

    def compute(self, names) -> list:
        """Run what ``names`` need; return, per feed, ``{name: array}`` of ``names``."""
        names = list(dict.fromkeys(names))
        graph = self.model.graph
        segment = self._segment(graph, names)
        if segment:
            self._run(graph, segment, names)
        missing = [name for name in names if name not in self.values[0]]
        if missing:
            raise ModelError(f"calibration cannot compute {missing[:4]}: not produced by the graph")
        out = [{name: values[name] for name in names} for values in self.values]
        self._drop(graph, names)
        return out

    def add_type(self, name: str, elem_type: int) -> None:
        """Record the element type of a tensor inserted into the graph after construction."""
        self._types[name] = elem_type

    def _segment(self, graph, names) -> list:
        producer = {out: node for node in graph.node for out in node.output}
        known = set(self.values[0]) | set(self.weights) | {t.name for t in graph.initializer}
        needed, stack = set(), list(names)
        while stack:
            name = stack.pop()
            if name in known or name in needed:
                continue
            node = producer.get(name)
            if node is None:
                continue
            if _key(node) in self.done:
                raise ModelError(f"calibration needs tensor {name!r} again after dropping it")
            needed.update(node.output)
            stack.extend(node_inputs(node))
        return [node for node in graph.node if node.output[0] in needed and _key(node) not in self.done]

    def _run(self, graph, segment: list, names: list) -> None:
        from onnx import helper  # pylint: disable=import-outside-toplevel

        produced = {out for node in segment for out in node.output}
        reads = list(dict.fromkeys(name for node in segment for name in node_inputs(node) if name not in produced))
        initializers = [t for t in graph.initializer if t.name in set(reads)]
        feeds_in = [name for name in reads if name not in {t.name for t in initializers}]
        ran = self.done | {_key(node) for node in segment}
        later = {name for node in graph.node if _key(node) not in ran for name in node_inputs(node)}
        outputs = [name for name in dict.fromkeys([*names, *(o for node in segment for o in node.output)])
                   if name in produced and (name in later or name in names)]
        inputs = [helper.make_tensor_value_info(name, self._elem_type(self._value(0, name)), None)
                  for name in feeds_in]
        results = [helper.make_tensor_value_info(name, self._output_type(name), None) for name in outputs]
        sub = helper.make_graph(segment, "segment", inputs, results, initializers)
        model = helper.make_model(sub, opset_imports=self.model.opset_import, ir_version=self.model.ir_version)
        ort = _ort()
        try:
            options = ort.SessionOptions()
            # Idle pool threads must not spin: NumPy's BLAS runs the quantizers between segments.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
            for index, values in enumerate(self.values):
                feed = {name: self._value(index, name) for name in feeds_in}
                values.update(zip(outputs, session.run(outputs, feed)))
        except Exception as err:
            raise ModelError(f"onnxruntime could not run the model on the calibration inputs: {err}") from err
        self.runs += 1
        self.done.update(_key(node) for node in segment)

    def _value(self, index: int, name: str):
        if name in self.values[index]:
            return self.values[index][name]
        if name in self.weights:
            return self.weights[name]
        raise ModelError(f"calibration input {name!r} of the model is missing from the calibration feeds")

    @staticmethod
    def _elem_type(array) -> int:
        from onnx import helper  # pylint: disable=import-outside-toplevel

        return helper.np_dtype_to_tensor_dtype(np.asarray(array).dtype)

    def _output_type(self, name: str) -> int:
        elem = self._types.get(name, 0)
        if not elem:
            raise ModelError(f"calibration cannot tell the element type of tensor {name!r} (ONNX shape inference)")
        return elem

    def _drop(self, graph, keep) -> None:
        """Forget the values that no node still to run reads (the model's inputs and ``keep`` stay)."""
        live = {name for node in graph.node if _key(node) not in self.done for name in node_inputs(node)}
        live |= {i.name for i in graph.input} | set(keep)
        for values in self.values:
            for name in [name for name in values if name not in live]:
                del values[name]
