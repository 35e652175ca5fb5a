"""Calibration for activation-aware quantization: each linear layer's input second moments on given inputs.

The float model runs in onnxruntime with every linear layer's input tensor added as a graph output; the
``X^T X`` of those inputs (``quant.gptq.input_hessian``) lets the quantize pass use GPTQ instead of
round-to-nearest for those layers.
"""
import numpy as np

from ..errors import MissingPackageError, ModelError


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
