"""W4A8 / W8A8 layers on the GPU vs the float64 reference of the quantized math (run on the device).

Fresh random activations with planted x100 outlier channels; the outlier path must matter: the same layer
without outlier channels is several times further from the exact product."""
import numpy as np
import pytest

from lowbit_tvm.quant import atom

pytestmark = pytest.mark.gpu

SHAPES = [pytest.param(k, n, id=f"k{k}n{n}") for k, n in [(4096, 4096), (576, 1536), (1024, 1040), (11008, 4096)]]
BATCHES = [1, 16, 128, 1000, 4096]
SCHEMES = {"w4a8-o128": atom.AtomScheme(4, 128, 128), "w4a8-o32": atom.AtomScheme(4, 128, 32), "w8a8": atom.W8A8}


@pytest.fixture(scope="module")
def target():
    from lowbit_tvm.kernel import default_target  # pylint: disable=import-outside-toplevel

    return default_target()


def _planted(rng, m, k, count=128):
    x = rng.standard_normal((m, k)).astype(np.float32)
    channels = rng.choice(k, count, replace=False)
    x[:, channels] *= 100
    return x.astype(np.float16), channels


def _run(layer, x, aw):
    import torch  # pylint: disable=import-outside-toplevel

    weights = [torch.from_numpy(np.ascontiguousarray(a)).cuda() for a in layer.prepare(aw)]
    workspace = [torch.empty(shape, dtype=getattr(torch, dtype), device="cuda") for shape, dtype in layer.workspace()]
    out = torch.full((layer.plan.m_pad, layer.plan.n), float("nan"), dtype=torch.float16, device="cuda")
    layer(torch.from_numpy(x).cuda(), weights, workspace, out)
    torch.cuda.synchronize()
    return out[: x.shape[0]].double().cpu().numpy()


def _rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
@pytest.mark.parametrize("k,n", SHAPES)
@pytest.mark.parametrize("m", BATCHES)
def test_layer_matches_float64(target, scheme, k, n, m):
    from lowbit_tvm.w4a8_kernel import build  # pylint: disable=import-outside-toplevel

    rng = np.random.default_rng()
    x, _ = _planted(rng, m, k)
    calib, _ = _planted(rng, 64, k)
    w = rng.standard_normal((n, k)).astype(np.float32)
    aw = atom.calibrate(w, np.concatenate([calib, x]).astype(np.float64), SCHEMES[scheme])
    layer = build(m, n, k, SCHEMES[scheme], target)
    out = _run(layer, x, aw)
    assert np.isfinite(out).all(), "unwritten or non-finite outputs"
    err = _rel(out, atom.reference_matmul(x, aw))
    assert err < 1e-2, f"{scheme} m={m} k={k} n={n}: relative error {err:.2e} against the quantized math"


@pytest.mark.parametrize("m", [16, 1000])
def test_outlier_path_matters_on_gpu(target, m):
    from lowbit_tvm.w4a8_kernel import build  # pylint: disable=import-outside-toplevel

    rng = np.random.default_rng()
    k, n = 4096, 4096
    x, channels = _planted(rng, m, k)
    w = rng.standard_normal((n, k)).astype(np.float32)
    exact = x.astype(np.float64) @ w.astype(np.float64).T
    errors = {}
    for outliers in (0, 128):
        scheme = atom.AtomScheme(4, 128, outliers)
        aw = atom.quantize_weight(w, np.sort(channels) if outliers else [], scheme)
        errors[outliers] = _rel(_run(build(m, n, k, scheme, target), x, aw), exact)
    assert errors[128] < 0.03 and errors[0] > 5 * errors[128], errors


def test_inf_activations_are_refused(target):
    import torch  # pylint: disable=import-outside-toplevel

    from lowbit_tvm.errors import QuantizationError  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.w4a8_kernel import build  # pylint: disable=import-outside-toplevel

    rng = np.random.default_rng()
    layer = build(16, 256, 512, atom.W4A8, target)
    x, channels = _planted(rng, 16, 512)
    aw = atom.quantize_weight(rng.standard_normal((256, 512)), np.sort(channels), atom.W4A8)
    x[3, 5] = np.inf
    with pytest.raises(QuantizationError, match="Inf/NaN"):
        _run(layer, x, aw)
    assert torch.cuda.is_available()
