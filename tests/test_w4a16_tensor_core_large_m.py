"""The W4A16 tensor-core kernel at M >= 128: default configs, M-block rasterization and per-K-step decoding.

CPU: the defaults tile the Llama shapes and fill the GPU; the knobs build to sm_90 binaries (static and dynamic M).
GPU (device): rasterized and split-K kernels match float64 on fresh random inputs.
"""
import numpy as np
import pytest

from lowbit_tvm.codegen import build_module, cuda_target, device_code_format
from lowbit_tvm.kernel import MAX_SHARED, PASS_CONFIG, build_plan
from lowbit_tvm.ops.w4a16 import W4A16Op
from lowbit_tvm.quant import get_scheme, quantize, reference_matmul
from lowbit_tvm.schedules import TensorCoreConfig, W4A16TensorCore
from lowbit_tvm.schedules.w4a16_dispatch import SM_COUNT, Plan, plan, tensor_core_config
from lowbit_tvm.tvm_api import tvm

LLAMA_SHAPES = [(4096, 4096), (4096, 12288), (4096, 22016), (11008, 4096), (8192, 57344), (28672, 8192)]


def _target():
    return cuda_target("sm_90", max_shared_memory_per_block=MAX_SHARED["sm_90"])


@pytest.mark.parametrize("k,n", LLAMA_SHAPES)
@pytest.mark.parametrize("m", [128, 200, 256, 384])
def test_large_m_defaults_tile_exactly_and_fill_the_gpu(k, n, m):
    c = tensor_core_config(W4A16Op(n, k, get_scheme("w4a16-g128"), m))
    assert n % (16 * c.warps_n * c.tile_n) == 0
    assert k % (16 * c.k_inner * c.split_k) == 0 and k // (16 * c.k_inner * c.split_k) >= 3
    blocks = -(-m // (16 * c.warps_m * c.tile_m)) * (n // (16 * c.warps_n * c.tile_n))
    assert blocks * c.split_k >= SM_COUNT or c.split_k == 8
    assert c.raster > 1  # M blocks that share a weight tile run side by side


@pytest.mark.parametrize("m,config", [
    (256, TensorCoreConfig(1, 4, 4, 2, 4, 2, 2, 8)),  # 4 M blocks in one raster group, split-K
    (None, TensorCoreConfig(1, 4, 4, 2, 4, 2, 1, 8)),  # dynamic M: raster does not apply
])
def test_knobs_build_to_binaries(m, config):
    op = plan(W4A16Op(256, 1024, get_scheme("w4a16-g32-asym"), m)).op
    sch = W4A16TensorCore().apply(op.prim_func(), _target(), config=config)
    with tvm.transform.PassContext(config=PASS_CONFIG):
        assert device_code_format(build_module(sch.mod, _target())) in ("fatbin", "cubin")


# (K, N, scheme, M, config): raster groups of 2, 3 (M=384 over 128-row blocks) and 4, padded M, split-K,
# 64x64 warp tiles, asymmetric weights.
GPU_CASES = [
    (2048, 2048, "w4a16-g128", 256, TensorCoreConfig(2, 4, 4, 2, 4, 2, 1, 8)),
    (2048, 2048, "w4a16-g128", 384, TensorCoreConfig(2, 4, 4, 2, 4, 2, 1, 8)),
    (4096, 1536, "w4a16-g128", 200, TensorCoreConfig(1, 4, 4, 2, 4, 2, 4, 8)),
    (2048, 4096, "w4a16-g128", 256, TensorCoreConfig(1, 4, 4, 4, 2, 3, 2, 8)),
    (2048, 2048, "w4a16-g32-asym", 256, TensorCoreConfig(1, 4, 4, 2, 4, 2, 2, 8)),
    (4096, 2048, "w4a16-g32-asym", 128, TensorCoreConfig(1, 4, 4, 2, 8, 2, 1, 8)),
]


@pytest.mark.gpu
@pytest.mark.parametrize("k,n,scheme,m,config", GPU_CASES)
def test_large_m_kernels_match_float64(k, n, scheme, m, config):
    import torch  # pylint: disable=import-outside-toplevel

    from lowbit_tvm.kernel import default_target  # pylint: disable=import-outside-toplevel

    rng = np.random.default_rng()
    qw = quantize(rng.standard_normal((n, k), dtype=np.float32), get_scheme(scheme))
    x = rng.standard_normal((m, k)).astype(np.float16)
    op = plan(W4A16Op(n, k, get_scheme(scheme), m)).op
    kernel = build_plan(Plan(W4A16TensorCore(), op, config), default_target())
    args = [torch.from_numpy(a).cuda() for a in [x, *kernel.prepare(qw)]]
    out = torch.full((m, n), float("nan"), dtype=torch.float16, device="cuda")
    kernel(*args, out)
    torch.cuda.synchronize()
    out = out.cpu().numpy().astype(np.float64)
    assert np.isfinite(out).all(), "unwritten or non-finite outputs"
    ref = reference_matmul(x, qw)
    err = np.linalg.norm(out - ref) / np.linalg.norm(ref)
    assert err < 1e-2, f"{config} m={m}: relative error {err:.2e}"
