"""The BCQ LUT-GEMM TensorIR op on the CPU (llvm) vs a float64 reference of the BCQ weight."""
import numpy as np
import pytest

from lowbit_tvm.ops.bcq_lut import BCQLutOp, kernel_planes
from lowbit_tvm.quant import BCQScheme, bcq_dequantize, bcq_quantize
from lowbit_tvm.tvm_api import tvm


def _run_llvm(op, x, bw):
    lib = tvm.compile(op.prim_func(), target="llvm")
    out = tvm.runtime.tensor(np.full((op.m, op.n), np.nan, dtype=np.float16))
    args = [x, kernel_planes(bw, op.k_multiple), bw.alphas, bw.offsets]
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


@pytest.mark.parametrize("k,k_multiple,group", [(384, 256, 128), (160, 128, -1), (96, 1024, 32)])
def test_padded_k_matches_float64(k, k_multiple, group):
    rng = np.random.default_rng(1)
    scheme = BCQScheme(bits=3, group_size=group)
    bw = bcq_quantize(rng.standard_normal((16, k), dtype=np.float32), scheme, iterations=2)
    x = rng.standard_normal((2, k)).astype(np.float16)
    op = BCQLutOp(16, k, scheme, 2, k_multiple)
    assert op.k_padded % k_multiple == 0 and op.k_padded > k and op.name.endswith(f"_kp{op.k_padded}")
    ref = x.astype(np.float64) @ bcq_dequantize(bw).astype(np.float64).T
    out = _run_llvm(op, x, bw)
    assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 2e-3


@pytest.mark.parametrize("m", [0, 9, 64])
def test_batch_beyond_the_supported_range_is_refused(m):
    with pytest.raises(ValueError, match=f"batches of 1 to 8 rows .* got M={m}"):
        BCQLutOp(4096, 4096, BCQScheme(bits=3, group_size=128), m)


def test_k_not_packable_is_refused():
    with pytest.raises(ValueError, match="K % 32"):
        BCQLutOp(16, 48, BCQScheme(bits=3, group_size=-1), 1).prim_func()


def _cuda_op(n, k, scheme, m, binary=True):
    """The op (K padded to the config's tile) and its built CUDA module, with the default config."""
    # pylint: disable=import-outside-toplevel
    from lowbit_tvm.codegen import build_module
    from lowbit_tvm.kernel import PASS_CONFIG, default_target
    from lowbit_tvm.schedules.bcq_lut import BCQLut, bcq_lut_config

    target = default_target()
    config = bcq_lut_config(m, n, k)
    op = BCQLutOp(n, k, scheme, m, config.k_multiple)
    sch = BCQLut().apply(op.prim_func(), target, config=config)
    with tvm.transform.PassContext(config=PASS_CONFIG):
        return op, build_module(sch.mod, target, binary=binary)


@pytest.mark.parametrize("m,k,n", [(1, 4096, 4096), (8, 4096, 4096), (1, 11008, 256), (3, 1024, 2080)])
def test_cuda_schedule_builds_to_binary(m, k, n):
    from lowbit_tvm.codegen import device_code_format  # pylint: disable=import-outside-toplevel

    _, module = _cuda_op(n, k, BCQScheme(bits=3, group_size=128), m)
    assert device_code_format(module) in ("fatbin", "cubin")


def test_config_tiles_k_and_n():
    from lowbit_tvm.schedules.bcq_lut import bcq_lut_config  # pylint: disable=import-outside-toplevel

    for m in (1, 2, 3, 8):
        for k, n in [(4096, 22016), (11008, 4096), (8192, 57344), (28672, 8192), (1024, 2080)]:
            config = bcq_lut_config(m, n, k)
            k_padded = -(-k // config.k_multiple) * config.k_multiple
            assert n % (config.warps * config.rows) == 0
            assert (k_padded // 32) % (config.words * config.tiles) == 0
            assert m * config.words <= 32 and config.warps * m * config.words <= 1024


@pytest.mark.gpu
@pytest.mark.parametrize("bits,group", [(3, 128), (4, 64), (2, -1)])
@pytest.mark.parametrize("m,k,n", [(1, 4096, 4096), (3, 1024, 2080), (8, 11008, 256), (1, 11008, 512)])
def test_cuda_kernel_matches_float64(bits, group, m, k, n):
    import torch  # pylint: disable=import-outside-toplevel

    rng = np.random.default_rng()
    scheme = BCQScheme(bits=bits, group_size=group)
    bw = bcq_quantize(rng.standard_normal((n, k), dtype=np.float32), scheme, iterations=2)
    x = rng.standard_normal((m, k)).astype(np.float16)
    op, module = _cuda_op(n, k, scheme, m)
    args = [torch.from_numpy(v).cuda() for v in (x, kernel_planes(bw, op.k_multiple), bw.alphas, bw.offsets)]
    out = torch.full((m, n), float("nan"), dtype=torch.float16, device="cuda")
    module[op.name](*args, out)
    torch.cuda.synchronize()
    ref = x.astype(np.float64) @ bcq_dequantize(bw).astype(np.float64).T
    got = out.cpu().numpy().astype(np.float64)
    assert np.isfinite(got).all(), "unwritten or non-finite outputs"
    err = np.linalg.norm(got - ref) / np.linalg.norm(ref)
    assert err < 1e-2, f"relative error {err:.2e}"
