"""Programmatic dependent launch: every sm_90+ kernel waits on its predecessor first and is launched with
TVM's PDL tag; older archs and the CPU are untouched."""
import pytest

from lowbit_tvm.codegen import build_module, cuda_target, pdl
from lowbit_tvm.tvm_api import T, Target, structural_equal, tvm


@T.prim_func(s_tir=True)
def _scale(a: T.Buffer((1000,), "float32"), b: T.Buffer((1000,), "float32")):
    for bx in T.thread_binding(8, thread="blockIdx.x"):
        for tx in T.thread_binding(128, thread="threadIdx.x"):
            with T.sblock("b"):
                v = T.axis.spatial(1000, bx * 128 + tx)
                T.where(bx * 128 + tx < 1000)
                b[v] = a[v] * T.float32(2)


def _kernel_source(arch):
    built = build_module(_scale, cuda_target(arch), binary=False)
    source = built.mod.imports[0].inspect_source()
    return source[source.index("__global__"):]


def test_sm90_kernel_waits_before_any_memory_access():
    body = _kernel_source("sm_90").split("{", 1)[1]
    first = [line.strip() for line in body.splitlines() if line.strip()]
    assert first[0] == "cudaGridDependencySynchronize();"


def test_sm80_kernel_has_no_pdl():
    assert "cudaGridDependencySynchronize" not in _kernel_source("sm_80")


def test_pdl_tag_goes_before_the_dynamic_shared_memory_tag():
    func = tvm.tirx.PrimFunc([], tvm.tirx.Evaluate(0)).with_attr(
        "tirx.kernel_launch_params", ["blockIdx.x", "threadIdx.x", "tirx.use_dyn_shared_memory"]
    )
    assert pdl._launch_params(func) == ["blockIdx.x", "threadIdx.x", pdl.PDL_TAG, "tirx.use_dyn_shared_memory"]


@pytest.mark.parametrize("target,expected", [
    (cuda_target("sm_90"), True), (cuda_target("sm_90a"), True), (cuda_target("sm_89"), False),
    (Target({"kind": "llvm"}), False),
])
def test_supports_pdl(target, expected):
    assert pdl.supports_pdl(target) is expected


def test_library_records_the_launch_tag(tmp_path):
    from lowbit_tvm.codegen import export_library  # pylint: disable=import-outside-toplevel

    path = export_library(build_module(_scale, cuda_target("sm_90")), tmp_path / "scale.so")
    assert path.read_bytes().count(pdl.PDL_TAG.encode()) == 1


def test_pass_is_idempotent():
    target = cuda_target("sm_90")
    kernel = tvm.tirx.PrimFunc([], tvm.tirx.Evaluate(0)).with_attrs(
        {"target": target, "tirx.is_global_func": True, "tirx.kernel_launch_params": ["blockIdx.x"]}
    )
    once = pdl.programmatic_dependent_launch(tvm.IRModule({"k": kernel}))
    twice = pdl.programmatic_dependent_launch(once)
    assert structural_equal(once, twice)
    assert pdl._has_prologue(once["k"]) and list(once["k"].attrs["tirx.kernel_launch_params"]) == [
        "blockIdx.x", pdl.PDL_TAG]
