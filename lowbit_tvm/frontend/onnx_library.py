"""Compile an ONNX model into a library (``.so``) plus its weights (``.safetensors``): ``compile_onnx``.

The model is imported (``onnx_import``), its linear layers go on our W4A16 kernel (``onnx_quantize_pass``), the
rest is lowered by TVM (dlight on CUDA), and the Relax VM executable is exported with compiled device code
(``codegen.export_library``). The weights file holds the parameters in the order the graph takes them, and its
metadata names the ONNX inputs (dtype, shape with dynamic dimensions by name) and outputs, and what happened to
each linear layer. Nothing is written unless everything succeeded; existing files are kept unless
``overwrite``.
"""
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..codegen import export_library, sidecar_path
from ..errors import LibraryError, ModelError
from ..models.recipe import WEIGHTS_SUFFIX
from .onnx_engine import ONNX_METADATA_KEY
from .onnx_import import convert, normalized_graph
from .onnx_linears import LinearWeight

# Schemes that leave float weights unquantized (pre-quantized weights still go on the kernel).
FLOAT_SCHEMES = ("fp16", "fp32", "none")
DEFAULT_KEEP_FLOAT = ("lm_head",)


@dataclass
class CompiledOnnx:
    """What ``compile_onnx`` wrote and did.

    Attributes
    ----------
    path : Path
        The library.
    layers : list of dict
        Per linear layer: node, weight, k, n, kernel (a scheme name or ``"float"``) and a note.
    kept_float : list of (str, str)
        MatMul/Gemm nodes that are not linear layers with a constant weight, and why.
    calibration : dict or None
        With calibration inputs: the recipe, seconds, tokens per group and per group of layers sharing an input
        its AWQ exponent, where ``1 / s`` went and the output errors (see ``onnx_calibrate.Calibrated``).
    """

    path: Path
    layers: list
    kept_float: list
    calibration: dict | None = None


def _target(target, arch):
    from ..tvm_api import Target  # pylint: disable=import-outside-toplevel

    if not isinstance(target, str):
        return target
    if target == "cuda":
        from ..kernel import default_target  # pylint: disable=import-outside-toplevel

        return default_target(arch)
    if target == "llvm":
        return Target({"kind": "llvm"})
    raise ModelError(f"unknown target {target!r}; use 'cuda' or 'llvm'")


def _scheme(name: str | None):
    from ..quant import get_scheme  # pylint: disable=import-outside-toplevel

    return None if name is None or name in FLOAT_SCHEMES else get_scheme(name)


def _input_specs(graph) -> list:
    from onnx import helper  # pylint: disable=import-outside-toplevel

    specs = []
    for value in graph.model.graph.input[: len(graph.inputs)]:
        tensor = value.type.tensor_type
        dims = None
        if tensor.HasField("shape"):
            dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim]
        dtype = str(np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type)))
        specs.append({"name": value.name, "dtype": dtype, "shape": dims})
    return specs


