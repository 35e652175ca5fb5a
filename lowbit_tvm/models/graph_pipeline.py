"""The Relax pipeline for model graphs on CUDA: TVM's default one with more dlight rules.

TVM 0.27's CUDA pipeline schedules leftover TensorIR with dlight's Matmul, GEMV, Reduction,
GeneralReduction and Fallback rules; a decode step's fp16 matmuls have a dynamic batch of a few rows,
which only ``LowBatchGEMV`` serves well, so it is added before the general Matmul rule. Our W4A16
functions arrive scheduled (``tir.is_scheduled``), so dlight leaves them alone.
"""
from ..tvm_api import relax, tvm


def cuda_pipeline(target):
    """A module pass: library dispatch, legalization, fusion, dlight, lowering (TVM's CUDA order)."""
    from tvm.relax.backend.cuda import pipeline as cuda  # pylint: disable=import-outside-toplevel
    from tvm.s_tir import dlight as dl  # pylint: disable=import-outside-toplevel

    legalize = [
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
        dl.ApplyDefaultSchedule(
            dl.gpu.GEMV(),
            dl.gpu.LowBatchGEMV(),
            dl.gpu.Matmul(),
            dl.gpu.Reduction(),
            dl.gpu.GeneralReduction(),
            dl.gpu.Fallback(),
        ),
    ]

    @tvm.transform.module_pass(opt_level=0, name="lowbit.ModelPipeline")
    def _pipeline(mod, _ctx):
        with target:
            passes = (
                cuda.library_dispatch_passes(target)
                + legalize
                + cuda.dataflow_lower_passes(target)
                + cuda.finalize_passes(target)
            )
            return tvm.transform.Sequential(passes)(mod)

    return _pipeline
