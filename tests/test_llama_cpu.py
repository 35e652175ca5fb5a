"""The Relax Llama end to end on the CPU (llvm target): built, saved, loaded in a fresh process, run.

References are HF transformers' ``LlamaForCausalLM`` with the same weights (for W4A16: the dequantized
weights, so the comparison isolates the graph and the kernel from the quantization error).
"""
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

from lowbit_tvm import load
from lowbit_tvm.errors import LibraryError, ModelError
from lowbit_tvm.models.builder import save_model
from lowbit_tvm.models.config import LlamaConfig, ModelConfigError, get_preset
from lowbit_tvm.models.hf_reference import hf_llama_from
from lowbit_tvm.models.recipe import DECODE_MAX_BATCH, ModelRecipe
from lowbit_tvm.quant import dequantize, get_scheme, quantize
from lowbit_tvm.tvm_api import tvm

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

LLVM = tvm.target.Target({"kind": "llvm"})
# K = 96 and 160 are not multiples of the group (64): the W4A16 layers pad K.
ODD = LlamaConfig(hidden_size=96, intermediate_size=160, num_hidden_layers=2, num_attention_heads=3,
                  num_key_value_heads=1, vocab_size=300, tie_word_embeddings=True)


def random_weights(config: LlamaConfig, seed: int) -> dict:
    """HF-named float32 weights of a random model (what an HF checkpoint would hold)."""
    names = transformers.LlamaForCausalLM(transformers.LlamaConfig(**config.to_json())).state_dict()
    rng = np.random.default_rng(seed)
    weights = {}
    for name, param in names.items():
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue  # the embeddings serve as the head
        shape = tuple(param.shape)
        scale = 1.0 if "norm" in name else 0.08
        base = 1.0 if "norm" in name else 0.0
        weights[name] = (base + scale * rng.standard_normal(shape)).astype(np.float32)
    return weights


def word_checkpoint(config: LlamaConfig, weights_seed: int, text_seed: int, length: int):
    """A random checkpoint of ``config`` with a word-level tokenizer (``w0``, ``w1``, ...), and a random text of
    ``length`` of its words (for calibration paths that tokenize a text)."""
    from tokenizers import Tokenizer, models, pre_tokenizers  # pylint: disable=import-outside-toplevel

    from lowbit_tvm.models.checkpoints import Checkpoint  # pylint: disable=import-outside-toplevel

    words = [f"w{i}" for i in range(config.vocab_size - 1)]
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["<unk>"] + words)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    text = " ".join(np.random.default_rng(text_seed).choice(words, length))
    return Checkpoint(config, random_weights(config, weights_seed), tokenizer.to_str()), text


def hf_logits(config: LlamaConfig, weights: dict, ids) -> np.ndarray:
    """float32 logits [len, vocab] of HF transformers' Llama."""
    model = hf_llama_from(config.to_json(), weights)
    with torch.no_grad():
        return model(torch.as_tensor(np.asarray(ids)[None], dtype=torch.long)).logits[0].numpy()


