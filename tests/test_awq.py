"""Activation-aware scaling: the float model is unchanged, and RTN int4 loses less where activations have outliers."""
import numpy as np
import pytest

from lowbit_tvm.quant import get_scheme
from lowbit_tvm.models.hf_reference import linear_inputs
from lowbit_tvm.quant.awq import GROUP_INPUTS, awq_transform, rtn_reconstruction, search_scale

from test_llama_cpu import ODD, hf_logits, random_weights, rel

torch = pytest.importorskip("torch")


def _outlier_inputs(tokens, k, rng, outliers=4):
    x = rng.standard_normal((tokens, k))
    x[:, rng.choice(k, outliers, replace=False)] *= 30.0
    return x


def test_search_never_loses_to_rtn_and_wins_with_outlier_channels():
    rng = np.random.default_rng(0)
    scheme = get_scheme("w4a16-g64")
    w = rng.standard_normal((96, 192)).astype(np.float32)
    x = _outlier_inputs(256, 192, rng)
    scale, alpha, error, rtn_error = search_scale(x, w, scheme)
    assert error <= rtn_error
    assert alpha > 0 and error < 0.8 * rtn_error, (alpha, error, rtn_error)
    # the error it reports is the real one
    approx = rtn_reconstruction((w * scale).astype(np.float32), scheme) / scale
    assert abs(np.linalg.norm(x @ approx.T - x @ w.T) / np.linalg.norm(x @ w.T) - error) < 1e-6


def test_transform_keeps_the_float_model_and_reports_each_group():
    weights = random_weights(ODD, 5)
    rng = np.random.default_rng(1)
    ids = rng.integers(0, ODD.vocab_size, 40)
    inputs = linear_inputs(ODD.to_json(), weights, ids, GROUP_INPUTS)
    scaled, choices = awq_transform(weights, ODD.num_hidden_layers, inputs, get_scheme("w4a16-g32"), grid=10)
    assert len(choices) == 3 * ODD.num_hidden_layers
    assert all(c.error <= c.rtn_error for c in choices)
    assert any(c.alpha > 0 for c in choices)
    changed = [name for name in weights if not np.array_equal(weights[name], scaled[name])]
    assert "model.layers.0.input_layernorm.weight" in changed and "model.layers.1.mlp.down_proj.weight" in changed
    assert all("o_proj" not in name and "embed" not in name for name in changed)
    other = rng.integers(0, ODD.vocab_size, 33)
    assert rel(hf_logits(ODD, scaled, other), hf_logits(ODD, weights, other)) < 1e-5


def test_real_checkpoint_with_awq_scales_is_the_same_float_model():
    from lowbit_tvm.models.checkpoints import load_checkpoint, with_awq_scales  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.models.hf_reference import hf_llama_from  # pylint: disable=import-outside-toplevel

    checkpoint = load_checkpoint("smollm2-135m")
    scaled = with_awq_scales(checkpoint, get_scheme("w4a16-g128"), tokens=64, grid=4)
    assert scaled.config == checkpoint.config and scaled.tokenizer_json == checkpoint.tokenizer_json
    ids = torch.tensor([[1, 504, 3458, 282, 4649, 314]])
    with torch.no_grad():
        before = hf_llama_from(checkpoint.config.to_json(), checkpoint.weights)(ids).logits.numpy()
        after = hf_llama_from(scaled.config.to_json(), scaled.weights)(ids).logits.numpy()
    assert rel(after, before) < 1e-4
    norm = "model.layers.3.post_attention_layernorm.weight"
    assert not np.array_equal(scaled.weights[norm], checkpoint.weights[norm])


def test_clipping_lowers_the_output_error_per_group():
    from lowbit_tvm.quant import dequantize, quantize  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.quant.awq import clip_grid  # pylint: disable=import-outside-toplevel

    rng = np.random.default_rng(3)
    w = rng.standard_t(3, (64, 256))  # heavy tails: a few large weights stretch each group's range
    x = rng.standard_normal((512, 256))
    h = x.T @ x
    for name in ("w4a16-g64", "w4a16-g128-asym"):
        scheme = get_scheme(name)
        clipped = clip_grid(w, h, scheme)
        errors = [np.linalg.norm(x @ (w - dequantize(qw)).T) for qw in (clipped, quantize(w, scheme))]
        assert errors[0] < 0.97 * errors[1], (name, errors)  # 4-5 % lower here
        assert np.all(clipped.scales <= quantize(w, scheme).scales)  # ranges only shrink


GQA = ODD.__class__(hidden_size=64, intermediate_size=96, num_hidden_layers=1, num_attention_heads=4,
                    num_key_value_heads=2, vocab_size=120, tie_word_embeddings=True)


def test_o_proj_scale_is_tied_per_kv_head_and_folded_into_v():
    from lowbit_tvm.quant.awq import scale_layer, tie_heads  # pylint: disable=import-outside-toplevel

    weights = random_weights(GQA, 11)
    v = "model.layers.0.self_attn.v_proj.weight"
    weights[v][[3, 21]] *= 25.0  # two value dims per kv head give the attention output outlier channels
    rng = np.random.default_rng(4)
    ids = rng.integers(0, GQA.vocab_size, 48)
    kinds = (*GROUP_INPUTS, "o_proj")
    inputs = linear_inputs(GQA.to_json(), weights, ids, kinds)
    stats = {f"{group}": ("inputs", inputs[f"model.layers.0.{group}.weight"], None)
             for group in ("self_attn.q_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.down_proj")}
    scaled = dict(weights)
    choices = scale_layer(scaled, "model.layers.0.", stats, get_scheme("w4a16-g32"), grid=10, heads=(4, 2))
    assert [c.layers[0].split(".")[-2] for c in choices] == ["q_proj", "o_proj", "gate_proj", "down_proj"]
    o_choice = choices[1]
    assert o_choice.alpha > 0 and o_choice.error < o_choice.rtn_error
    per_head = o_choice.scale.reshape(2, 2, 16)  # [kv head, query heads sharing it, head dim]
    assert np.array_equal(per_head[:, 0], per_head[:, 1]) and not np.allclose(per_head[0, 0], per_head[1, 0])
    assert np.array_equal(tie_heads(np.arange(64.0), 4, 2)[:16], np.arange(8.0, 24.0))  # heads 0, 1 -> kv head 0
    other = rng.integers(0, GQA.vocab_size, 37)
    assert rel(hf_logits(GQA, scaled, other), hf_logits(GQA, weights, other)) < 1e-5
    # the kv heads' scales folded the other way round change the model
    swapped = per_head[::-1, 0].reshape(-1, 1)
    wrong = dict(scaled, **{v: (weights[v] * choices[0].scale / swapped).astype(np.float32)})
    assert rel(hf_logits(GQA, wrong, other), hf_logits(GQA, weights, other)) > 1e-3
