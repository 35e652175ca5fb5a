"""The Relax Llama built for CUDA (our W4A16 tensor-core kernel in the graph) on the GPU vs HF transformers."""
import numpy as np
import pytest

from lowbit_tvm import load
from lowbit_tvm.models.builder import save_model
from lowbit_tvm.models.recipe import ModelRecipe

from test_llama_cpu import ODD, check_decode_matches_scoring, dequantized, hf_logits, random_weights, rel

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def engine_and_weights(tmp_path_factory):
    from lowbit_tvm.kernel import default_target  # pylint: disable=import-outside-toplevel

    weights = random_weights(ODD, 11)
    path = save_model(tmp_path_factory.mktemp("gpu") / "odd.so", ModelRecipe(ODD, "w4a16-g64", "float16"),
                      weights, default_target())
    return load(path), weights


def test_w4a16_graph_on_the_gpu_matches_dequantized_hf(engine_and_weights):
    engine, weights = engine_and_weights
    assert engine.device.type == "cuda"
    for seed, length in ((0, 1), (1, 17), (2, 70)):
        ids = np.random.default_rng(seed).integers(0, ODD.vocab_size, length)
        # fp16 activations and KV cache through the whole graph: about 1e-3
        assert rel(engine.score(ids), hf_logits(ODD, dequantized(weights, "w4a16-g64"), ids)) < 1e-2


def test_decode_on_the_gpu_matches_scoring(engine_and_weights):
    engine, _ = engine_and_weights
    check_decode_matches_scoring(engine, ODD.vocab_size, 3, 1e-2)
