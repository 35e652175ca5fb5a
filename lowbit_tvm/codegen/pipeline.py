"""Our TIR lowering pipeline: TVM's ``s_tir`` pipeline with every warp-memory buffer lowered.

TVM 0.27's ``LowerWarpMemory`` rewrites only the first ``"warp"``-scope buffer of each statement
sequence into per-lane registers; the others stay as 32-lane arrays that each thread indexes with
``threadIdx.x`` (nvcc then puts them on the stack when a kernel takes their address, as our register
decode does). This pipeline repeats the pass until nothing changes. Select it with
``tvm.compile(..., tir_pipeline=PIPELINE)`` or ``tvm.tirx.build(..., pipeline=PIPELINE)``.
"""
from ..tvm_api import structural_equal, tirx, tvm
from .pdl import programmatic_dependent_launch

PIPELINE = "lowbit"
_MAX_ROUNDS = 64


@tvm.transform.module_pass(opt_level=0, name="lowbit.LowerAllWarpMemory")
def lower_all_warp_memory(mod, _ctx):
    """Apply ``LowerWarpMemory`` until it no longer changes ``mod``."""
    for _ in range(_MAX_ROUNDS):
        lowered = tirx.transform.LowerWarpMemory()(mod)
        if structural_equal(lowered, mod):
            return lowered
        mod = lowered
    return mod


def _finalize_device_passes():
    return tvm.transform.Sequential(
        [
            lower_all_warp_memory,
            tirx.transform.StmtSimplify(),
            tirx.transform.LowerIntrin(),
            programmatic_dependent_launch,
        ]
    )


def _lowbit_pipeline():
    pipeline, finalize_host, _ = tvm.tirx.get_tir_pipeline("s_tir")
    return pipeline, finalize_host, _finalize_device_passes


def register() -> str:
    """Register the pipeline with TVM (idempotent) and return its name."""
    import tvm.s_tir.pipeline  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import

    tvm.tirx.compilation_pipeline.register_tir_pipeline(PIPELINE, _lowbit_pipeline)
    return PIPELINE
