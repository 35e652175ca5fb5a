"""lowbit_tvm: low-bit LLM inference kernels written as TVM TensorIR with our own schedules.

Subpackages: ``quant`` (quantization formats and references), ``ops`` (the operators as TensorIR),
``schedules`` (schedule rules and dispatch), ``codegen`` (CUDA builds with compiled device code, libraries),
``models`` (model graphs). Modules: ``kernel`` (build a kernel), ``tuning`` (MetaSchedule), ``bench``, ``demo``,
``cli``. Importing the package does not import TVM.
"""

__version__ = "0.1.0"


def load(path, device=None):
    """Load a model library with only TVM's runtime.

    An ONNX model library (``lowbit-tvm compile``, :func:`lowbit_tvm.frontend.compile_onnx`) gives an
    :class:`~lowbit_tvm.frontend.onnx_engine.OnnxEngine`; a Llama library (``lowbit-tvm build``) gives a
    :class:`~lowbit_tvm.models.engine.LlamaEngine`. The weights file beside the library says which.
    See :func:`lowbit_tvm.frontend.onnx_engine.load` and :func:`lowbit_tvm.models.engine.load`.
    """
    from .frontend.onnx_engine import load as load_onnx, onnx_metadata  # pylint: disable=import-outside-toplevel

    if onnx_metadata(path) is not None:
        return load_onnx(path, device)
    from .models.engine import load as load_model  # pylint: disable=import-outside-toplevel

    return load_model(path, device)
