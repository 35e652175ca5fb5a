"""The one place that imports TVM.

TVM 0.27 renamed ``tir`` to ``tirx``, ``block`` to ``sblock`` and moved dlight, MetaSchedule and the
tensor intrinsics under ``tvm.s_tir``. Every other module of lowbit_tvm imports TVM names from here, so
the next rename is a one-file change.
"""
import tvm
from tvm import s_tir
from tvm import relax, te, tirx
from tvm.relax.frontend import nn as relax_nn
from tvm.relax.frontend.nn.llm import kv_cache
from tvm.s_tir import Schedule
from tvm.s_tir import TensorIntrin
from tvm.s_tir import dlight
from tvm.s_tir import meta_schedule as ms
from tvm.script import tirx as T
from tvm.target import Target
from tvm_ffi import structural_equal, structural_hash

TVM_VERSION = tvm.__version__
# PrimFunc attribute that tells dlight and MetaSchedule a function is already scheduled (0.27 name).
IS_SCHEDULED = "tirx.is_scheduled"

__all__ = ["IS_SCHEDULED", "T", "TVM_VERSION", "kv_cache", "relax", "relax_nn", "te", "Schedule", "Target", "TensorIntrin", "dlight", "ms", "s_tir", "structural_equal", "structural_hash", "tirx", "tvm"]


def load_tensor_intrinsics():
    """Import and register TVM's CUDA tensor intrinsics (slow: tens of seconds on a small CPU).

    Returns
    -------
    module
        ``tvm.s_tir.tensor_intrin.cuda``.
    """
    from tvm.s_tir.tensor_intrin import cuda  # pylint: disable=import-outside-toplevel

    return cuda


def onnx_frontend():
    """TVM's ONNX importer (``tvm.relax.frontend.onnx``), imported on first use: it imports the onnx package.

    Returns
    -------
    module
        With ``from_onnx`` and ``onnx_frontend`` (whose ``_get_convert_map`` lists the operators it converts).
    """
    from tvm.relax.frontend import onnx  # pylint: disable=import-outside-toplevel

    return onnx