def compile_onnx(model_path, output, scheme: str | None = "w4a16-g128", target="llvm", *, arch=None,
                 keep_float=DEFAULT_KEEP_FLOAT, calibration=None, recipe=None, overwrite: bool = False,
                 progress=None) -> CompiledOnnx:
    """Compile an ONNX model with its linear layers on our W4A16 kernel.

    Parameters
    ----------
    model_path : str or os.PathLike
        The ``.onnx`` file (external data beside it is read from its folder only).
    output : str or os.PathLike
        The library to write (``.so``); the weights go to the same name with ``.safetensors``.
    scheme : str or None
        A W4A16 scheme (``"w4a16-g128"``, ``"w4a16-g128-asym"``, ...) for float weights, or ``"fp16"``/None to
        leave them float. Pre-quantized weights (MatMulNBits, block-wise DequantizeLinear) keep their own codes.
    target : str or tvm.target.Target
        ``"llvm"`` (CPU), ``"cuda"`` or a target.
    arch : str or None
        The CUDA arch for ``target="cuda"`` (default: the local GPU's, else sm_90).
    keep_float : tuple of str
        Layer-name patterns (node or weight name, ``fnmatch`` or substring) left unquantized; default the LM head.
    calibration : list of dict or dict, optional
        Input feeds (ONNX input name -> array) to calibrate on, or one mapping of arrays stacked along a leading
        sample axis (``onnx_calibrate.calibration_feeds``): the layers' inputs are recorded with onnxruntime and
        the weights quantized with ``recipe`` instead of round-to-nearest. Never the evaluation data.
    recipe : OnnxRecipe, optional
        With ``calibration``: what to do (default ``onnx_calibrate.DEFAULT_RECIPE``: AWQ scales, clipping,
        act-order GPTQ, sequential).
    overwrite : bool
        Replace existing output files.
    progress : callable, optional
        Wraps the iterable of calibration groups (e.g. ``tqdm``).

    Returns
    -------
    CompiledOnnx

    Raises
    ------
    ModelError, UnsupportedOperatorError
        For a bad model file, unsupported operators or calibration inputs that do not fit the model (nothing is
        written).
    QuantizationError
        For a recipe without calibration inputs, or calibration with a float scheme.
    LibraryError
        If an output file exists and ``overwrite`` is False.
    """
    output = Path(output).expanduser().absolute()
    weights_path = output.with_suffix(WEIGHTS_SUFFIX)
    if output.suffix != ".so":
        raise LibraryError(f"the library path must end with '.so', got {output}")
    if not overwrite:
        for existing in (output, weights_path, sidecar_path(output)):
            if existing.exists():
                raise LibraryError(f"refusing to overwrite existing file {existing}; pass overwrite=True (--overwrite)")
    tgt = _target(target, arch)
    quant_scheme = _scheme(scheme)
    _check_calibration(calibration, recipe, quant_scheme, scheme)
    graph = normalized_graph(model_path)
    quantize_pass = _quantize_pass(graph, quant_scheme, tgt, keep_float)
    calibrated = None
    if calibration is not None:
        calibrated = _calibrate(graph, calibration, quant_scheme, recipe or _default_recipe(), quantize_pass,
                                progress)
    return _write(graph, quantize_pass, model_path, output, tgt, calibrated, overwrite)


def _write(graph, quantize_pass, model_path, output: Path, target, calibrated, overwrite: bool) -> CompiledOnnx:
    """Import the (calibrated) graph into Relax, run the quantize pass, build and save."""
    imported = convert(graph, model_path)
    executable, names, arrays, records = _build(imported, quantize_pass, target)
    scheme = quantize_pass.scheme
    meta = {
        "inputs": _input_specs(imported.graph),
        "outputs": imported.outputs,
        "params": names,
        "scheme": None if scheme is None else scheme.name,
        "target_kind": target.kind.name,
        "layers": [vars(r) for r in records],
        "kept_float": [list(item) for item in imported.graph.kept_float],
        "source": Path(model_path).name,
    }
    if calibrated is not None:
        meta["calibration"] = calibrated
    _save(output, output.with_suffix(WEIGHTS_SUFFIX), executable, names, arrays, meta, overwrite)
    return CompiledOnnx(output, meta["layers"], imported.graph.kept_float, calibrated)


def _default_recipe():
    from .onnx_calibrate import DEFAULT_RECIPE  # pylint: disable=import-outside-toplevel

    return DEFAULT_RECIPE


