"""W4A16 kernels on the GPU vs a float64 reference, on fresh random inputs (run on the device)."""
import numpy as np
import pytest

from lowbit_tvm.kernel import build
from lowbit_tvm.ops.w4a16 import W4A16Op
from lowbit_tvm.quant import get_scheme, quantize, reference_matmul

pytestmark = pytest.mark.gpu

SHAPES = [(4096, 4096), (11008, 4096), (4096, 4160), (1024, 1040)]  # (K, N)
BATCHES = [1, 3, 16, 33, 64, 128, 256]


def _run(kernel, x, qw):
    import torch  # pylint: disable=import-outside-toplevel

    dev = "cuda"
    args = [torch.from_numpy(a).to(dev) for a in [x, *kernel.prepare(qw)]]
    out = torch.full((x.shape[0], qw.shape[0]), float("nan"), dtype=torch.float16, device=dev)
    kernel(*args, out)
    torch.cuda.synchronize()
    return out.cpu().numpy()


@pytest.fixture(scope="module")
def target():
    from lowbit_tvm.kernel import default_target  # pylint: disable=import-outside-toplevel

    return default_target()


CASES = [("w4a16-g128", k, n) for k, n in SHAPES] + [("w4a16-g32-asym", k, n) for k, n in SHAPES[2:]]


@pytest.mark.parametrize("scheme,k,n", CASES)
@pytest.mark.parametrize("m", BATCHES)
def test_matches_float64(target, scheme, m, k, n):
    rng = np.random.default_rng()
    qw = quantize(rng.standard_normal((n, k), dtype=np.float32), get_scheme(scheme))
    x = rng.standard_normal((m, k)).astype(np.float16)
    kernel = build(W4A16Op(n, k, get_scheme(scheme), m), target)
    out = _run(kernel, x, qw).astype(np.float64)
    ref = reference_matmul(x, qw)
    assert np.isfinite(out).all(), f"{kernel.rule}: unwritten or non-finite outputs"
    err = np.linalg.norm(out - ref) / np.linalg.norm(ref)
    assert err < 1e-2, f"{kernel.rule} m={m} k={k} n={n}: relative error {err:.2e}"


def test_dynamic_m_kernel_matches_float64(target):
    rng = np.random.default_rng()
    scheme = get_scheme("w4a16-g128")
    k, n = 4096, 4160
    qw = quantize(rng.standard_normal((n, k), dtype=np.float32), scheme)
    kernel = build(W4A16Op(n, k, scheme, None), target)
    assert kernel.op.m is None and kernel.op.layout == "mma"
    for m in (1, 5, 8, 9, 16, 17, 33, 64, 65, 200, 300):
        x = rng.standard_normal((m, k)).astype(np.float16)
        out = _run(kernel, x, qw).astype(np.float64)
        ref = reference_matmul(x, qw)
        assert np.isfinite(out).all(), f"m={m}: unwritten or non-finite outputs"
        err = np.linalg.norm(out - ref) / np.linalg.norm(ref)
        assert err < 1e-2, f"m={m}: relative error {err:.2e}"


MMA_GEMV_CASES = [("w4a16-g128", 4096, 4096), ("w4a16-g128", 11008, 4096), ("w4a16-g32-asym", 4160, 1040),
                  ("w4a16-g64", 1024, 4160), ("w4a16-pc-asym", 4096, 272)]


@pytest.mark.parametrize("scheme,k,n", MMA_GEMV_CASES)
@pytest.mark.parametrize("m", [1, 3])
def test_gemv_on_tensor_core_weights_matches_float64(target, scheme, m, k, n):
    """The single-token decode GEMV of model graphs (``mma_gemv_plan``), on the tensor-core layout."""
    from lowbit_tvm.kernel import build_plan  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.schedules.w4a16_dispatch import mma_gemv_plan  # pylint: disable=import-outside-toplevel

    rng = np.random.default_rng()
    qw = quantize(rng.standard_normal((n, k), dtype=np.float32), get_scheme(scheme))
    x = rng.standard_normal((m, k)).astype(np.float16)
    kernel = build_plan(mma_gemv_plan(W4A16Op(n, k, get_scheme(scheme), m)), target)
    assert kernel.rule == "w4a16-mma-gemv"
    out = _run(kernel, x, qw).astype(np.float64)
    ref = reference_matmul(x, qw)
    assert np.isfinite(out).all(), "unwritten or non-finite outputs"
    err = np.linalg.norm(out - ref) / np.linalg.norm(ref)
    assert err < 1e-2, f"m={m} k={k} n={n}: relative error {err:.2e}"


# (K, N, scheme, MmaGemvConfig fields ky, ty, tiles, unroll, contiguous, stream): the load variants
MMA_GEMV_VARIANTS = [(11008, 4096, "w4a16-g128", (43, 1, 1, 64, 0, 1)), (11008, 4096, "w4a16-g128", (43, 1, 8, 64, 1, 1)),
                     (4160, 1040, "w4a16-g32-asym", (5, 1, 13, 0, 1, 1)), (4160, 1040, "w4a16-g32-asym", (5, 1, 2, 0, 1, 0))]


