"""W4A4 layers on the GPU vs the float64 reference of the quantized math (run on the device).

The public dispatcher refuses W4A4 on sm_90 (int4 mma is emulated there); these tests build it anyway through
``build_plan`` (the internal override) to check the kernels execute correctly: ptxas accepts
``mma.m16n8k64.s4`` for sm_90 and the H100 runs it, slowly. Fresh random activations with planted x100 channels;
workspace and outputs poisoned before the run."""
import numpy as np
import pytest

from lowbit_tvm.quant import atom, atom_w4a4

pytestmark = pytest.mark.gpu

# (K, N, outliers): K = 11008 has 85 main groups, more than one step of the quantize kernel's thread rows (64 or
# 32 groups); N = 1040 is not a multiple of 128; K = 576 pads the main part to 640 (5 groups).
SHAPES = [pytest.param(11008, 4096, 128, id="k11008n4096o128"), pytest.param(576, 1040, 0, id="k576n1040o0")]
BATCHES = [1, 16, 128, 1000]


@pytest.fixture(scope="module")
def target():
    from lowbit_tvm.kernel import default_target  # pylint: disable=import-outside-toplevel

    return default_target()


def _build(m, n, k, outliers, target):
    from lowbit_tvm.schedules.w4a8_dispatch import plan_linear  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.w4a8_kernel import build_plan  # pylint: disable=import-outside-toplevel

    return build_plan(plan_linear(m, n, k, atom.AtomScheme(4, 128, outliers), act_bits=4), target)


GUARD = 4096  # poisoned elements after each buffer: writes past its end must not happen


def _poisoned(torch, shape, dtype):
    """``(base, view)``: a poisoned tensor of ``shape`` followed by ``GUARD`` poisoned elements."""
    size = int(np.prod(shape))
    fill = 0x55 if dtype == "int8" else float("nan")
    base = torch.full((size + GUARD,), fill, dtype=getattr(torch, dtype), device="cuda")
    return base, base[:size].view(shape)


def _guard_intact(base):
    guard = base[-GUARD:]
    return bool(guard.isnan().all()) if guard.dtype.is_floating_point else bool((guard == 0x55).all())


@pytest.mark.parametrize("k,n,outliers", SHAPES)
@pytest.mark.parametrize("m", BATCHES)
def test_w4a4_layer_matches_float64(target, m, k, n, outliers):
    import torch  # pylint: disable=import-outside-toplevel

    rng = np.random.default_rng()
    x = rng.standard_normal((m, k)).astype(np.float32)
    x[:, rng.choice(k, 128, replace=False)] *= 100
    x = x.astype(np.float16)
    calib = np.concatenate([x.astype(np.float64), rng.standard_normal((64, k))])
    aw = atom.calibrate(rng.standard_normal((n, k)), calib, atom.AtomScheme(4, 128, outliers))
    layer = _build(m, n, k, outliers, target)
    weights = [torch.from_numpy(np.ascontiguousarray(a)).cuda() for a in layer.prepare(aw)]
    buffers = [_poisoned(torch, shape, dtype) for shape, dtype in layer.workspace() + [((layer.plan.m_pad, n), "float16")]]
    *workspace, out = [view for _, view in buffers]
    layer(torch.from_numpy(x).cuda(), weights, workspace, out)
    torch.cuda.synchronize()
    assert all(_guard_intact(base) for base, _ in buffers), "a kernel wrote past the end of a buffer"
    got = out.double().cpu().numpy()
    assert np.isfinite(got).all(), "unwritten or non-finite outputs"
    assert not got[m:].any(), "padding rows must be zero"
    acts = [t.cpu().numpy() for t in workspace]
    half = len(acts) // 2
    codes, maxima = atom_w4a4.unpack_nibbles(acts[0])[:m], np.maximum(acts[half][:m], atom.AMAX_FLOOR)
    q_main, amax_main, q_out, amax_out = atom_w4a4.quantize_activations(x, aw)
    assert not acts[0][m:].any() and not acts[half][m:].any(), "padding rows must quantize to zeros"
    assert np.abs(codes.astype(int) - q_main).max() <= 1 and np.abs(codes).max() <= 7
    np.testing.assert_allclose(maxima, amax_main, rtol=1e-6)
    out_codes = out_max = None
    if outliers:
        out_codes, out_max = acts[1][:m], np.maximum(acts[3][:m], atom.AMAX_FLOOR)
        assert np.abs(out_codes.astype(int) - q_out).max() <= 1
        np.testing.assert_allclose(out_max, amax_out, rtol=1e-6)
    exact = atom_w4a4.matmul_from_codes(codes, maxima, out_codes, out_max, aw)  # from the kernel's own codes
    err = np.linalg.norm(got[:m] - exact) / np.linalg.norm(exact)
    assert err < 2e-3, f"m={m} k={k} n={n}: relative error {err:.2e} against the kernel's quantized activations"
    ref = atom_w4a4.reference_matmul(x, aw)
    err = np.linalg.norm(got[:m] - ref) / np.linalg.norm(ref)
    assert err < 1e-2, f"m={m} k={k} n={n}: relative error {err:.2e} against the quantized math"
