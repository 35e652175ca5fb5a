"""W4A4 (Atom, int4 activations x int4 weights) without a GPU: the TensorIR ops on llvm vs the float64 reference
of the quantized math (outliers included, odd M), CUDA builds for sm_89 and sm_80 (nvcc), dispatch, the
MetaSchedule spaces and bad input."""
import numpy as np
import pytest

from lowbit_tvm.errors import CodegenError, QuantizationError
from lowbit_tvm.ops.w4a4 import Int4GemmOp
from lowbit_tvm.ops.w4a8 import ActQuantOp, IntGemmOp
from lowbit_tvm.quant import atom, atom_w4a4, s8_layout
from lowbit_tvm.schedules.w4a8_dispatch import check_variant, plan_linear

from test_w4a8_cpu import _llvm


def _layer_on_llvm(x, aw, m_pad):
    """The int4-mode quantize op, the W4A4 GEMM and the outlier GEMM, each built for llvm, chained as on the GPU."""
    m = x.shape[0]
    n, k = aw.shape
    o = aw.scheme.outliers
    quant = ActQuantOp(k, aw.main_k, o, m, m_pad, bits=4)
    main_shape, main_max = quant.main_shapes
    acts = [np.full(main_shape, 99, np.int8)] + ([np.full((m_pad, o), 99, np.int8)] if o else [])
    maxima = [np.full(main_max, np.nan, np.float32)] + ([np.full(m_pad, np.nan, np.float32)] if o else [])
    outs = _llvm(quant.prim_func(), [x, aw.perm, *acts, *maxima])[2:]
    acts, maxima = outs[: len(acts)], outs[len(acts):]
    main = Int4GemmOp(n, aw.main_k, atom_w4a4.GROUP, m_pad)
    out = np.full((m_pad, n), np.nan, np.float16)
    weights = [atom_w4a4.packed_weight(aw), np.ascontiguousarray(aw.scales.T)]
    out = _llvm(main.prim_func(), [acts[0], maxima[0], *weights, out])[-1]
    if o:
        extra = IntGemmOp(n, o, 8, o, m_pad, True)
        out = _llvm(extra.prim_func(), [acts[1], maxima[1], aw.packed_outliers(), aw.outlier_scales.T.copy(), out, out.copy()])[-1]
    return acts, maxima, out


def _floor(amax):
    """The kernel stores max |x|; the reference returns it floored (an all-zero token)."""
    return np.maximum(amax, atom.AMAX_FLOOR)


@pytest.mark.parametrize("outliers,m,k,n", [(32, 5, 320, 48), (0, 3, 256, 32)])  # 320 - 32 padded to 384
def test_ops_on_llvm_match_float64(outliers, m, k, n):
    rng = np.random.default_rng()
    x = rng.standard_normal((m, k)).astype(np.float16)
    x[:, rng.choice(k, 8, replace=False)] *= 100
    x[1, :] = 0  # an all-zero token: floored amax, zero codes
    aw = atom.calibrate(rng.standard_normal((n, k)), x.astype(np.float64), atom.AtomScheme(4, 128, outliers))
    acts, maxima, out = _layer_on_llvm(x, aw, 16)
    q_main, amax_main, q_out, amax_out = atom_w4a4.quantize_activations(x, aw)
    codes = atom_w4a4.unpack_nibbles(acts[0])
    assert np.abs(codes[:m].astype(int) - q_main).max() <= 1  # fp32 vs float64 rounding at ties
    assert np.abs(codes).max() <= 7 and not acts[0][m:].any() and not out[m:].any()  # padding rows are zero
    np.testing.assert_allclose(_floor(maxima[0][:m]), amax_main, rtol=1e-6)
    if outliers:
        assert np.abs(acts[1][:m].astype(int) - q_out).max() <= 1
        np.testing.assert_allclose(_floor(maxima[1][:m]), amax_out, rtol=1e-6)
    got = out[:m].astype(np.float64)
    exact = atom_w4a4.matmul_from_codes(codes[:m], np.maximum(maxima[0][:m], atom.AMAX_FLOOR),
                                        acts[1][:m] if outliers else None, maxima[1][:m] if outliers else None, aw)
    assert np.linalg.norm(got - exact) / np.linalg.norm(exact) < 2e-3  # fp16 output rounding only
    ref = atom_w4a4.reference_matmul(x, aw)
    err = np.linalg.norm(got - ref) / np.linalg.norm(ref)
    assert err < 5e-3, f"relative error {err:.2e}"


