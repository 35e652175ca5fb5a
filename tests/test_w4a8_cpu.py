"""W4A8/W8A8 without a GPU: the TensorIR ops on llvm vs the float64 reference of the quantized math, the CUDA
schedules build to sm_90 binaries, dispatch and bad input."""
import numpy as np
import pytest

from lowbit_tvm.errors import CodegenError, QuantizationError
from lowbit_tvm.ops.w4a8 import ActQuantOp, IntGemmOp
from lowbit_tvm.quant import atom
from lowbit_tvm.schedules.w4a8_dispatch import check_variant, choose_path, gemm_config, plan_linear
from lowbit_tvm.tvm_api import tvm


def _llvm(func, args):
    lib = tvm.compile(func, target="llvm")
    tensors = [tvm.runtime.tensor(a) for a in args]
    lib[func.attrs["global_symbol"]](*tensors)
    return [t.numpy() for t in tensors]


def _layer_on_llvm(x, aw, m_pad):
    """The quantize op, then the GEMM op(s), each built for llvm, as the CUDA module chains them."""
    m = x.shape[0]
    n, k = aw.shape
    o = aw.scheme.outliers
    quant = ActQuantOp(k, aw.main_k, o, m, m_pad)
    acts = [np.zeros((m_pad, aw.main_k), np.int8)] + ([np.zeros((m_pad, o), np.int8)] if o else [])
    maxima = [np.full(m_pad, np.nan, np.float32) for _ in acts]
    outs = _llvm(quant.prim_func(), [x, aw.perm, *acts, *maxima])[2:]
    acts, maxima = outs[: len(acts)], outs[len(acts):]
    group = aw.scheme.group_size or aw.main_k
    main = IntGemmOp(n, aw.main_k, aw.scheme.weight_bits, group, m_pad)
    out = np.full((m_pad, n), np.nan, np.float16)
    out = _llvm(main.prim_func(), [acts[0], maxima[0], aw.packed(), np.ascontiguousarray(aw.scales.T), out])[-1]
    if o:
        extra = IntGemmOp(n, o, 8, o, m_pad, True)
        out = _llvm(extra.prim_func(), [acts[1], maxima[1], aw.packed_outliers(), aw.outlier_scales.T.copy(), out, out.copy()])[-1]
    return acts, maxima, out


@pytest.mark.parametrize("scheme,m,k,n", [
    (atom.AtomScheme(4, 128, 32), 5, 320, 48),  # main part zero-padded 288 -> 384
    (atom.AtomScheme(8, None, 0), 7, 256, 16),
])
def test_ops_on_llvm_match_float64(scheme, m, k, n):
    rng = np.random.default_rng()
    x = rng.standard_normal((m, k)).astype(np.float16)
    x[:, rng.choice(k, 8, replace=False)] *= 100
    aw = atom.calibrate(rng.standard_normal((n, k)), x.astype(np.float64), scheme)
    acts, maxima, out = _layer_on_llvm(x, aw, 16)
    q_main, s_main, q_out, s_out = atom.quantize_activations(x, aw)
    assert np.abs(acts[0][:m].astype(int) - q_main).max() <= 1  # fp32 vs float64 rounding at ties
    np.testing.assert_allclose(maxima[0][:m] / 127, s_main, rtol=1e-6)
    assert not acts[0][m:].any() and not out[m:].any()  # padding rows are zero
    if scheme.outliers:
        assert np.abs(acts[1][:m].astype(int) - q_out).max() <= 1
    ref = atom.reference_matmul(x, aw)
    err = np.linalg.norm(out[:m].astype(np.float64) - ref) / np.linalg.norm(ref)
    assert err < 2e-3, f"relative error {err:.2e}"


def test_cuda_layer_builds_for_sm90():
    from lowbit_tvm.codegen import device_code_format  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.kernel import default_target  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.w4a8_kernel import build  # pylint: disable=import-outside-toplevel

    layer = build(200, 256, 640, atom.AtomScheme(4, 128, 128), default_target("sm_90"))
    assert device_code_format(layer.module) == "fatbin"
    assert layer.names[0].startswith("a8quant") and len(layer.names) == 3
    w8 = build(16, 64, 256, atom.W8A8, default_target("sm_90"))
    assert len(w8.names) == 2 and device_code_format(w8.module) == "fatbin"


def test_dispatch_and_bad_input():
    plan = plan_linear(1000, 4096, 4096, atom.W4A8)
    assert plan.m_pad % (16 * plan.gemms[0][1].warps_m * plan.gemms[0][1].tile_m) == 0 and plan.m_pad >= 1000
    assert [op.weight_bits for op, _ in plan.gemms] == [4, 8] and plan.gemms[1][0].accumulate
    assert gemm_config(16, 1040).warps_n * gemm_config(16, 1040).tile_n in (1, 5, 13, 65)
    assert check_variant("w4a8", "sm_90") == "w4a8"
    assert choose_path(16) == "w4a16" and choose_path(17) == "w4a8"
    with pytest.raises(CodegenError, match="use variant 'w4a8'"):
        check_variant("w4a4", "sm_90")
    assert check_variant("w4a4", "sm_89") == "w4a4"  # W4A4 itself: tests/test_w4a4_cpu.py
    with pytest.raises(QuantizationError, match="N % 16"):
        plan_linear(16, 1000, 4096, atom.W4A8)
    with pytest.raises(QuantizationError, match="must lie in"):
        plan_linear(16, 1024, 96, atom.W4A8)
