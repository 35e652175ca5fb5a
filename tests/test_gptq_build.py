"""GPTQ in the build path: layer-by-layer calibration of a tiny Llama, its QuantizedWeights packed as they are."""
import numpy as np
import pytest

from lowbit_tvm import load
from lowbit_tvm.cli import main
from lowbit_tvm.models.builder import graph, save_model
from lowbit_tvm.models.calibration import CalibrationRecipe, calibrate, calibration_windows, dequantized
from lowbit_tvm.models.config import ModelConfigError
from lowbit_tvm.models.quantize import pack_weights
from lowbit_tvm.models.recipe import ModelRecipe
from lowbit_tvm.quant import Int4Scheme, QuantizedWeight, get_scheme, quantize

from test_llama_cpu import LLVM, ODD, dequantized as rtn_dequantized, hf_logits, random_weights, rel, word_checkpoint

torch = pytest.importorskip("torch")

SCHEME = "w4a16-g64-asym"


def _windows(seed=0, count=6, length=48):
    ids = np.random.default_rng(seed).integers(0, ODD.vocab_size, count * length)
    return calibration_windows(ids, count, length)


@pytest.fixture(scope="module")
def calibrated():
    weights = random_weights(ODD, 7)
    recipe = CalibrationRecipe(get_scheme(SCHEME), awq=True, clip=True, act_order=True)
    return weights, calibrate(ODD.to_json(), weights, _windows(), recipe)


def test_calibration_quantizes_every_decoder_linear_and_beats_rtn_on_its_text(calibrated):
    weights, out = calibrated
    linears = [name for name in weights if name.endswith("_proj.weight")]
    assert len(linears) == 7 * ODD.num_hidden_layers
    assert all(isinstance(out[name], QuantizedWeight) and out[name].scheme == get_scheme(SCHEME) for name in linears)
    assert out["model.layers.1.mlp.down_proj.weight"].shape == (96, 192)  # K 160 padded to whole groups
    ids = _windows(0)[0]
    reference = hf_logits(ODD, weights, ids)
    ours = rel(hf_logits(ODD, dequantized(out, weights), ids), reference)
    rtn = rel(hf_logits(ODD, rtn_dequantized(weights, SCHEME), ids), reference)
    assert ours < 0.8 * rtn, (ours, rtn)


def test_sequential_calibration_differs_from_the_float_inputs_one():
    weights = random_weights(ODD, 8)
    recipe = CalibrationRecipe(get_scheme("w4a16-g64"))
    plain = calibrate(ODD.to_json(), weights, _windows(1), recipe)
    sequential = calibrate(ODD.to_json(), weights, _windows(1), CalibrationRecipe(get_scheme("w4a16-g64"),
                                                                                   sequential=True))
    first, last = "model.layers.0.mlp.down_proj.weight", "model.layers.1.mlp.down_proj.weight"
    assert np.array_equal(plain[first].packed, sequential[first].packed)  # layer 0 sees the same inputs
    assert not np.array_equal(plain[last].packed, sequential[last].packed)


def test_built_graph_runs_the_calibrated_weights(calibrated, tmp_path):
    weights, out = calibrated
    path = save_model(tmp_path / "gptq.so", ModelRecipe(ODD, SCHEME, "float32"), out, LLVM)
    ids = np.random.default_rng(3).integers(0, ODD.vocab_size, 29)
    ours = load(path).score(ids)
    reference = hf_logits(ODD, dequantized(out, weights), ids)
    assert rel(ours, reference) < 5e-3
    assert rel(ours, hf_logits(ODD, rtn_dequantized(weights, SCHEME), ids)) > 3 * rel(ours, reference)


def test_quantized_weights_must_fit_their_layer(calibrated):
    weights, out = calibrated
    model, _, names = graph(ModelRecipe(ODD, SCHEME, "float32", ("lm_head", "*.o_proj")), LLVM)
    other = dict(out, **{"model.layers.0.self_attn.k_proj.weight": quantize(
        np.pad(weights["model.layers.0.self_attn.k_proj.weight"], ((0, 0), (0, 32))), Int4Scheme(32, False))})
    with pytest.raises(ModelConfigError, match=r"fused layer .*qkv_proj.weight must be all float or all quantized"):
        pack_weights(model, other, names, "float32")
    with pytest.raises(ModelConfigError, match="o_proj.weight is quantized .* kept in floating point"):
        pack_weights(model, out, names, "float32")


