"""Our paged decode attention on the GPU: vs a float64 reference, vs TVM's kernel, and inside the Llama graph."""
import numpy as np
import pytest

from lowbit_tvm.codegen import build_module
from lowbit_tvm.ops.decode_attention import EMPTY_LSE, DecodeAttentionOp, random_paged_inputs, reference
from lowbit_tvm.schedules.decode_attention import decode_attention_cuda
from lowbit_tvm.tvm_api import kv_cache

from test_decode_attention import ARGS
from test_llama_cpu import check_decode_matches_scoring, random_weights, rel

pytestmark = pytest.mark.gpu

OPS = {
    "llama2": DecodeAttentionOp(32, 32, 128),
    "llama3": DecodeAttentionOp(32, 8, 128),
    "odd": DecodeAttentionOp(3, 1, 32),
    "group8": DecodeAttentionOp(64, 8, 128),
}
SEQ_LENS = {
    1: [[1], [7], [300], [1031], [2048]],
    5: [[1, 7, 0, 300, 1031]],
    16: [[int(n) for n in np.random.default_rng(0).integers(0, 700, 16)]],
    40: [[int(n) for n in np.random.default_rng(1).integers(1, 300, 40)]],  # one range per sequence
}


def _run(lib, op, inputs, sm_scale):
    import torch  # pylint: disable=import-outside-toplevel
    import tvm_ffi  # pylint: disable=import-outside-toplevel

    batch = len(inputs["page_indptr"]) - 1
    args = [torch.from_numpy(inputs[k]).cuda() for k in ARGS]
    out = torch.full((batch, op.num_q_heads, op.head_dim), float("nan"), dtype=torch.float16, device="cuda")
    lse = torch.full((batch, op.num_q_heads), float("nan"), dtype=torch.float32, device="cuda")
    lib["main"](*[tvm_ffi.from_dlpack(a) for a in args + [out, lse]], 0, 1.0, 1e4, sm_scale)
    torch.cuda.synchronize()
    return out.cpu().numpy(), lse.cpu().numpy()


@pytest.fixture(scope="module")
def libs():
    from lowbit_tvm.kernel import default_target  # pylint: disable=import-outside-toplevel

    target = default_target()
    built = {}
    for name, op in OPS.items():
        ours = build_module(decode_attention_cuda(op).with_attr("global_symbol", "main"), target)
        # pylint: disable-next=protected-access
        tvms = kv_cache._attention_decode(op.num_kv_heads, op.num_q_heads, op.head_dim, op.dtype, False, {}, target)
        built[name] = (ours, build_module(tvms.with_attr("global_symbol", "main"), target))
    return built


@pytest.mark.parametrize("name", list(OPS))
@pytest.mark.parametrize("batch", list(SEQ_LENS))
def test_gpu_kernel_matches_float64_and_tvm(libs, name, batch):
    op = OPS[name]
    ours, tvms = libs[name]
    sm_scale = op.head_dim ** -0.5
    for seq_lens in SEQ_LENS[batch]:
        inputs = random_paged_inputs(op, seq_lens, seed=batch + len(seq_lens))
        out, lse = _run(ours, op, inputs, sm_scale)
        ref_out, ref_lse = reference(inputs["q"], inputs["pages"], inputs["page_indptr"], inputs["page_values"],
                                     inputs["last_page_len"], sm_scale)
        assert np.isfinite(out).all() and np.isfinite(lse).all(), seq_lens
        err = np.abs(out.astype(np.float64) - ref_out).max()
        assert err < 2e-3 * max(1.0, np.abs(ref_out).max()), (seq_lens, err)
        assert np.abs(lse - ref_lse).max() < 1e-3, seq_lens
        empty = [i for i, n in enumerate(seq_lens) if n == 0]
        assert (out[empty] == 0).all() and (lse[empty] == EMPTY_LSE).all()
        # TVM's kernel on the same pages: same outputs and the same lse convention
        tvm_out, tvm_lse = _run(tvms, op, inputs, sm_scale)
        full = [i for i, n in enumerate(seq_lens) if n > 0]
        assert np.abs(out[full].astype(np.float32) - tvm_out[full]).max() < 4e-3
        assert np.abs(lse[full] - tvm_lse[full]).max() < 1e-3




@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    from lowbit_tvm import load  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.kernel import default_target  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.models.builder import save_model  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.models.config import LlamaConfig  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.models.recipe import ModelRecipe  # pylint: disable=import-outside-toplevel

    config = LlamaConfig(hidden_size=256, intermediate_size=384, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=300, tie_word_embeddings=True)
    path = save_model(tmp_path_factory.mktemp("attn") / "gqa64.so", ModelRecipe(config, "fp16", "float16"),
                      random_weights(config, 5), default_target())
    return load(path)


def test_llama_decode_with_our_kernel_matches_scoring(engine):
    check_decode_matches_scoring(engine, engine.config.vocab_size, 4, 1e-2)


@pytest.mark.parametrize("batch,context", [(1, 700), (3, 700), (16, 300)])
def test_llama_decode_long_context_matches_scoring(engine, batch, context):
    """A decode step after ``context`` tokens (many chunks and ranges) vs scoring the same tokens."""
    step = engine.decode_step_fn(batch=batch, context=context)
    rows = step().float().cpu().numpy()[:, 0]
    single = engine.score(np.zeros(context + 1, dtype=np.int64))[-1]
    for row in rows:
        assert rel(row, single) < 1e-2
