"""Calibration of an ONNX model's linear layers on given inputs: AWQ scales, clipping, GPTQ, sequentially.

``calibrate_graph`` walks the groups of linear layers that share an input in graph order (see ``OnnxRecipe``):
onnxruntime records the group's input (``onnx_segments``: with the groups before it already quantized when
sequential), an activation-aware scale per input channel is searched (``quant.awq``) and folded into the graph
(``onnx_awq``), and the scaled weights are clipped and GPTQ-quantized on the scaled inputs' second moments
(``models.calibration.quantize_with_statistics``, the per-weight step of the Relax Llama's calibration). The
quantize pass then takes those weights as they are. ``layer_hessians`` (every layer's ``X^T X`` of the float
model in one run) is the older GPTQ-only entry.
"""
import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ..errors import MissingPackageError, ModelError, QuantizationError
from ..models.calibration import quantize_with_statistics, row_slice
from ..quant import dequantize
from ..quant.gptq import DAMPING
from .onnx_linears import LinearWeight


def layer_hessians(model_path, linears: list, feeds: list) -> dict:
    """``{parameter name: X^T X}`` of every float linear layer's input over the calibration feeds.

    Parameters
    ----------
    model_path : str or os.PathLike
        The ONNX file (run as it is by onnxruntime).
    linears : list of LinearWeight
        The layers found by the pre-pass (pre-quantized ones are skipped).
    feeds : list of dict
        onnxruntime input feeds (ONNX input name -> numpy array).

    Raises
    ------
    MissingPackageError
        If onnxruntime is not installed.
    ModelError
        If onnxruntime cannot run the model on the feeds.
    """
    try:
        import onnxruntime as ort  # pylint: disable=import-outside-toplevel
    except ImportError as err:
        raise MissingPackageError("calibration runs the model in onnxruntime: pip install onnxruntime") from err
    import onnx  # pylint: disable=import-outside-toplevel

    from ..quant.gptq import input_hessian  # pylint: disable=import-outside-toplevel

    layers = [w for w in linears if w.prequantized is None]
    model = onnx.load(str(model_path))
    present = {o.name for o in model.graph.output}
    for name, dtype in {w.activation: w.dtype for w in layers if w.activation not in present}.items():
        elem = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
        model.graph.output.append(onnx.helper.make_tensor_value_info(name, elem, None))
    try:
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        hessians = {}
        for feed in feeds:
            values = dict(zip(names, session.run(None, feed)))
            for w in layers:
                hessians[w.param] = hessians.get(w.param, 0.0) + input_hessian(values[w.activation])
    except Exception as err:
        raise ModelError(f"onnxruntime could not run {model_path} on the calibration inputs: {err}") from err
    return {param: np.asarray(h) for param, h in hessians.items()}


@dataclass(frozen=True)
class OnnxRecipe:
    """How calibration quantizes the linear layers of an ONNX model (``compile_onnx(..., recipe=...)``).

    The default is the recipe that meets the W4A16 perplexity target on the Relax Llama
    (``models.checkpoints.gptq_recipe(scheme, awq=True)``), made generic: AWQ scales for every group of layers
    sharing an input, clipping, act-order GPTQ, calibrated sequentially.

    Parameters
    ----------
    awq : bool
        Search an activation-aware scale per input channel of each group of layers sharing an input
        (``quant.awq.search_scale_stats``) and fold it into the graph (``onnx_awq.apply_scale``).
    clip : bool
        Search a clipping ratio per row and group (``quant.awq.clip_grid``; GPTQ keeps that grid).
    gptq : bool
        GPTQ error compensation (else round-to-nearest on the grid).
    act_order : bool
        GPTQ columns in decreasing ``diag(X^T X)`` order, groups' scales fixed first (needs ``gptq``).
    sequential : bool
        Record each group's inputs with the layers before it already quantized (their dequantized weights fed
        to onnxruntime), in graph order; else every input comes from the float model.
    damping : float
        GPTQ's Hessian damping, a fraction of the mean diagonal (0 < damping < 1).
    grid : int
        AWQ exponents tried: ``0, 1/grid, ..., (grid - 1)/grid`` (0 is round-to-nearest's, so the search never
        does worse on the calibration inputs).

    Raises
    ------
    QuantizationError
        For options that contradict each other or are out of range.
    """

    awq: bool = True
    clip: bool = True
    gptq: bool = True
    act_order: bool = True
    sequential: bool = True
    damping: float = DAMPING
    grid: int = 20

    def __post_init__(self):
        for name in ("awq", "clip", "gptq", "act_order", "sequential"):
            if not isinstance(getattr(self, name), bool):
                raise QuantizationError(f"calibration option {name} must be True or False, got {getattr(self, name)!r}")
        if self.act_order and not self.gptq:
            raise QuantizationError("act_order orders GPTQ's columns: it needs gptq=True (--gptq)")
        if not (self.awq or self.clip or self.gptq):
            raise QuantizationError("a calibration recipe with none of awq, clip and gptq is round-to-nearest: "
                                    "leave out the calibration inputs instead")
        if not (isinstance(self.damping, (int, float)) and 0.0 < self.damping < 1.0):
            raise QuantizationError(f"GPTQ damping must be a fraction in (0, 1), got {self.damping!r}")
        if not isinstance(self.grid, int) or isinstance(self.grid, bool) or self.grid < 1:
            raise QuantizationError(f"the AWQ grid must be a positive int, got {self.grid!r}")

    @property
    def label(self) -> str:
        """A short name, e.g. ``awq+clip+gptq(act-order), sequential``."""
        parts = [name for name in ("awq", "clip") if getattr(self, name)]
        if self.gptq:
            parts.append("gptq(act-order)" if self.act_order else "gptq")
        return "+".join(parts) + (", sequential" if self.sequential else "")

    def per_weight(self, scheme):
        """The ``models.calibration.CalibrationRecipe`` of the per-weight step (clip and GPTQ)."""
        from ..models.calibration import CalibrationRecipe  # pylint: disable=import-outside-toplevel

        return CalibrationRecipe(scheme, gptq=self.gptq, clip=self.clip, act_order=self.act_order,
                                 damping=float(self.damping))