@pytest.mark.parametrize("args, message", [
    (["--scheme", "fp16", "--gptq"], "--gptq calibrates weights for a quantized scheme; fp16 keeps"),
    (["--scheme", "bcq3-g128", "--gptq"], "--gptq calibrates int4 (w4a16-*) schemes; bcq3-g128 weights are fit"),
    (["--scheme", "fp32", "--gptq", "--awq"], "--awq and --gptq calibrate weights"),
    (["--gptq", "--gptq-windows", "0"], "--gptq-windows must be at least 1, got 0"),
])
def test_cli_refuses_gptq_flags_that_cannot_work(args, message, tmp_path, capsys):
    assert main(["build", "--model", "smollm2-135m", "--target", "llvm", "-o", str(tmp_path / "m.so"), *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "m.so").exists()


def test_checkpoint_with_gptq_keeps_the_float_patterns():
    from lowbit_tvm.models.checkpoints import Checkpoint, with_gptq  # pylint: disable=import-outside-toplevel

    checkpoint, text = word_checkpoint(ODD, 9, 5, 1100)
    out = with_gptq(checkpoint, get_scheme("w4a16-g64"), skip=("lm_head", "*.down_proj"), windows=2, text=text)
    assert out.config == ODD and out.tokenizer_json == checkpoint.tokenizer_json
    for name, value in out.weights.items():
        quantized = name.endswith("_proj.weight") and "down_proj" not in name
        assert isinstance(value, QuantizedWeight) == quantized, name
    with pytest.raises(ModelConfigError, match="needs the checkpoint's tokenizer"):
        with_gptq(Checkpoint(ODD, checkpoint.weights, None), get_scheme("w4a16-g64"))


def test_true_sequential_recollects_the_inputs_inside_each_layer():
    weights = random_weights(ODD, 10)
    scheme = get_scheme("w4a16-g64-asym")
    sequential, true_sequential = [
        calibrate(ODD.to_json(), weights, _windows(2), CalibrationRecipe(scheme, act_order=True, **{flag: True}))
        for flag in ("sequential", "true_sequential")]
    qkv, down = "model.layers.0.self_attn.q_proj.weight", "model.layers.0.mlp.down_proj.weight"
    assert np.array_equal(sequential[qkv].packed, true_sequential[qkv].packed)  # the first group sees the same inputs
    assert not np.array_equal(sequential[down].packed, true_sequential[down].packed)  # down sees quantized q..up


def test_awq_for_o_proj_keeps_every_linear_quantized_and_beats_rtn(calibrated):
    weights, plain = calibrated
    recipe = CalibrationRecipe(get_scheme(SCHEME), awq=True, awq_o=True, clip=True, act_order=True,
                               true_sequential=True)
    out = calibrate(ODD.to_json(), weights, _windows(), recipe)
    v = "model.layers.0.self_attn.v_proj.weight"
    assert isinstance(out[v], QuantizedWeight) and not np.array_equal(out[v].scales, plain[v].scales)
    ids = _windows(0)[0]
    reference = hf_logits(ODD, weights, ids)
    ours = rel(hf_logits(ODD, dequantized(out, weights), ids), reference)
    assert ours < 0.8 * rel(hf_logits(ODD, rtn_dequantized(weights, SCHEME), ids), reference)


def test_awq_for_o_proj_needs_the_heads():
    from lowbit_tvm.errors import QuantizationError  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.models.calibration import InputStats, quantize_layer  # pylint: disable=import-outside-toplevel

    weights = random_weights(ODD, 12)
    stats = {name: InputStats(np.eye(k), np.ones(k), 1) for name, k in
             (("attn_in", 96), ("attn_out", 96), ("mlp_in", 96), ("mlp_mid", 160))}
    recipe = CalibrationRecipe(get_scheme(SCHEME), awq=True, awq_o=True)
    with pytest.raises(QuantizationError, match=r"o_proj need the attention's \(heads, key/value heads\)"):
        quantize_layer(weights, 0, stats, recipe, lambda _: False)


@pytest.mark.parametrize("k", [1, 31, 96, 160, 576, 1000])
@pytest.mark.parametrize("name", ["w4a16-g32", "w4a16-g64-asym", "w4a16-g128", "w4a16-g128-asym"])
def test_calibration_pads_k_as_the_w4a16_layer_does(k, name):
    from lowbit_tvm.models.w4a16_linear import W4A16Linear  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.tvm_api import tvm  # pylint: disable=import-outside-toplevel

    scheme = get_scheme(name)
    layer = W4A16Linear(k, 16, scheme, tvm.target.Target({"kind": "llvm"}))
    step = max(32, scheme.group_size)
    assert scheme.padded_k(k) == layer.k  # calibration pads with the scheme's padded_k
    assert layer.k % step == 0 and k <= layer.k < k + step


def test_build_recipe_is_act_order_and_true_sequential():
    from lowbit_tvm.models.checkpoints import gptq_recipe  # pylint: disable=import-outside-toplevel

    recipe = gptq_recipe(get_scheme("w4a16-g128-asym"), awq=True)
    assert recipe.true_sequential and recipe.act_order and recipe.awq and recipe.clip and not recipe.awq_o


def test_cli_calibration_device_must_exist(tmp_path, capsys):
    import torch  # pylint: disable=import-outside-toplevel

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU: --calibration-device cuda is valid here")
    args = ["build", "--model", "smollm2-135m", "--target", "llvm", "-o", str(tmp_path / "m.so"), "--gptq",
            "--calibration-device", "cuda"]
    assert main(args) == 2
    assert "torch sees no CUDA GPU here" in capsys.readouterr().err
    assert not (tmp_path / "m.so").exists()