def test_packing_round_trips():
    rng = np.random.default_rng()
    codes = rng.integers(-8, 8, (32, 256))
    assert np.array_equal(atom_w4a4.unpack_nibbles(atom_w4a4.pack_nibbles(codes)), codes)
    aw = atom.quantize_weight(rng.standard_normal((32, 256)), [], atom.AtomScheme(4, 128, 0))
    packed = atom_w4a4.packed_weight(aw)
    assert packed.shape == Int4GemmOp(32, 256, 128, 16).packed_shape
    assert np.array_equal(atom_w4a4.unpack_nibbles(s8_layout.from_s8_layout(packed, 8)), aw.codes)


def test_cuda_layers_build_for_sm89_and_sm80():
    from lowbit_tvm.codegen import device_code_format  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.kernel import default_target  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.w4a8_kernel import build  # pylint: disable=import-outside-toplevel

    layer = build(200, 256, 640, atom.AtomScheme(4, 128, 128), default_target("sm_89"), variant="w4a4")
    assert device_code_format(layer.module) == "fatbin"
    assert layer.names[0].startswith("a4quant") and layer.names[1].startswith("w4a4") and len(layer.names) == 3
    assert layer.workspace()[0] == ((layer.plan.m_pad, 256), "int8") and layer.workspace()[2][0] == (layer.plan.m_pad, 4)
    small = build(16, 32, 256, atom.AtomScheme(4, 128, 0), default_target("sm_80"), variant="w4a4")
    assert device_code_format(small.module) == "fatbin" and len(small.names) == 2


def test_tuning_spaces():
    from lowbit_tvm.kernel import default_target  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.schedules.w4a4_tensor_core import Int4GemmTensorCore  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.schedules.w4a8_quantize import ActQuant  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.schedules.w4a8_tensor_core import IntGemmTensorCore  # pylint: disable=import-outside-toplevel

    target = default_target("sm_89")
    plan = plan_linear(64, 256, 512, atom.AtomScheme(4, 128, 32), act_bits=4)  # 16 N tiles: every sample fits
    (op, config), _ = plan.gemms
    sch = Int4GemmTensorCore().apply(op.prim_func(), target, tunable=True, config=config)
    sampled = [inst for inst in sch.trace.insts if inst.kind.name == "SampleCategorical"]
    assert len(sampled) == 3  # warps_n, tile_n, k_inner (warps_m, tile_m, prefetch stay fixed)
    assert IntGemmTensorCore().apply(op.prim_func(), target, config=config) is None  # not its pattern
    quant = ActQuant().apply(plan.quant.prim_func(), target, tunable=True)
    assert len([i for i in quant.trace.insts if i.kind.name == "SampleCategorical"]) == 1  # threads


def test_dispatch_and_bad_input():
    for arch in ("sm_80", "sm_86", "sm_89"):
        assert check_variant("w4a4", arch) == "w4a4"
    for arch in ("sm_90", "sm_90a"):
        with pytest.raises(CodegenError, match="use variant 'w4a8'"):
            check_variant("w4a4", arch)
    plan = plan_linear(1000, 1040, 4096, atom.AtomScheme(4, 128, 128), act_bits=4)
    assert plan.variant == "w4a4" and plan.quant.bits == 4 and plan.m_pad >= 1000
    assert isinstance(plan.gemms[0][0], Int4GemmOp) and plan.gemms[0][1].k_inner in (1, 2)
    assert isinstance(plan.gemms[1][0], IntGemmOp) and plan.gemms[1][0].accumulate
    assert plan_linear(1000, 1040, 4096, atom.W4A8).variant == "w4a8"
    with pytest.raises(QuantizationError, match="groups of 128"):
        plan_linear(16, 256, 512, atom.W8A8, act_bits=4)
    with pytest.raises(QuantizationError, match="groups of 128"):
        plan_linear(16, 256, 512, atom.AtomScheme(4, 64, 0), act_bits=4)
    from lowbit_tvm.kernel import default_target  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.w4a8_kernel import build  # pylint: disable=import-outside-toplevel

    with pytest.raises(CodegenError, match="use variant 'w4a8'"):  # refused before anything is compiled
        build(16, 256, 512, atom.W4A8, default_target("sm_90"), variant="w4a4")
    with pytest.raises(QuantizationError, match="does not fit"):
        build(16, 256, 512, atom.W8A8, default_target("sm_89"), variant="w4a4")
