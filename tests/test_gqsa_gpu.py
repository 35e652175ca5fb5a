"""GQSA kernels on the GPU vs float64 on the dense reconstruction, fresh random data (run on the device)."""
import numpy as np
import pytest

from lowbit_tvm.gqsa_kernel import build_for
from lowbit_tvm.quant.gqsa import GQSAScheme, dense_reference, gqsa_quantize

pytestmark = pytest.mark.gpu

# (M, N, K, group, sparsity, balance); layer-balanced cases have rows of zeros (no kept group)
CASES = [
    (1, 4096, 4096, 128, 0.5, "row"),
    (1, 4104, 4096, 64, 0.7, "layer"),
    (3, 1000, 576, 32, 0.3, "layer"),
    (1, 257, 1024, 16, 0.5, "row"),
    (16, 2048, 4096, 128, 0.0, "row"),  # fully dense
    (64, 512, 1024, 64, 0.5, "layer"),
    (1, 4096, 11008, 128, 0.5, "row"),
    (5, 96, 384, 128, 0.7, "layer"),
]


@pytest.fixture(scope="module")
def target():
    from lowbit_tvm.kernel import default_target  # pylint: disable=import-outside-toplevel

    return default_target()


@pytest.mark.parametrize("m,n,k,group,sparsity,balance", CASES)
def test_matches_float64(target, m, n, k, group, sparsity, balance):
    import torch  # pylint: disable=import-outside-toplevel

    rng = np.random.default_rng()
    w = rng.standard_normal((n, k), dtype=np.float32)
    empty = rng.choice(n, size=max(1, n // 50), replace=False)
    if balance == "layer":
        w[empty] *= 1e-3  # these rows lose every group to the layer-wide ranking
    qw = gqsa_quantize(w, GQSAScheme(group, sparsity, balance))
    if balance == "layer" and sparsity >= 0.5:
        assert (qw.row_counts[empty] == 0).all()
    kernel = build_for(qw, m, target)
    x = rng.standard_normal((m, k)).astype(np.float16)
    args = [torch.from_numpy(a).cuda() for a in (x, *kernel.prepare(qw))]
    out = torch.full((m, n), float("nan"), dtype=torch.float16, device="cuda")
    kernel(*args, out)
    torch.cuda.synchronize()
    got = out.cpu().numpy().astype(np.float64)
    ref = dense_reference(x, qw)
    assert np.isfinite(got).all(), "unwritten or non-finite outputs"
    assert (got[:, qw.row_counts == 0] == 0).all(), "rows without kept groups must be exactly 0"
    err = np.linalg.norm(got - ref) / np.linalg.norm(ref)
    assert err < 1e-2, f"{kernel.op.name}: relative error {err:.2e}"
