"""lowbit_tvm: low-bit LLM inference kernels written as TVM TensorIR with our own schedules.

Subpackages: ``quant`` (quantization formats and references), ``ops`` (the operators as TensorIR),
``schedules`` (schedule rules and dispatch), ``codegen`` (CUDA builds with compiled device code, libraries),
``models`` (model graphs). Modules: ``kernel`` (build a kernel), ``tuning`` (MetaSchedule), ``bench``, ``demo``,
``cli``. Importing the package does not import TVM.
"""

__version__ = "0.1.0"
