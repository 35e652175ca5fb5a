"""Paged decode attention (``ops.decode_attention``, ``schedules.decode_attention``) on the CPU.

The split-KV TensorIR without the GPU schedule (llvm) vs a float64 softmax over the same pages; the float64
model vs plain attention on contiguous K/V; the split plan; sm_90 builds of the CUDA kernels (nvcc, no GPU);
and the Llama graph taking our kernel on CUDA only.
"""
import numpy as np
import pytest

from lowbit_tvm.codegen import build_module, cuda_target
from lowbit_tvm.ops.decode_attention import (EMPTY_LSE, LOG2E, DecodeAttentionOp, SplitPlan, gather_kv,
                                             random_paged_inputs, reference)
from lowbit_tvm.schedules.decode_attention import DecodeAttentionConfig, decode_attention_cuda, supports
from lowbit_tvm.tvm_api import structural_equal, tirx, tvm

ARGS = ("q", "pages", "page_indptr", "page_values", "last_page_len", "k_rope_pos_offset", "q_rope_position")
LLAMA2 = DecodeAttentionOp(32, 32, 128)
# kv heads < query heads; head_dim 64
GQA = DecodeAttentionOp(8, 2, 64)
SMALL_PLAN = SplitPlan(chunk=8, target_blocks=16, max_splits=4)  # many ranges on few heads


def run_llvm(op: DecodeAttentionOp, plan: SplitPlan, inputs: dict, sm_scale: float, rotary_mode: int = 0):
    lib = tvm.compile(op.prim_func(plan).with_attr("global_symbol", "main"), target="llvm")
    batch = len(inputs["page_indptr"]) - 1
    out = tvm.runtime.tensor(np.full((batch, op.num_q_heads, op.head_dim), np.nan, op.dtype))
    lse = tvm.runtime.tensor(np.full((batch, op.num_q_heads), np.nan, np.float32))
    lib["main"](*[tvm.runtime.tensor(inputs[k]) for k in ARGS], out, lse, rotary_mode, 1.0, 1e4, sm_scale)
    return out.numpy(), lse.numpy()


def check(op, inputs, out, lse, sm_scale):
    ref_out, ref_lse = reference(inputs["q"], inputs["pages"], inputs["page_indptr"], inputs["page_values"],
                                 inputs["last_page_len"], sm_scale)
    assert np.isfinite(out).all() and np.isfinite(lse).all()
    assert np.abs(out.astype(np.float64) - ref_out).max() < 2e-3 * max(1.0, np.abs(ref_out).max())
    assert np.abs(lse - ref_lse).max() < 1e-4 * max(1.0, np.abs(ref_lse).max())


@pytest.mark.parametrize("op", [GQA, DecodeAttentionOp(4, 4, 32), DecodeAttentionOp(6, 2, 32)],
                         ids=["gqa4", "mha", "gqa3"])
@pytest.mark.parametrize("plan", [SMALL_PLAN, SplitPlan()], ids=["split", "default"])
def test_serial_tir_matches_float64(op, plan):
    # 0 tokens, 1, a part page, the plan's chunk +- 1, several ranges, and a long sequence
    seq_lens = [1, 7, 0, 300, 9, 1031]
    inputs = random_paged_inputs(op, seq_lens, seed=3)
    sm_scale = op.head_dim ** -0.5
    out, lse = run_llvm(op, plan, inputs, sm_scale)
    check(op, inputs, out, lse, sm_scale)
    assert (out[2] == 0).all() and (lse[2] == EMPTY_LSE).all()  # the empty sequence


@pytest.mark.parametrize("n", [1, 7, 300, 1000])
def test_serial_tir_single_sequence(n):
    """Batch 1: the plan cuts the sequence into as many ranges as it allows."""
    inputs = random_paged_inputs(GQA, [n], seed=n)
    out, lse = run_llvm(GQA, SMALL_PLAN, inputs, 0.2)
    check(GQA, inputs, out, lse, 0.2)


def test_inline_rope_is_refused():
    inputs = random_paged_inputs(GQA, [5], seed=0)
    with pytest.raises(Exception, match="RoPE applied before the cache"):
        run_llvm(GQA, SMALL_PLAN, inputs, 0.2, rotary_mode=1)


