"""W4A16 without a GPU: the TensorIR op on llvm vs float64, every CUDA schedule builds to sm_90/sm_80
binaries, tunable spaces replay, and the tuning database round-trips."""
from dataclasses import asdict

import numpy as np
import pytest

from lowbit_tvm.codegen import build_module, cuda_target, device_code, device_code_format
from lowbit_tvm.kernel import MAX_SHARED, PASS_CONFIG, schedule
from lowbit_tvm.ops.w4a16 import W4A16Op
from lowbit_tvm.quant import get_scheme, quantize, reference_matmul
from lowbit_tvm.quant.mma_layout import to_mma_layout
from lowbit_tvm.schedules import W4A16Gemv, W4A16MmaGemv, W4A16TensorCore
from lowbit_tvm.schedules.w4a16_dispatch import ShapeError, plan
from lowbit_tvm.tvm_api import tvm


def _target(arch):
    return cuda_target(arch, max_shared_memory_per_block=MAX_SHARED[arch])


def _run_llvm(op, x, qw):
    lib = tvm.compile(op.prim_func(), target="llvm")
    packed = to_mma_layout(qw.packed) if op.layout == "mma" else qw.packed
    args = [x, packed, qw.scales] + ([] if qw.zeros is None else [qw.zeros])
    out = tvm.runtime.tensor(np.full((x.shape[0], op.n), np.nan, dtype=np.float16))
    lib[op.name](*[tvm.runtime.tensor(a) for a in args], out)
    return out.numpy().astype(np.float64)


@pytest.mark.parametrize("decode", ["float16", "float32"])
@pytest.mark.parametrize("scheme", ["w4a16-g128", "w4a16-g64-asym", "w4a16-g32", "w4a16-pc-asym"])
@pytest.mark.parametrize("m,k,n", [(1, 256, 40), (3, 512, 72), (17, 128, 16)])
def test_op_on_llvm_matches_float64(decode, scheme, m, k, n):
    rng = np.random.default_rng()
    qw = quantize(rng.standard_normal((n, k), dtype=np.float32), get_scheme(scheme))
    x = rng.standard_normal((m, k)).astype(np.float16)
    ref = reference_matmul(x, qw)
    for op_m in (m, None):  # static and dynamic M
        out = _run_llvm(W4A16Op(n, k, get_scheme(scheme), op_m, decode), x, qw)
        err = np.linalg.norm(out - ref) / np.linalg.norm(ref)
        assert err < 2e-3, f"relative error {err:.2e}"


@pytest.mark.parametrize("scheme", ["w4a16-g128", "w4a16-g32-asym", "w4a16-pc-asym"])
@pytest.mark.parametrize("m,k,n", [(1, 256, 40), (3, 512, 72)])
def test_word_reduction_op_on_llvm_matches_float64(scheme, m, k, n):
    """The two-level GEMV op (fp16 dot per packed word, fp32 sum times the group scale)."""
    rng = np.random.default_rng()
    qw = quantize(rng.standard_normal((n, k), dtype=np.float32), get_scheme(scheme))
    x = rng.standard_normal((m, k)).astype(np.float16)
    out = _run_llvm(W4A16Op(n, k, get_scheme(scheme), m, reduction="word"), x, qw)
    ref = reference_matmul(x, qw)
    err = np.linalg.norm(out - ref) / np.linalg.norm(ref)
    assert err < 2e-3, f"relative error {err:.2e}"


@pytest.mark.parametrize("scheme", ["w4a16-g128", "w4a16-g32-asym", "w4a16-pc-asym"])
@pytest.mark.parametrize("m,k,n", [(1, 256, 48), (3, 512, 32)])
def test_word_reduction_on_mma_layout_on_llvm_matches_float64(scheme, m, k, n):
    """The tensor-core layout's GEMV op (fp16 dot per tile row over four words, fp32 sum times the scale)."""
    rng = np.random.default_rng()
    qw = quantize(rng.standard_normal((n, k), dtype=np.float32), get_scheme(scheme))
    x = rng.standard_normal((m, k)).astype(np.float16)
    out = _run_llvm(W4A16Op(n, k, get_scheme(scheme), m, layout="mma", reduction="word"), x, qw)
    ref = reference_matmul(x, qw)
    err = np.linalg.norm(out - ref) / np.linalg.norm(ref)
    assert err < 2e-3, f"relative error {err:.2e}"