def dequantized(weights: dict, scheme_name: str, skip=("lm_head",)) -> dict:
    """The weights a W4A16 graph effectively uses (linear layers quantized and dequantized)."""
    scheme = get_scheme(scheme_name)
    out = {}
    for name, array in weights.items():
        is_linear = name.endswith("_proj.weight") and not any(s in name for s in skip)
        if not is_linear:
            out[name] = array
            continue
        k = array.shape[1]
        padded = -(-k // 64) * 64
        full = np.pad(array, ((0, 0), (0, padded - k)))
        out[name] = dequantize(quantize(full, scheme)).astype(np.float32)[:, :k]
    return out


def rel(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def check_decode_matches_scoring(engine, vocab_size: int, seed: int, tol: float) -> None:
    """Greedy decode (``decode_one``) picks the argmax of full scoring, and a batched decode step's logits
    match single-sequence scoring to ``tol``."""
    prompt = list(np.random.default_rng(seed).integers(0, vocab_size, 9))
    new = engine.generate_ids(prompt, 5)
    logits = engine.score(prompt + new[:-1])
    assert [int(t) for t in np.argmax(logits[len(prompt) - 1:], axis=-1)] == new
    step = engine.decode_step_fn(batch=5, context=6)
    batched = step().float().cpu().numpy()
    single = engine.score(np.zeros(7, dtype=np.int64))[-1]
    for row in batched[:, 0]:
        assert rel(row, single) < tol


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    config = get_preset("tiny")
    weights = random_weights(config, 0)
    path = save_model(tmp_path_factory.mktemp("tiny") / "tiny.so", ModelRecipe(config, "fp32", "float32"),
                      weights, LLVM)
    return config, weights, path


@pytest.fixture(scope="module")
def odd_w4a16(tmp_path_factory):
    weights = random_weights(ODD, 1)
    path = save_model(tmp_path_factory.mktemp("odd") / "odd.so", ModelRecipe(ODD, "w4a16-g64", "float32"),
                      weights, LLVM)
    return weights, path


def test_fp32_graph_matches_hf(tiny):
    config, weights, path = tiny
    ids = np.random.default_rng(2).integers(0, config.vocab_size, 37)
    ours = load(path).score(ids)
    assert ours.shape == (37, config.vocab_size)
    assert rel(ours, hf_logits(config, weights, ids)) < 1e-4


def test_w4a16_graph_matches_dequantized_hf(odd_w4a16):
    weights, path = odd_w4a16
    ids = np.random.default_rng(3).integers(0, ODD.vocab_size, 29)
    ours = load(path).score(ids)
    reference = hf_logits(ODD, dequantized(weights, "w4a16-g64"), ids)
    unquantized = hf_logits(ODD, weights, ids)
    # fp16 activations into the kernel: ~1e-3; the quantization itself moves the logits far more.
    assert rel(ours, reference) < 5e-3
    assert rel(ours, unquantized) > 10 * rel(ours, reference)


def test_greedy_decode_through_the_cache_matches_full_scoring(tiny):
    config, _, path = tiny
    engine = load(path)
    prompt = list(np.random.default_rng(4).integers(0, config.vocab_size, 11))
    new = engine.generate_ids(prompt, 6)
    assert len(new) == 6
    logits = engine.score(prompt + new[:-1])
    assert [int(t) for t in np.argmax(logits[len(prompt) - 1:], axis=-1)] == new


def test_batched_decode_matches_single_sequence(tiny):
    config, _, path = tiny
    engine = load(path)
    step = engine.decode_step_fn(batch=3, context=7)
    logits = step().cpu().numpy()
    assert logits.shape == (3, 1, config.vocab_size)
    expected = engine.score(np.zeros(8, dtype=np.int64))[-1]
    for row in logits[:, 0]:
        assert rel(row, expected) < 1e-5
    with pytest.raises(ModelError, match=f"at most {DECODE_MAX_BATCH} sequences"):
        engine.decode_step_fn(batch=DECODE_MAX_BATCH + 1, context=1)


def test_library_loads_in_a_fresh_process_without_the_compiler(tiny):
    config, weights, path = tiny
    code = (
        "import sys, numpy as np, lowbit_tvm\n"
        f"e = lowbit_tvm.load({str(path)!r})\n"
        "print(float(e.score(np.arange(5))[2, 7]))\n"
        "assert 'tvm' not in sys.modules, 'the tvm compiler package was imported'\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    expected = hf_logits(config, weights, np.arange(5))[2, 7]
    assert abs(float(out.stdout.strip().splitlines()[-1]) - expected) < 1e-4 * max(1.0, abs(expected))


def test_bad_input_is_named(tiny, tmp_path):
    config, weights, path = tiny
    with pytest.raises(ModelConfigError, match="unknown model preset 'llama-9'.*smollm2-135m"):
        get_preset("llama-9")
    wrong = dict(weights, **{"model.norm.weight": np.ones(7, np.float32)})
    with pytest.raises(ModelConfigError, match="model.norm.weight has shape"):
        save_model(tmp_path / "bad.so", ModelRecipe(config, "fp32", "float32"), wrong, LLVM)
    missing = {k: v for k, v in weights.items() if "layers.1.mlp.up_proj" not in k}
    with pytest.raises(ModelConfigError, match="layers.1.mlp.up_proj.weight is missing"):
        save_model(tmp_path / "bad.so", ModelRecipe(config, "fp32", "float32"), missing, LLVM)
    assert not list(tmp_path.iterdir()), "a failed build left files behind"
    with pytest.raises(LibraryError, match="refusing to overwrite"):
        save_model(path, ModelRecipe(config, "fp32", "float32"), weights, LLVM)
    lonely = tmp_path / "lonely.so"
    lonely.write_bytes(path.read_bytes())
    with pytest.raises(LibraryError, match="weights file .* is missing"):
        load(lonely)


def test_quantized_weights_of_the_wrong_shape_are_refused(tmp_path):
    weights = random_weights(ODD, 5)
    weights["model.layers.0.mlp.down_proj.weight"] = np.zeros((96, 150), np.float32)
    with pytest.raises(ModelConfigError, match=r"\(96, 150\) does not fit a 160->96 layer"):
        save_model(tmp_path / "bad.so", ModelRecipe(ODD, "w4a16-g64", "float32"), weights, LLVM)


def test_config_round_trip():
    config = replace(get_preset("llama-3-8b"))
    recipe = ModelRecipe(config, "w4a16-g128", "float16")
    assert ModelRecipe.from_json(recipe.to_json()) == recipe
    assert config.head_dim == 128