#: The recipe ``compile_onnx`` uses when given calibration inputs and no recipe.
DEFAULT_RECIPE = OnnxRecipe()


@dataclass
class Calibrated:
    """What ``calibrate_graph`` did.

    Attributes
    ----------
    quantized : dict of str to (QuantizedWeight, str)
        Per weight parameter, its quantized weight (K zero-padded to ``scheme.padded_k``) and a note.
    groups : list of dict
        Per group of layers sharing an input: its parameters, the AWQ exponent and where ``1 / s`` went, the
        relative output errors of the scaled and plain round-to-nearest weights on the calibration inputs.
    seconds : float
        Wall time of the calibration.
    tokens : int
        Calibration tokens (rows of the layers' inputs) per group.
    """

    quantized: dict
    groups: list
    seconds: float
    tokens: int


def calibration_feeds(graph, calibration) -> list:
    """Check calibration inputs against the model's inputs and return one onnxruntime feed per sample.

    ``calibration`` is a list of feeds (input name -> array), or one mapping of arrays that either have the
    input's rank (one sample) or one more leading axis (a stack of samples). Arrays are cast to the inputs'
    dtypes.

    Raises
    ------
    ModelError
        For names that are not the model's inputs, missing inputs, ranks that fit neither form, or stacks of
        different lengths.
    """
    from onnx import helper  # pylint: disable=import-outside-toplevel

    specs = {}
    for value in graph.model.graph.input[: len(graph.inputs)]:
        tensor = value.type.tensor_type
        rank = len(tensor.shape.dim) if tensor.HasField("shape") else None
        specs[value.name] = (np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type)), rank)
    if isinstance(calibration, Mapping):
        calibration = _unstack(dict(calibration), specs)
    feeds = list(calibration) if isinstance(calibration, (list, tuple)) else None
    if not feeds or not all(isinstance(feed, Mapping) for feed in feeds):
        raise ModelError("calibration inputs must be a non-empty list of feeds (input name -> array) or a mapping "
                         "of stacked arrays")
    return [_checked_feed(feed, specs) for feed in feeds]


def _unstack(arrays: dict, specs: dict) -> list:
    counts = set()
    for name, array in arrays.items():
        rank = specs.get(name, (None, None))[1]
        ndim = np.ndim(array)
        if rank is not None and ndim not in (rank, rank + 1):
            raise ModelError(f"calibration input {name!r} has {ndim} dimensions; the model's input has {rank} "
                             f"(or {rank + 1} for a stack of samples)")
        counts.add(1 if rank is None or ndim == rank else len(array))
    if len(counts) > 1:
        raise ModelError(f"calibration inputs hold different numbers of samples: {sorted(counts)}")
    count = counts.pop() if counts else 0
    stacked = {name for name, array in arrays.items() if specs.get(name, (None, None))[1] not in (None, np.ndim(array))}
    return [{name: (array[i] if name in stacked else array) for name, array in arrays.items()} for i in range(count)]


def _checked_feed(feed, specs: dict) -> dict:
    unknown = sorted(set(feed) - set(specs))
    if unknown:
        raise ModelError(f"calibration inputs {unknown} are not inputs of the model (its inputs: {sorted(specs)})")
    missing = sorted(set(specs) - set(feed))
    if missing:
        raise ModelError(f"calibration inputs lack the model's input(s) {missing}")
    out = {}
    for name, value in feed.items():
        dtype, rank = specs[name]
        array = np.asarray(value)
        if rank is not None and array.ndim != rank:
            raise ModelError(f"calibration input {name!r} has {array.ndim} dimensions; the model's input has {rank}")
        out[name] = np.ascontiguousarray(array.astype(dtype, copy=False))
    return out


