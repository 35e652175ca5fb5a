"""The BCQ LUT-GEMM TensorIR op on the CPU (llvm) vs a float64 reference of the BCQ weight."""
import numpy as np
import pytest

from lowbit_tvm.ops.bcq_lut import BCQLutOp, kernel_planes
from lowbit_tvm.quant import BCQScheme, bcq_dequantize, bcq_quantize
from lowbit_tvm.tvm_api import tvm


def _run_llvm(op, x, bw):
    lib = tvm.compile(op.prim_func(), target="llvm")
    out = tvm.runtime.tensor(np.full((op.m, op.n), np.nan, dtype=np.float16))
    args = [x, kernel_planes(bw), bw.alphas, bw.offsets]
    lib[op.name](*[tvm.runtime.tensor(v) for v in args], out)
    return out.numpy().astype(np.float64)


@pytest.mark.parametrize("bits,group,offset", [(3, 128, True), (4, 64, True), (2, 32, False), (3, -1, True)])
@pytest.mark.parametrize("m,k,n", [(1, 256, 24), (3, 128, 16), (8, 384, 8)])
def test_lut_op_matches_float64(bits, group, offset, m, k, n):
    rng = np.random.default_rng()
    scheme = BCQScheme(bits=bits, group_size=group, offset=offset)
    bw = bcq_quantize(rng.standard_normal((n, k), dtype=np.float32), scheme, iterations=2)
    x = rng.standard_normal((m, k)).astype(np.float16)
    ref = x.astype(np.float64) @ bcq_dequantize(bw).astype(np.float64).T
    out = _run_llvm(BCQLutOp(n, k, scheme, m), x, bw)
    assert np.isfinite(out).all()
    err = np.linalg.norm(out - ref) / np.linalg.norm(ref)
    assert err < 2e-3, f"relative error {err:.2e}"


def test_k_not_packable_is_refused():
    with pytest.raises(ValueError, match="K % 32"):
        BCQLutOp(16, 48, BCQScheme(bits=3, group_size=-1), 1).prim_func()


def _cuda_module(op, binary=True):
    # pylint: disable=import-outside-toplevel
    from lowbit_tvm.codegen import build_module
    from lowbit_tvm.kernel import PASS_CONFIG, default_target
    from lowbit_tvm.schedules.bcq_lut import BCQLut, bcq_lut_config

    target = default_target()
    sch = BCQLut().apply(op.prim_func(), target, config=bcq_lut_config(op.m, op.n, op.k))
    with tvm.transform.PassContext(config=PASS_CONFIG):
        return build_module(sch.mod, target, binary=binary)


@pytest.mark.parametrize("m", [1, 8])
def test_cuda_schedule_builds_to_binary(m):
    from lowbit_tvm.codegen import device_code_format  # pylint: disable=import-outside-toplevel

    module = _cuda_module(BCQLutOp(4096, 4096, BCQScheme(bits=3, group_size=128), m))
    assert device_code_format(module) in ("fatbin", "cubin")


@pytest.mark.gpu
@pytest.mark.parametrize("bits,group", [(3, 128), (4, 64), (2, -1)])
@pytest.mark.parametrize("m,k,n", [(1, 4096, 4096), (3, 1024, 2080), (8, 11008, 256)])
def test_cuda_kernel_matches_float64(bits, group, m, k, n):
    import torch  # pylint: disable=import-outside-toplevel

    rng = np.random.default_rng()
    scheme = BCQScheme(bits=bits, group_size=group)
    bw = bcq_quantize(rng.standard_normal((n, k), dtype=np.float32), scheme, iterations=2)
    x = rng.standard_normal((m, k)).astype(np.float16)
    op = BCQLutOp(n, k, scheme, m)
    args = [torch.from_numpy(v).cuda() for v in (x, kernel_planes(bw), bw.alphas, bw.offsets)]
    out = torch.full((m, n), float("nan"), dtype=torch.float16, device="cuda")
    _cuda_module(op)[op.name](*args, out)
    torch.cuda.synchronize()
    ref = x.astype(np.float64) @ bcq_dequantize(bw).astype(np.float64).T
    got = out.cpu().numpy().astype(np.float64)
    assert np.isfinite(got).all(), "unwritten or non-finite outputs"
    err = np.linalg.norm(got - ref) / np.linalg.norm(ref)
    assert err < 1e-2, f"relative error {err:.2e}"
