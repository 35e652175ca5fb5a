"""BCQ linear layers in the Relax Llama (llvm target) and their CUDA functions (built for sm_90, no GPU).

The reference is HF transformers on the BCQ-dequantized weights, so the comparison isolates the graph and
its two BCQ paths (LUT-GEMM for single-token decode, decode-in-matmul elsewhere) from the quantization error.
"""
import numpy as np
import pytest

from lowbit_tvm import load
from lowbit_tvm.codegen import build_module
from lowbit_tvm.codegen.target import cuda_target
from lowbit_tvm.errors import QuantizationError
from lowbit_tvm.models.bcq_linear import BCQLinear
from lowbit_tvm.models.builder import save_model
from lowbit_tvm.models.config import ModelConfigError
from lowbit_tvm.models.recipe import ModelRecipe
from lowbit_tvm.models.weight_schemes import weight_scheme
from lowbit_tvm.quant import bcq_dequantize, bcq_quantize
from lowbit_tvm.tvm_api import tvm

from test_llama_cpu import LLVM, ODD, check_decode_matches_scoring, hf_logits, random_weights, rel, word_checkpoint

SCHEME = "bcq3-g64"


def bcq_dequantized(weights: dict, skip=("lm_head",)) -> dict:
    """The weights a BCQ graph effectively uses (linear layers quantized and dequantized, K padded as the
    layers pad it)."""
    scheme = weight_scheme(SCHEME)
    out = {}
    for name, array in weights.items():
        if not name.endswith("_proj.weight") or any(s in name for s in skip):
            out[name] = array
            continue
        k = array.shape[1]
        full = np.pad(array, ((0, 0), (0, scheme.padded_k(k) - k)))
        out[name] = bcq_dequantize(bcq_quantize(full, scheme))[:, :k]
    return out


@pytest.fixture(scope="module")
def odd_bcq(tmp_path_factory):
    weights = random_weights(ODD, 5)
    path = save_model(tmp_path_factory.mktemp("bcq") / "odd.so", ModelRecipe(ODD, SCHEME, "float32"), weights, LLVM)
    return weights, path


def test_bcq_graph_matches_dequantized_hf(odd_bcq):
    weights, path = odd_bcq
    ids = np.random.default_rng(6).integers(0, ODD.vocab_size, 23)
    ours = load(path).score(ids)
    reference = hf_logits(ODD, bcq_dequantized(weights), ids)
    assert rel(ours, reference) < 5e-3
    assert rel(ours, hf_logits(ODD, weights, ids)) > 10 * rel(ours, reference)


def test_bcq_decode_one_uses_the_lut_kernel_and_agrees_with_scoring(odd_bcq):
    """Greedy decode runs ``decode_one`` (the LUT-GEMM path); its tokens are the argmax of full scoring."""
    _, path = odd_bcq
    engine = load(path)
    prompt = list(np.random.default_rng(7).integers(0, ODD.vocab_size, 9))
    new = engine.generate_ids(prompt, 5)
    logits = engine.score(prompt + new[:-1])
    assert [int(t) for t in np.argmax(logits[len(prompt) - 1:], axis=-1)] == new


@pytest.mark.parametrize("hint", [1, 16, 64])
def test_bcq_layer_functions_build_for_sm90(hint):
    from lowbit_tvm.models.rows_hint import rows_hint  # pylint: disable=import-outside-toplevel

    target = cuda_target("sm_90")
    layer = BCQLinear(96, 160, weight_scheme("bcq4-g32"), target)
    with rows_hint(hint):
        func, name = layer._lut_function() if hint == 1 else layer._matmul_function(hint)  # pylint: disable=protected-access
    assert ("_m1_" in name) == (hint == 1)
    build_module(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target)


def test_bcq_bad_input_is_named():
    layer = BCQLinear(96, 160, weight_scheme(SCHEME), LLVM)
    with pytest.raises(ModelConfigError, match="does not fit"):
        layer.pack(np.zeros((160, 95), np.float32))
    with pytest.raises(ModelConfigError, match="does not fit"):
        layer.pack(bcq_quantize(np.zeros((160, 64), np.float32), weight_scheme(SCHEME)))
    with pytest.raises(QuantizationError, match="unknown weight scheme"):
        weight_scheme("bcq5-g128")