def calibrate_graph(graph, feeds: list, scheme, recipe: OnnxRecipe, selected, progress=None) -> Calibrated:
    """Quantize the selected linear layers of a pre-passed graph with ``recipe`` on calibration ``feeds``.

    Groups of layers sharing an input are handled in graph order: their input's ``X^T X`` and ``mean |x|`` are
    accumulated over the feeds (``onnx_segments.SegmentRunner``: onnxruntime runs each node once in all), the
    AWQ scale is searched and folded into ``graph`` (the layers' ``LinearWeight.dense`` become ``W * s``), and
    the scaled weights are clipped and GPTQ-quantized on the scaled inputs' statistics. With
    ``recipe.sequential`` the later groups then run on the dequantized weights.

    Parameters
    ----------
    graph : NormalizedGraph
        Edited in place (AWQ folds, scaled float weights).
    feeds : list of dict
        onnxruntime feeds of the model's inputs (``calibration_feeds``).
    scheme : Int4Scheme
        The scheme the layers are quantized with.
    recipe : OnnxRecipe
        What to do.
    selected : callable
        ``selected(LinearWeight) -> bool``: the layers that go on the kernel (others are left alone).
    progress : callable, optional
        Wraps the iterable of groups (e.g. ``tqdm``).

    Returns
    -------
    Calibrated
    """
    from ..quant.awq import search_scale_stats  # pylint: disable=import-outside-toplevel
    from .onnx_awq import linear_groups  # pylint: disable=import-outside-toplevel
    from .onnx_segments import SegmentRunner  # pylint: disable=import-outside-toplevel

    start = time.time()
    linears = {w.param: w for w in graph.linears if w.prequantized is None and selected(w)}
    groups = linear_groups(graph.model, linears)
    weights = {name: (value.float_weight().T.astype(value.dtype) if isinstance(value, LinearWeight) else value)
               for name, value in graph.params}
    runner = SegmentRunner(graph.model, feeds, weights)
    per_weight = recipe.per_weight(scheme)
    quantized, records, tokens = {}, [], 0
    for index, group in enumerate((progress or iter)(groups)):
        members = [linears[param] for param in group.params]
        hessian, mean_abs, tokens = _statistics(runner.compute([group.activation]), group.activation)
        stacked = np.concatenate([w.dense for w in members]).astype(np.float64)
        record = {"params": list(group.params), "nodes": [w.node for w in members], "awq": None}
        if recipe.awq:
            scale, alpha, error, rtn_error = search_scale_stats(hessian, mean_abs, stacked, scheme, recipe.grid)
            record.update(alpha=alpha, error=error, rtn_error=rtn_error)
            if alpha > 0:
                record["awq"] = _apply(graph.model, runner, group, members, scale, index)
                stacked = stacked * scale
                hessian = hessian / np.outer(scale, scale)
        qw = quantize_with_statistics(stacked, hessian, per_weight)
        note = f"{recipe.label} ({'awq ' + record['awq'] if record['awq'] else 'no awq scale'})" if recipe.awq \
            else recipe.label
        rows = np.cumsum([0] + [w.n for w in members])
        for w, begin, end in zip(members, rows[:-1], rows[1:]):
            part = row_slice(qw, begin, end)
            quantized[w.param] = (part, note)
            current = dequantize(part)[:, : w.k] if recipe.sequential else w.dense
            weights[w.param] = np.ascontiguousarray(current.T.astype(w.dtype))
        records.append(record)
    return Calibrated(quantized, records, round(time.time() - start, 1), tokens)


def _statistics(values: list, name: str) -> tuple:
    """``(X^T X, mean |x|, tokens)`` of tensor ``name`` over the feeds' values (rows of its last axis)."""
    hessian, abs_sum, tokens = 0.0, 0.0, 0
    for value in values:
        x = np.asarray(value[name], dtype=np.float32).reshape(-1, np.shape(value[name])[-1])
        hessian = hessian + (x.T @ x).astype(np.float64)  # float32 products per sample, summed in float64
        abs_sum = abs_sum + np.abs(x).sum(axis=0, dtype=np.float64)
        tokens += x.shape[0]
    return hessian, abs_sum / max(tokens, 1), tokens


def _apply(model, runner, group, members, scale: np.ndarray, index: int) -> str:
    """Fold ``1 / scale`` into the graph and the runner's kept values, ``scale`` into the members' weights;
    return where ``1 / scale`` went."""
    from onnx import helper  # pylint: disable=import-outside-toplevel

    from .onnx_awq import apply_scale  # pylint: disable=import-outside-toplevel

    dtype = np.dtype(members[0].dtype)
    kind, name = apply_scale(model, group, scale, dtype, str(index))
    if kind == "folded":
        for values in runner.values:
            values[group.activation] = (values[group.activation] / scale).astype(values[group.activation].dtype)
    else:
        runner.add_type(name, helper.np_dtype_to_tensor_dtype(dtype))
    for w in members:
        w.dense = (w.dense * scale).astype(np.float32)
    return kind