def test_unknown_reduction_is_refused():
    with pytest.raises(ValueError, match="reduction"):
        W4A16Op(64, 128, get_scheme("w4a16-g128"), 1, reduction="tree").prim_func()


@pytest.mark.parametrize("scheme", ["w4a16-g128", "w4a16-g32-asym", "w4a16-pc"])
@pytest.mark.parametrize("m,k,n", [(1, 256, 48), (5, 512, 32), (17, 128, 16)])
def test_op_with_mma_layout_on_llvm_matches_float64(scheme, m, k, n):
    """The tensor-core weight layout decodes to the same matrix (fp16 decode, static and dynamic M)."""
    rng = np.random.default_rng()
    qw = quantize(rng.standard_normal((n, k), dtype=np.float32), get_scheme(scheme))
    x = rng.standard_normal((m, k)).astype(np.float16)
    ref = reference_matmul(x, qw)
    for op_m in (m, None):
        out = _run_llvm(W4A16Op(n, k, get_scheme(scheme), op_m, layout="mma"), x, qw)
        err = np.linalg.norm(out - ref) / np.linalg.norm(ref)
        assert err < 2e-3, f"relative error {err:.2e}"


def test_dispatch_picks_gemv_for_one_row_and_tensor_cores_above():
    scheme = get_scheme("w4a16-g128")
    assert isinstance(plan(W4A16Op(4096, 4096, scheme, 1)).rule, W4A16Gemv)
    assert isinstance(plan(W4A16Op(4096, 4096, scheme, 8)).rule, W4A16TensorCore)
    assert isinstance(plan(W4A16Op(4104, 4096, scheme, 8)).rule, W4A16Gemv)  # N % 16 != 0: GEMV serves it
    assert isinstance(plan(W4A16Op(4096, 4096, scheme, 16)).rule, W4A16TensorCore)
    assert isinstance(plan(W4A16Op(4096, 4096, scheme, None)).rule, W4A16TensorCore)
    assert plan(W4A16Op(4096, 4096, scheme, 1)).op.layout == "rows"
    assert plan(W4A16Op(4096, 4096, scheme, 16)).op.layout == "mma"
    assert plan(W4A16Op(4096, 4096, scheme, None)).op.layout == "mma"