@pytest.mark.parametrize("k,n,scheme,config", MMA_GEMV_VARIANTS)
@pytest.mark.parametrize("m", [1, 3])
def test_gemv_on_tensor_core_weights_load_variants_match_float64(target, k, n, scheme, config, m):
    """Interleaved vs contiguous K ranges, plain vs streaming weight loads, several steps loaded together."""
    from lowbit_tvm.kernel import build_plan  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.schedules.w4a16_dispatch import Plan  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.schedules.w4a16_mma_gemv import MmaGemvConfig, W4A16MmaGemv  # pylint: disable=import-outside-toplevel

    rng = np.random.default_rng()
    qw = quantize(rng.standard_normal((n, k), dtype=np.float32), get_scheme(scheme))
    x = rng.standard_normal((m, k)).astype(np.float16)
    op = W4A16Op(n, k, get_scheme(scheme), m, layout="mma", reduction="word")
    kernel = build_plan(Plan(W4A16MmaGemv(), op, MmaGemvConfig(*config)), target)
    out = _run(kernel, x, qw).astype(np.float64)
    ref = reference_matmul(x, qw)
    assert np.isfinite(out).all(), "unwritten or non-finite outputs"
    err = np.linalg.norm(out - ref) / np.linalg.norm(ref)
    assert err < 1e-2, f"{config} m={m}: relative error {err:.2e}"


@pytest.mark.parametrize("scheme,k,n", [("w4a16-g128", 4096, 4096), ("w4a16-g32-asym", 4096, 1024)])
@pytest.mark.parametrize("m", [1, 3])
def test_word_gemv_with_streaming_loads_matches_float64(target, scheme, k, n, m):
    """The row-layout word GEMV with its weights read by streaming loads (``stream=1``)."""
    from lowbit_tvm.kernel import build_plan  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.schedules.w4a16_dispatch import Plan  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.schedules.w4a16_gemv import GemvConfig, W4A16Gemv  # pylint: disable=import-outside-toplevel

    rng = np.random.default_rng()
    qw = quantize(rng.standard_normal((n, k), dtype=np.float32), get_scheme(scheme))
    x = rng.standard_normal((m, k)).astype(np.float16)
    op = W4A16Op(n, k, get_scheme(scheme), m, reduction="word")
    kernel = build_plan(Plan(W4A16Gemv(), op, GemvConfig(32, 4, 32, 64, 2, 1)), target)
    out = _run(kernel, x, qw).astype(np.float64)
    ref = reference_matmul(x, qw)
    assert np.isfinite(out).all(), "unwritten or non-finite outputs"
    err = np.linalg.norm(out - ref) / np.linalg.norm(ref)
    assert err < 1e-2, f"m={m}: relative error {err:.2e}"


def _tuned_workloads():
    """(K, N, M) of every workload in the committed database of the local GPU's arch whose weight layout is
    the one the dispatcher builds (a record of an op variant it no longer picks is never applied)."""
    from lowbit_tvm.codegen import detect_cuda_arch  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.tuning import database_dir, open_database  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.tvm_api import ms  # pylint: disable=import-outside-toplevel

    arch = detect_cuda_arch()
    database = open_database(database_dir(arch)) if arch else None
    if database is None:
        return []
    from lowbit_tvm.schedules.w4a16_dispatch import plan  # pylint: disable=import-outside-toplevel

    shapes = set()
    for record in database.get_all_tuning_records():
        args = ms.arg_info.ArgInfo.from_prim_func(record.workload.mod["main"])
        (m, k), n = args[0].shape, args[-1].shape[1]
        built = plan(W4A16Op(int(n), int(k), get_scheme("w4a16-g128"), int(m))).op
        if tuple(int(d) for d in args[1].shape) == tuple(built.packed_shape):
            shapes.add((int(k), int(n), int(m)))
    return sorted(shapes)


@pytest.mark.parametrize("k,n,m", _tuned_workloads() or [pytest.param(0, 0, 0, marks=pytest.mark.skip("no database"))])
def test_tuned_and_default_match_float64(target, k, n, m):
    rng = np.random.default_rng()
    scheme = get_scheme("w4a16-g128")
    qw = quantize(rng.standard_normal((n, k), dtype=np.float32), scheme)
    x = rng.standard_normal((m, k)).astype(np.float16)
    ref = reference_matmul(x, qw)
    tuned = build(W4A16Op(n, k, scheme, m), target)
    assert tuned.source == "tuned"
    for kernel in (tuned, build(W4A16Op(n, k, scheme, m), target, database=None)):
        out = _run(kernel, x, qw).astype(np.float64)
        assert np.isfinite(out).all()
        err = np.linalg.norm(out - ref) / np.linalg.norm(ref)
        assert err < 1e-2, f"{kernel.source} {kernel.rule}: relative error {err:.2e}"