@pytest.fixture(scope="module")
def gpu_bcq(tmp_path_factory):
    from lowbit_tvm.kernel import default_target  # pylint: disable=import-outside-toplevel

    weights = random_weights(ODD, 12)
    path = save_model(tmp_path_factory.mktemp("bcq_gpu") / "odd.so", ModelRecipe(ODD, SCHEME, "float16"), weights,
                      default_target())
    return load(path), weights


@pytest.mark.gpu
def test_bcq_graph_on_the_gpu_matches_dequantized_hf(gpu_bcq):
    engine, weights = gpu_bcq
    assert engine.device.type == "cuda"
    reference_weights = bcq_dequantized(weights)
    for seed, length in ((0, 1), (1, 17), (2, 70)):
        ids = np.random.default_rng(seed).integers(0, ODD.vocab_size, length)
        assert rel(engine.score(ids), hf_logits(ODD, reference_weights, ids)) < 1e-2


@pytest.mark.gpu
def test_bcq_lut_decode_on_the_gpu_agrees_with_scoring(gpu_bcq):
    engine, _ = gpu_bcq
    check_decode_matches_scoring(engine, ODD.vocab_size, 13, 1e-2)


def test_aware_bcq_checkpoint_packs_into_the_graph_and_beats_plain_bcq_on_its_inputs():
    from lowbit_tvm.models.builder import graph  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.models.checkpoints import with_aware_bcq  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.models.hf_reference import linear_inputs  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.models.quantize import pack_weights  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.quant import BCQWeight  # pylint: disable=import-outside-toplevel
    from tokenizers import Tokenizer  # pylint: disable=import-outside-toplevel

    checkpoint, text = word_checkpoint(ODD, 21, 21, 300)
    scheme = weight_scheme(SCHEME)
    out = with_aware_bcq(checkpoint, scheme, skip=("lm_head", "*.down_proj"), text=text, iterations=3)
    fitted = {name for name, value in out.weights.items() if isinstance(value, BCQWeight)}
    expected = {f"model.layers.{i}.{layer}.weight" for i in range(ODD.num_hidden_layers)
                for layer in ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj")}
    assert fitted == expected
    assert "model.layers.0.self_attn.q_proj.weight" not in out.weights  # replaced by the fused fit
    assert isinstance(out.weights["model.layers.0.mlp.down_proj.weight"], np.ndarray)  # skipped: float
    model, _, names = graph(ModelRecipe(ODD, SCHEME, "float32", ("lm_head", "*.down_proj")), LLVM)
    assert len(pack_weights(model, out.weights, names, "float32")) == len(names)
    # On its calibration inputs the activation-weighted fit has the smaller output error.
    ids = Tokenizer.from_str(checkpoint.tokenizer_json).encode(text).ids
    name = "model.layers.1.mlp.gate_proj.weight"
    x = linear_inputs(ODD.to_json(), checkpoint.weights, ids, ("gate_proj",))[name]
    weight = np.concatenate([checkpoint.weights[name], checkpoint.weights[name.replace("gate", "up")]])
    k = weight.shape[1]
    plain = bcq_dequantize(bcq_quantize(np.pad(weight, ((0, 0), (0, scheme.padded_k(k) - k))), scheme, 3))
    aware = bcq_dequantize(out.weights["model.layers.1.mlp.gate_up_proj.weight"])
    errors = [np.linalg.norm(x @ (weight - w[:, :k]).T) for w in (plain, aware)]
    assert errors[1] < errors[0]


def test_cli_takes_awq_for_bcq_schemes_and_refuses_gptq():
    from argparse import Namespace  # pylint: disable=import-outside-toplevel

    from lowbit_tvm.cli import _calibration_scheme  # pylint: disable=import-outside-toplevel

    args = Namespace(scheme="bcq3-g128", awq=True, gptq=False, gptq_windows=32)
    assert _calibration_scheme(args) == weight_scheme("bcq3-g128")
    with pytest.raises(ModelConfigError, match="--awq alone makes that fit activation-aware"):
        _calibration_scheme(Namespace(scheme="bcq3-g128", awq=True, gptq=True, gptq_windows=32))
