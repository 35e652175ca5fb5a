"""Converter overrides for TVM 0.27's ONNX importer, for the ops it converts in a way that loses dynamic shapes.

``Range`` with a limit computed from an input's shape (``Range(0, Squeeze(Shape(input_ids)[1:2]), 1)``, as
both torch exporters write for position ids and masks) is converted by TVM into an ``arange`` over a fresh
symbolic length (``range_len``) unrelated to the input's ``seq``. Every tensor broadcast against it then has an
unknown shape, and later converters fail on those: ``Expand`` (``data.ty.shape`` is None; dynamo exporter),
``Gather`` of a ``Shape`` (``shape_of expects a tensor input``; TorchScript exporter). With a constant start and
step and a symbolic dimension as the limit, the override emits ``R.arange(start, seq, step)`` directly, so its
length is ``seq`` itself; in every other case TVM's own converter runs.

``OVERRIDES`` maps an operator to ``(bb, inputs, attrs, params, opset) -> relax.Expr or None`` (None: defer to
TVM's converter). ``from_onnx`` runs TVM's importer with these overrides, without touching TVM's module state.
"""
import functools

from ..tvm_api import onnx_frontend, relax, tirx, tvm


def _constant_scalar(value):
    """The Python number of a one-element ``relax.Constant``, else None."""
    if not isinstance(value, tvm.ir.GenericConst):
        return None
    array = value.value.numpy()
    return array.item() if array.size == 1 else None


def _range(bb, inputs, attrs, params, opset):  # pylint: disable=unused-argument
    """``Range(start, limit, delta)`` with constant integers start <= 0 and delta > 0 and a limit that is a
    symbolic dimension (``seq``): ``R.arange``, of length ``ceil((seq - start) / delta)``.

    ONNX clamps a negative length to 0, ``R.arange`` does not; a dimension is never negative, so with these
    conditions the length is not either. Anything else (e.g. a limit ``seq - 8``) is left to TVM's converter.
    """
    start, limit, delta = inputs
    first, step = _constant_scalar(start), _constant_scalar(delta)
    if first is None or step is None or not isinstance(limit, tirx.Var):
        return None
    dtype = str(start.ty.dtype)
    if not dtype.startswith("int") or step <= 0 or first > 0:
        return None
    return relax.op.arange(int(first), limit, int(step), dtype)


OVERRIDES = {"Range": _range}


@functools.cache
def _importer_class():
    frontend = onnx_frontend().onnx_frontend

    class Importer(frontend.ONNXGraphImporter):
        """TVM's ``ONNXGraphImporter`` that tries ``OVERRIDES`` before its own converters."""

        def _convert_operator(self, op_name, inputs, attrs, opset):
            override = OVERRIDES.get(op_name)
            sym = None if override is None else override(self.bb, inputs, attrs, [self._nodes, self._params], opset)
            if sym is None:
                return super()._convert_operator(op_name, inputs, attrs, opset)
            return self.bb.normalize(sym)

    return Importer


def _opset(model) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    return 1


def from_onnx(model):
    """``tvm.relax.frontend.onnx.from_onnx(model)`` (weights as constants) with the converters in ``OVERRIDES``.

    Parameters
    ----------
    model : onnx.ModelProto
        A checked model (``read_onnx``); TVM's own checker is not run again.

    Returns
    -------
    tvm.IRModule
    """
    importer = _importer_class()(None, "float32", keep_params_in_input=False, sanitize=True)
    return importer.from_onnx(model.graph, _opset(model))
