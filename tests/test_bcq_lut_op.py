"""The BCQ LUT-GEMM TensorIR op on the CPU (llvm) vs a float64 reference of the BCQ weight."""
import numpy as np
import pytest

from lowbit_tvm.ops.bcq_lut import BCQLutOp
from lowbit_tvm.quant import BCQScheme, bcq_dequantize, bcq_quantize
from lowbit_tvm.tvm_api import tvm


def _run_llvm(op, x, bw):
    lib = tvm.compile(op.prim_func(), target="llvm")
    out = tvm.runtime.tensor(np.full((op.m, op.n), np.nan, dtype=np.float16))
    args = [x, bw.planes, bw.alphas, bw.offsets]
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