def _pack(k: np.ndarray, v: np.ndarray, page_size: int, table: np.ndarray, num_pages: int) -> np.ndarray:
    """Pages holding contiguous ``k, v [tokens, kv_heads, dim]`` at the pages ``table`` lists, in order."""
    n, heads, dim = k.shape
    pages = np.zeros((num_pages, 2, heads, page_size, dim), k.dtype)
    for t in range(n):
        pages[table[t // page_size], 0, :, t % page_size] = k[t]
        pages[table[t // page_size], 1, :, t % page_size] = v[t]
    return pages


def test_reference_reads_the_page_layout():
    """The float64 model through a shuffled page table equals softmax attention on contiguous K/V."""
    rng = np.random.default_rng(7)
    n, heads, kv_heads, dim, page_size = 37, 4, 2, 16, 16
    k, v = (rng.standard_normal((n, kv_heads, dim)) for _ in range(2))
    q = rng.standard_normal((1, heads, dim))
    table = np.array([5, 0, 3], np.int32)
    pages = _pack(k, v, page_size, table, 6)
    indptr, last = np.array([0, 3], np.int32), np.array([n - 2 * page_size], np.int32)
    assert np.array_equal(gather_kv(pages, indptr, table, last, 0)[0], k)
    out, lse = reference(q, pages, indptr, table, last, 0.3)
    for h in range(heads):
        scores = k[:, h // 2] @ q[0, h] * 0.3
        weights = np.exp(scores - scores.max())
        np.testing.assert_allclose(out[0, h], weights @ v[:, h // 2] / weights.sum(), rtol=1e-12)
        np.testing.assert_allclose(lse[0, h], np.log(np.exp(scores).sum()) * LOG2E, rtol=1e-12)


@pytest.mark.parametrize("batch", [1, 3, 16, 32, 128])
def test_split_plan_int_and_tir_agree(batch):
    plan = SplitPlan()
    var = tirx.Var("b", "int32")
    analyzer = tvm.sym.Analyzer()
    analyzer.bind(var, batch)
    assert int(analyzer.simplify(plan.num_splits(var, 32))) == plan.num_splits(batch, 32)
    assert plan.num_splits(batch, 32) * batch * 32 >= min(plan.target_blocks, plan.max_splits * batch * 32)
    for n in (1, 31, 32, 33, 128, 2048, 4099):
        splits = plan.num_splits(batch, 32)
        per = plan.range_len(n, splits)
        assert per % plan.chunk == 0 and -(-n // per) <= splits  # the ranges cover the sequence


def test_split_plan_values():
    plan = SplitPlan()
    assert [plan.num_splits(b, 32) for b in (1, 16, 32, 128)] == [32, 2, 1, 1]
    assert plan.range_len(128, 32) == 32 and plan.range_len(2048, 32) == 64 and plan.range_len(0, 32) == 32


@pytest.mark.parametrize("op", [LLAMA2, DecodeAttentionOp(32, 8, 128), DecodeAttentionOp(3, 1, 32),
                                DecodeAttentionOp(64, 8, 128), GQA],
                         ids=["llama2", "llama3", "odd", "group8", "gqa4"])
def test_cuda_kernel_builds_for_sm90_with_pdl(op):
    assert supports(op)
    built = build_module(decode_attention_cuda(op).with_attr("global_symbol", "main"), cuda_target("sm_90"),
                         binary=False)
    source = built.device_code()[0].data.decode()
    assert source.count("__global__ void") >= 2  # partial and merge kernels
    assert source.count("cudaGridDependencySynchronize();") == 2  # PDL: our codegen pipeline's prologue
    binary = build_module(decode_attention_cuda(op).with_attr("global_symbol", "main"), cuda_target("sm_90"))
    assert binary.arch == "sm_90" and binary.device_code()[0].format in ("fatbin", "cubin")


def test_unsupported_shapes_are_reported():
    assert not supports(DecodeAttentionOp(4, 4, 36))  # head_dim not a multiple of 8
    assert not supports(DecodeAttentionOp(4, 4, 64, "float32"))
    with pytest.raises(ValueError, match="chunk"):
        decode_attention_cuda(GQA, DecodeAttentionConfig(plan=SplitPlan(chunk=16)))
    with pytest.raises(ValueError, match="multiple"):
        DecodeAttentionOp(6, 4, 64)


@pytest.fixture(scope="module")
def tiny_graphs():
    from lowbit_tvm.models.builder import graph  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.models.config import get_preset  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.models.recipe import ModelRecipe  # pylint: disable=import-outside-toplevel

    recipe = ModelRecipe(get_preset("tiny"), "fp16", "float16")
    return {kind: graph(recipe, target)[1]
            for kind, target in (("cuda", cuda_target("sm_90")), ("llvm", tvm.target.Target({"kind": "llvm"})))}


def test_llama_graph_takes_our_kernel_on_cuda_only(tiny_graphs):
    from lowbit_tvm.models.config import get_preset  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.models.llama import DECODE_ATTENTION  # pylint: disable=import-outside-toplevel

    cfg = get_preset("tiny")
    ours = decode_attention_cuda(DecodeAttentionOp(cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim))
    ours = ours.with_attr("global_symbol", DECODE_ATTENTION)
    cuda, llvm = tiny_graphs["cuda"], tiny_graphs["llvm"]
    assert structural_equal(cuda[cuda.get_global_var(DECODE_ATTENTION)], ours)
    cpu_names = [g.name_hint for g in llvm.get_global_vars()]
    assert DECODE_ATTENTION not in cpu_names and "batch_decode_paged_kv_cpu" in cpu_names  # TVM's CPU kernel