def test_gemv_plan_uses_word_dots_where_the_config_tiles_exactly():
    from lowbit_tvm.schedules.w4a16_gemv import fits_words  # pylint: disable=import-outside-toplevel

    scheme = get_scheme("w4a16-g128")
    for k, n in [(4096, 4096), (4096, 4160), (1024, 1040), (8192, 57344), (28672, 8192)]:
        chosen = plan(W4A16Op(n, k, scheme, 1))
        assert chosen.op.reduction == "word" and fits_words(n, k // 8, **chosen.config.__dict__)
    # K/8 = 32 * 43: no word config tiles it; the GEMV on tensor-core weights does (K/16 = 688 = 2 * 43 * 8)
    assert plan(W4A16Op(4096, 11008, scheme, 1)).op.layout == "mma"
    assert plan(W4A16Op(40, 1152, scheme, 1)).op.reduction == "flat"  # neither tiles: the flat GEMV
    assert plan(W4A16Op(4096, 4096, scheme, 16)).op.reduction == "flat"


def test_kernel_arguments_are_checked_with_clear_errors():
    from lowbit_tvm.kernel import check_args  # pylint: disable=import-outside-toplevel

    op = W4A16Op(64, 128, get_scheme("w4a16-g32-asym"), None)
    qw = quantize(np.random.default_rng().standard_normal((64, 128), dtype=np.float32), op.scheme)
    x = np.zeros((3, 128), np.float16)
    out = np.zeros((3, 64), np.float16)
    check_args(op, (x, qw.packed, qw.scales, qw.zeros, out))
    with pytest.raises(ShapeError, match="expected 5 arguments"):
        check_args(op, (x, qw.packed, qw.scales, out))
    with pytest.raises(ShapeError, match=r"x must be float16 \(3, 128\), got float32"):
        check_args(op, (x.astype(np.float32), qw.packed, qw.scales, qw.zeros, out))
    with pytest.raises(ShapeError, match="packed must be uint32"):
        check_args(op, (x, qw.packed.view(np.int32), qw.scales, qw.zeros, out))
    with pytest.raises(ShapeError, match="out must be"):
        check_args(op, (x, qw.packed, qw.scales, qw.zeros, out[:2]))
    with pytest.raises(ShapeError, match="x must be a contiguous"):
        check_args(op, (np.zeros((128, 3), np.float16).T, qw.packed, qw.scales, qw.zeros, out))
    with pytest.raises(ShapeError, match=r"packed must be uint32 \(4, 8, 32\), got uint32 \(64, 16\)"):
        check_args(op.with_layout("mma"), (x, qw.packed, qw.scales, qw.zeros, out))


def test_gemv_rule_declines_dynamic_m():
    op = W4A16Op(4096, 4096, get_scheme("w4a16-g128"), None, "float32")
    assert W4A16Gemv().apply(op.prim_func(), _target("sm_90")) is None


def test_tensor_core_path_rejects_unsupported_shape_clearly():
    with pytest.raises(ShapeError, match="N % 16 == 0"):
        plan(W4A16Op(1000, 4096, get_scheme("w4a16-g128"), 64))


@pytest.mark.parametrize("m,k,n,scheme", [(1, 4096, 4096, "w4a16-g128"), (3, 4160, 1040, "w4a16-g32-asym")])
def test_gemv_on_tensor_core_weights_builds_to_binary(m, k, n, scheme):
    from lowbit_tvm.schedules.w4a16_dispatch import mma_gemv_plan  # pylint: disable=import-outside-toplevel

    chosen = mma_gemv_plan(W4A16Op(n, k, get_scheme(scheme), m))
    assert chosen.op.layout == "mma" and chosen.op.reduction == "word"
    sch = chosen.rule.apply(chosen.op.prim_func(), _target("sm_90"), config=chosen.config)
    with tvm.transform.PassContext(config=PASS_CONFIG):
        assert device_code_format(build_module(sch.mod, _target("sm_90"))) in ("fatbin", "cubin")
        source = device_code(build_module(sch.mod, _target("sm_90"), binary=False))[0].data.decode()
    assert "lowbit_mma_dot(" in source and "lop3.b32" in source and "__syncthreads" in source


@pytest.mark.parametrize("k,n", [(4096, 4096), (4096, 12288), (4096, 22016), (11008, 4096), (8192, 57344), (28672, 8192)])
def test_one_row_dispatch(k, n):
    """M=1: the word GEMV where its configs tile K/8, else the GEMV on tensor-core weights (K=11008: faster
    than the flat GEMV on the H100), whose default tiles the shape exactly and keeps 64k threads streaming."""
    from lowbit_tvm.schedules.w4a16_dispatch import mma_gemv_plan  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.schedules.w4a16_mma_gemv import fits_tiles  # pylint: disable=import-outside-toplevel

    op = W4A16Op(n, k, get_scheme("w4a16-g128"), 1)
    chosen, decode = plan(op), mma_gemv_plan(op)
    assert (chosen.rule.name, chosen.op.layout) == (("w4a16-mma-gemv", "mma") if k == 11008 else ("w4a16-gemv", "rows"))
    assert fits_tiles(n // 16, k // 16, **asdict(decode.config))
    assert n // 16 * decode.config.ky * 16 >= 64 * 1024


@pytest.mark.parametrize("contiguous,stream", [(0, 1), (1, 0)])
def test_gemv_on_tensor_core_weights_load_variants_build(contiguous, stream):
    """The decode GEMV's load knobs: each variant compiles (checked against float64 on the GPU)."""
    from lowbit_tvm.schedules.w4a16_mma_gemv import MmaGemvConfig  # pylint: disable=import-outside-toplevel

    op = W4A16Op(1040, 4160, get_scheme("w4a16-g32-asym"), 3, layout="mma", reduction="word")
    config = MmaGemvConfig(ky=5, tiles=1 if contiguous == 0 else 13, unroll=0, contiguous=contiguous, stream=stream)
    sch = W4A16MmaGemv().apply(op.prim_func(), _target("sm_90"), config=config)
    with tvm.transform.PassContext(config=PASS_CONFIG):
        source = device_code(build_module(sch.mod, _target("sm_90"), binary=False))[0].data.decode()
    assert ("lowbit_ldg_stream((" in source) == (stream == 1)


def test_word_gemv_streaming_loads_build():
    from lowbit_tvm.schedules.w4a16_gemv import GemvConfig  # pylint: disable=import-outside-toplevel

    op = W4A16Op(1024, 4096, get_scheme("w4a16-g32-asym"), 3, reduction="word")
    sch = W4A16Gemv().apply(op.prim_func(), _target("sm_80"), config=GemvConfig(32, 4, 32, 64, 2, 1))
    with tvm.transform.PassContext(config=PASS_CONFIG):
        source = device_code(build_module(sch.mod, _target("sm_80"), binary=False))[0].data.decode()
        assert device_code_format(build_module(sch.mod, _target("sm_80"))) in ("fatbin", "cubin")
    assert "lowbit_ldg_stream((" in source and "L2::cache_hint" in source


def test_gemv_on_tensor_core_weights_needs_tileable_shapes():
    from lowbit_tvm.schedules.w4a16_dispatch import mma_gemv_plan  # pylint: disable=import-outside-toplevel

    scheme = get_scheme("w4a16-pc")
    assert mma_gemv_plan(W4A16Op(64, 1040, scheme, 1)) is None  # K/16 = 65 tiles: no thread split fits
    assert mma_gemv_plan(W4A16Op(64, 1024, scheme, None)) is None  # dynamic M
    with pytest.raises(ValueError, match="does not tile"):
        op = W4A16Op(64, 1040, scheme, 1, layout="mma", reduction="word")
        W4A16MmaGemv().apply(op.prim_func(), _target("sm_90"))


def _build(op, arch, binary):
    target = _target(arch)
    mod, chosen, source = schedule(op, target)
    assert source == "default"
    with tvm.transform.PassContext(config=PASS_CONFIG):
        built = build_module(mod, target, binary=binary)
    return built, chosen


@pytest.mark.parametrize("arch", ["sm_90", "sm_80"])
@pytest.mark.parametrize(
    "m,k,n,scheme",
    [
        (1, 4096, 4096, "w4a16-g128"),
        (1, 11008, 4096, "w4a16-g128"),
        (4, 11008, 4096, "w4a16-g32-asym"),
        (3, 4096, 4160, "w4a16-g32-asym"),
        (16, 4096, 4096, "w4a16-g128"),
        (33, 11008, 4160, "w4a16-g128-asym"),
        (128, 4096, 1040, "w4a16-pc"),
        (256, 4096, 12288, "w4a16-g64"),
        (None, 4096, 4096, "w4a16-g128"),
    ],
)
def test_every_default_schedule_builds_to_binary(arch, m, k, n, scheme):
    op = W4A16Op(n, k, get_scheme(scheme), m)
    built, chosen = _build(op, arch, binary=True)
    assert device_code_format(built) in ("fatbin", "cubin")
    source = device_code(_build(op, arch, binary=False)[0])[0].data.decode()
    if isinstance(chosen.rule, W4A16TensorCore):
        for instruction in ("mma.sync.aligned.m16n8k16", "ldmatrix", "cp.async", "lowbit_decode_mma("):
            assert instruction in source
    elif isinstance(chosen.rule, W4A16MmaGemv):
        assert "lowbit_mma_dot(" in source and "uint4" in source and "__syncthreads" in source
    else:
        assert "uint4" in source  # 16-byte weight loads
        if chosen.op.reduction == "word":
            assert "lowbit_word_dot(" in source and "lop3.b32" in source


@pytest.mark.parametrize("rule", [W4A16Gemv(), W4A16TensorCore(), W4A16MmaGemv()])
def test_tunable_space_replays_with_random_decisions(rule):
    """The tunable trace is a search space: replaying it with fresh decisions gives valid kernels."""
    from lowbit_tvm.tvm_api import Schedule  # pylint: disable=import-outside-toplevel

    m = 64 if isinstance(rule, W4A16TensorCore) else 1
    op = plan(W4A16Op(4096, 4096, get_scheme("w4a16-g128"), m)).op
    if isinstance(rule, W4A16MmaGemv):
        op = op.with_layout("mma").with_reduction("word")
    sch = Schedule(op.prim_func())
    assert rule.schedule(sch, _target("sm_90"), tunable=True)
    decisions = {str(inst.kind.name) for inst in sch.trace.decisions}
    assert "SampleCategorical" in decisions
    assert "sample_categorical" in "\n".join(sch.trace.as_python())  # MetaSchedule stringifies traces
    sch.trace.as_json()
    built_any = 0
    for seed in range(1, 5):
        fresh = Schedule(op.prim_func(), seed=seed)
        try:
            sch.trace.apply_to_schedule(fresh, remove_postproc=True, decision_provider=lambda *a: None)
        except Exception:  # pylint: disable=broad-except
            continue  # a decision combination may not fit this shape: MetaSchedule skips it too
        with tvm.transform.PassContext(config=PASS_CONFIG):
            tvm.compile(fresh.mod, target=_target("sm_90"))
        built_any += 1
    assert built_any >= 1


def test_dynamic_m_builds_one_module_with_a_function_per_batch_bucket():
    from lowbit_tvm.kernel import DYNAMIC_BUCKETS, build  # pylint: disable=import-outside-toplevel

    kernel = build(W4A16Op(1040, 1024, get_scheme("w4a16-g128"), None), _target("sm_90"))
    assert kernel.op.layout == "mma" and [b for b, _ in kernel.buckets] == list(DYNAMIC_BUCKETS)
    names = [name for _, name in kernel.buckets]
    assert len(set(names)) == len(names)
    for m, bucket in [(1, 0), (16, 0), (17, 1), (64, 2), (65, 3), (4096, 3)]:
        assert kernel.name_for(m) == names[bucket]
        assert kernel.function_for(m) is not None


@pytest.mark.parametrize("k,n", [(4096, 4096), (4096, 22016), (11008, 4096), (8192, 57344), (28672, 8192), (1024, 1040)])
@pytest.mark.parametrize("m", [16, 32, 64, 256])
def test_default_tensor_core_configs_tile_exactly(k, n, m):
    from lowbit_tvm.schedules.w4a16_dispatch import tensor_core_config  # pylint: disable=import-outside-toplevel

    c = tensor_core_config(W4A16Op(n, k, get_scheme("w4a16-g128"), m))
    assert n % (16 * c.warps_n * c.tile_n) == 0
    assert k % (16 * c.k_inner * c.split_k) == 0 and k // (16 * c.k_inner * c.split_k) >= 3


def test_split_k_only_where_the_tiles_leave_sms_idle():
    from lowbit_tvm.schedules.w4a16_dispatch import tensor_core_config  # pylint: disable=import-outside-toplevel

    scheme = get_scheme("w4a16-g128")
    assert tensor_core_config(W4A16Op(57344, 8192, scheme, 16)).split_k == 1  # 896 blocks already
    assert tensor_core_config(W4A16Op(8192, 28672, scheme, 16)).split_k == 4  # 128 blocks -> 512
