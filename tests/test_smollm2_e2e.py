"""The real SmolLM2-135M through our Relax graph on the CPU (shortened: one window of 48 tokens).

The fp reference (the dequantized GGUF in our graph, llvm target) is checked against an independent
implementation, HF transformers' ``LlamaForCausalLM`` with the same weights, to 1e-3 relative on logits;
the W4A16 build is checked to generate the same greedy answer.
"""
import numpy as np
import pytest

from lowbit_tvm import load
from lowbit_tvm.models.builder import save_model
from lowbit_tvm.models.checkpoints import load_checkpoint
from lowbit_tvm.models.corpus import lee_corpus_text
from lowbit_tvm.models.hf_reference import hf_llama_from
from lowbit_tvm.models.recipe import ModelRecipe
from lowbit_tvm.tvm_api import tvm

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

LLVM = tvm.target.Target({"kind": "llvm"})


@pytest.fixture(scope="module")
def checkpoint():
    return load_checkpoint("smollm2-135m")


@pytest.fixture(scope="module")
def fp32_engine(checkpoint, tmp_path_factory):
    path = tmp_path_factory.mktemp("smol") / "smollm2_fp32.so"
    recipe = ModelRecipe(checkpoint.config, "fp32", "float32")
    return load(save_model(path, recipe, checkpoint.weights, LLVM, tokenizer_json=checkpoint.tokenizer_json,
                           eos_token_id=checkpoint.eos_token_id))


def test_fp_graph_matches_hf_transformers_on_real_text(checkpoint, fp32_engine):
    ids = fp32_engine.tokenizer.encode(lee_corpus_text()).ids[:48]
    ours = fp32_engine.score(ids)
    with torch.no_grad():
        hf = hf_llama_from(checkpoint.config.to_json(), checkpoint.weights)
        reference = hf(torch.tensor([ids])).logits[0].numpy()
    assert np.linalg.norm(ours - reference) / np.linalg.norm(reference) < 1e-3


def test_greedy_generation_reads_as_sense(fp32_engine):
    assert "Paris" in fp32_engine.generate("The capital of France is", 4)


def test_generation_stops_at_the_checkpoints_end_token(checkpoint, fp32_engine):
    eos = checkpoint.eos_token_id
    assert fp32_engine.eos_token_id == eos
    assert fp32_engine.tokenizer.id_to_token(eos) == "<|im_end|>"  # what SmolLM2's GGUF declares (not <|endoftext|>)
    prompt = fp32_engine.tokenizer.encode("Hello").ids
    free = fp32_engine.generate_ids(prompt, 6)
    stopped = fp32_engine.generate_ids(prompt, 6, stop_ids=(free[1],))
    assert stopped == free[:2]
