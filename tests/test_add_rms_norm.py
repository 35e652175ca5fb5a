"""The fused residual add + RMSNorm operator (CPU llvm and GPU) vs a float64 reference, and its CUDA builds."""
import numpy as np
import pytest

from lowbit_tvm.codegen import build_module, cuda_target
from lowbit_tvm.models.residual_norm import _function
from lowbit_tvm.ops.add_rms_norm import AddRMSNormOp
from lowbit_tvm.tvm_api import Target, tvm

EPS = 1e-5


def _inputs(rows, hidden, seed=None):
    rng = np.random.default_rng(seed)
    x, r = (rng.standard_normal((rows, hidden)).astype(np.float16) for _ in range(2))
    w = (1 + 0.1 * rng.standard_normal(hidden)).astype(np.float16)
    return x, r, w


def _reference(x, r, w):
    """float64 of the fp16 sum, normalized: what ``add`` then ``nn.RMSNorm`` compute."""
    total = (x + r).astype(np.float64)  # the sum is an fp16 tensor in the graph
    scale = 1 / np.sqrt(np.mean(total * total, axis=-1, keepdims=True) + EPS)
    return total, total * scale * w.astype(np.float64)


def _check(total, normed, x, r, w):
    ref_total, ref_normed = _reference(x, r, w)
    assert np.array_equal(total, (x + r)), "the sum must be the fp16 add, exactly"
    err = np.abs(normed.astype(np.float64) - ref_normed).max() / np.abs(ref_normed).max()
    assert err < 2e-3, f"relative error {err:.2e}"
    assert np.isfinite(ref_total).all()


@pytest.mark.parametrize("rows,hidden", [(1, 576), (5, 4096), (33, 130)])
def test_llvm_matches_float64(rows, hidden):
    func = _function(AddRMSNormOp(hidden, "float16", EPS), Target({"kind": "llvm"}))
    lib = tvm.compile(func.with_attr("global_symbol", "main"), target="llvm")
    x, r, w = _inputs(rows, hidden)
    outs = [tvm.runtime.tensor(np.full((rows, hidden), np.nan, dtype=np.float16)) for _ in range(2)]
    lib["main"](*[tvm.runtime.tensor(a) for a in (x, r, w)], *outs)
    _check(outs[0].numpy(), outs[1].numpy(), x, r, w)


@pytest.mark.parametrize("arch", ["sm_90", "sm_80"])
def test_cuda_schedule_builds(arch):
    target = cuda_target(arch)
    func = _function(AddRMSNormOp(4096, "float16", EPS), target)
    built = build_module(func.with_attr("global_symbol", "main"), target)
    assert built.arch == arch


@pytest.mark.gpu
@pytest.mark.parametrize("rows,hidden", [(1, 4096), (1, 576), (16, 4096), (77, 130)])
def test_gpu_matches_float64(rows, hidden):
    import torch  # pylint: disable=import-outside-toplevel
    import tvm_ffi  # pylint: disable=import-outside-toplevel

    from lowbit_tvm.kernel import default_target  # pylint: disable=import-outside-toplevel

    target = default_target()
    func = _function(AddRMSNormOp(hidden, "float16", EPS), target)
    lib = build_module(func.with_attr("global_symbol", "main"), target)
    x, r, w = _inputs(rows, hidden)
    outs = [torch.full((rows, hidden), float("nan"), dtype=torch.float16, device="cuda") for _ in range(2)]
    args = [torch.from_numpy(a).cuda() for a in (x, r, w)] + outs
    lib["main"](*[tvm_ffi.from_dlpack(a) for a in args])
    torch.cuda.synchronize()
    _check(outs[0].cpu().numpy(), outs[1].cpu().numpy(), x, r, w)
