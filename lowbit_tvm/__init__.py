"""lowbit_tvm: low-bit LLM inference kernels written as TVM TensorIR with our own schedules.

Subpackages: ``quant`` (quantization formats and references), ``ops`` (the operators as TensorIR),
``schedules`` (schedule rules and dispatch), ``codegen`` (CUDA builds with compiled device code, libraries),
``models`` (model graphs). Modules: ``kernel`` (build a kernel), ``tuning`` (MetaSchedule), ``bench``, ``demo``,
``cli``. Importing the package does not import TVM.
"""

__version__ = "0.1.0"


def load(path, device=None):
    """Load a model library (``lowbit-tvm build``'s ``.so`` + ``.safetensors``) with only TVM's runtime.

    See :func:`lowbit_tvm.models.engine.load`.
    """
    from .models.engine import load as load_model  # pylint: disable=import-outside-toplevel

    return load_model(path, device)