def _check_calibration(calibration, recipe, quant_scheme, scheme) -> None:
    """Clear errors for options that do not go together (before anything is read)."""
    from ..errors import QuantizationError  # pylint: disable=import-outside-toplevel
    from .onnx_calibrate import OnnxRecipe  # pylint: disable=import-outside-toplevel

    if recipe is not None and not isinstance(recipe, OnnxRecipe):
        raise QuantizationError(f"recipe must be an OnnxRecipe, got {type(recipe).__name__}")
    if recipe is not None and calibration is None:
        raise QuantizationError("a calibration recipe (--awq, --gptq, --clip, --act-order, --sequential) needs "
                                "calibration inputs (calibration=..., --calibrate NPZ)")
    if calibration is not None and quant_scheme is None:
        raise QuantizationError(f"calibration quantizes float weights, but scheme {scheme!r} leaves them float; "
                                "use a W4A16 scheme such as w4a16-g128")


def _quantize_pass(graph, scheme, target, keep_float):
    from .onnx_quantize_pass import QuantizeLinears  # pylint: disable=import-outside-toplevel

    return QuantizeLinears({w.param: w for w in graph.linears}, scheme, target, keep_float)


def _calibrate(graph, calibration, scheme, recipe, quantize_pass, progress) -> dict:
    """Run ``onnx_calibrate.calibrate_graph`` (editing ``graph``), hand its weights to the pass; return its
    record (JSON-ready)."""
    from dataclasses import asdict  # pylint: disable=import-outside-toplevel

    from .onnx_calibrate import calibrate_graph, calibration_feeds  # pylint: disable=import-outside-toplevel

    feeds = calibration_feeds(graph, calibration)
    selected = lambda linear: quantize_pass.kernel_op(linear)[0] is not None  # noqa: E731
    result = calibrate_graph(graph, feeds, scheme, recipe, selected, progress)
    quantize_pass.quantized = result.quantized
    return {"recipe": asdict(recipe), "label": recipe.label, "samples": len(feeds), "tokens": result.tokens,
            "seconds": result.seconds, "groups": result.groups}


def build(imported, scheme, target, keep_float=DEFAULT_KEEP_FLOAT, hessians=None):
    """Quantize and compile an ``ImportedModel``.

    Returns
    -------
    (CompiledModule, list of str, list of numpy.ndarray, list of LayerRecord)
        The executable, the parameter names and arrays in the graph's order, and the per-layer records.
    """
    quantize_pass = _quantize_pass(imported.graph, scheme, target, keep_float)
    quantize_pass.hessians = hessians or {}
    return _build(imported, quantize_pass, target)


def _build(imported, quantize_pass, target):
    from ..codegen import build_module  # pylint: disable=import-outside-toplevel
    from ..kernel import PASS_CONFIG  # pylint: disable=import-outside-toplevel
    from ..tvm_api import tvm  # pylint: disable=import-outside-toplevel

    graph = imported.graph
    mod = quantize_pass(imported.mod)
    names, arrays = [], []
    for name, value in graph.params:
        if isinstance(value, LinearWeight):
            pairs = quantize_pass.arrays.get(name)
            if pairs is None:
                raise ModelError(f"linear layer {value.node!r} was not found as a matmul in the imported graph")
        else:
            pairs = [(name, np.ascontiguousarray(value))]
        for param_name, array in pairs:
            names.append(param_name)
            arrays.append(array)
    with target, tvm.transform.PassContext(opt_level=3, config=PASS_CONFIG):
        executable = build_module(mod, target)
    return executable, names, arrays, quantize_pass.records


def _save(output: Path, weights_path: Path, executable, names, arrays, meta, overwrite: bool) -> None:
    """Write the weights (to a pending file), the library, then move the weights into place."""
    from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel

    output.parent.mkdir(parents=True, exist_ok=True)
    pending = weights_path.with_name(f".{weights_path.name}.pending")
    try:
        tensors = {name: np.ascontiguousarray(a) for name, a in zip(names, arrays)}
        save_file(tensors, str(pending), metadata={ONNX_METADATA_KEY: json.dumps(meta)})
        export_library(executable, output, overwrite=overwrite)
        os.replace(pending, weights_path)
    finally:
        pending.unlink(missing_ok=True)
