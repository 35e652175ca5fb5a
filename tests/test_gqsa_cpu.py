"""The GQSA op without a GPU: TensorIR on llvm vs float64 on the dense reconstruction, the GEMV schedule builds
for sm_90, the dispatcher pads rows to whole warp steps, and argument checks."""
import numpy as np
import pytest

from lowbit_tvm.codegen import build_module, cuda_target
from lowbit_tvm.gqsa_kernel import GQSAKernel, check_args
from lowbit_tvm.kernel import MAX_SHARED, PASS_CONFIG
from lowbit_tvm.ops.gqsa import GQSAOp
from lowbit_tvm.quant.gqsa import GQSAScheme, dense_reference, gqsa_quantize, to_slots
from lowbit_tvm.schedules.gqsa_dispatch import plan, slots_for
from lowbit_tvm.schedules.w4a16_dispatch import ShapeError
from lowbit_tvm.tvm_api import tvm


def _weights(n, k, group, sparsity, balance="layer", seed=None):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((n, k), dtype=np.float32)
    w[1] = 0.0  # a row with no kept group under layer balance
    return gqsa_quantize(w, GQSAScheme(group, sparsity, balance))


@pytest.mark.parametrize("m,n,k,group,sparsity", [(1, 40, 256, 32, 0.5), (3, 24, 512, 64, 0.7),
                                                  (2, 16, 128, 16, 0.0), (5, 8, 384, 128, 0.3)])
def test_op_on_llvm_matches_float64(m, n, k, group, sparsity):
    qw = _weights(n, k, group, sparsity)
    kept = int(qw.row_counts.max())
    op = GQSAOp(n, k, group, kept + 2, m)  # two padding slots in the fullest row
    lib = tvm.compile(op.prim_func(), target="llvm")
    x = np.random.default_rng().standard_normal((m, k)).astype(np.float16)
    out = tvm.runtime.tensor(np.full((m, n), np.nan, dtype=np.float16))
    lib[op.name](*[tvm.runtime.tensor(a) for a in (x, *to_slots(qw, op.slots))], out)
    ref = dense_reference(x, qw)
    got = out.numpy().astype(np.float64)
    if sparsity > 0:
        assert (got[:, 1] == 0).all()
    err = np.linalg.norm(got - ref) / np.linalg.norm(ref)
    assert err < 2e-3, f"relative error {err:.2e}"


@pytest.mark.parametrize("m,n,k,group,kept", [(1, 4096, 4096, 64, 32), (16, 1000, 576, 32, 9)])
def test_gemv_builds_for_sm90(m, n, k, group, kept):
    chosen = plan(n, k, group, kept, m)
    assert chosen.op.slots >= kept and chosen.config.fits(n, chosen.op.words)
    target = cuda_target("sm_90", max_shared_memory_per_block=MAX_SHARED["sm_90"])
    sch = chosen.rule.apply(chosen.op.prim_func(), target, config=chosen.config)
    with tvm.transform.PassContext(config=PASS_CONFIG):
        module = build_module(sch.mod, target)
    assert chosen.op.name in module.functions


def test_plan_pads_little():
    assert plan(22016, 4096, 64, 32, 1).op.slots == 32  # 256 words: 32 lanes x 4 words tile it
    chosen = plan(4096, 11008, 64, 86, 1)  # 688 words: 32 x 4 does not tile 86 slots without 10 % padding
    assert chosen.op.slots - 86 <= 86 / 8 and chosen.config.fits(4096, chosen.op.words)
    assert plan(7, 64, 32, 0, 1).op.slots >= 1  # every group pruned: still a valid kernel
    assert slots_for(chosen.config, 64, 0) >= 1


def test_arguments_are_checked():
    op = GQSAOp(16, 128, 32, 4, 1)
    kernel = GQSAKernel(op, "gqsa-gemv", "default", None)
    args = [np.zeros(shape, dtype) for _, shape, dtype in op.arg_specs()]
    check_args(op, args)
    args[3] = args[3].astype(np.int64)
    with pytest.raises(ShapeError, match="indices must be int32"):
        kernel(*args)
    qw = _weights(16, 256, 32, 0.5)
    with pytest.raises(ShapeError, match="the kernel wants"):
        kernel.prepare(qw)
    with pytest.raises(ValueError, match="group must be one of"):
        GQSAOp(16, 100, 32, 4, 1)


def test_knobs_are_a_metaschedule_space():
    """With ``tunable=True`` every knob is a sampled decision in the trace (MetaSchedule's search space)."""
    from lowbit_tvm.schedules.gqsa_gemv import GQSAGemv

    chosen = plan(2048, 4096, 128, 16, 1)
    target = cuda_target("sm_90", max_shared_memory_per_block=MAX_SHARED["sm_90"])
    sch = GQSAGemv().apply(chosen.op.prim_func(), target, tunable=True)
    samples = [inst for inst in sch.trace.insts if inst.kind.name == "SampleCategorical"]
    assert len(samples) == len(GQSAGemv.SPACE) + 1  # every knob, and vec / 8 as a decision of its own
