"""Calibrated ONNX compilation (``compile_onnx(calibration=..., recipe=...)``): AWQ scales, sequential calibration.

Small ``onnx.helper`` graphs (a Mul by a constant "gamma" feeding two MatMuls, then a MatMul of a run-time
product) and a tiny HF Llama exported to ONNX: the AWQ scale is folded into the constant or an inserted
multiply without changing the float function (onnxruntime), sequential calibration records a layer's inputs
with the layers before it quantized (NumPy float64 GPTQ reference), the default recipe lowers the output error
vs round-to-nearest and GPTQ-only on inputs with planted outlier channels (llvm libraries), and bad options
fail clearly.
"""
import warnings

import numpy as np
import pytest

import lowbit_tvm
from lowbit_tvm.cli import main
from lowbit_tvm.errors import ModelError, QuantizationError
from lowbit_tvm.frontend import compile_onnx
from lowbit_tvm.frontend.onnx_engine import onnx_metadata
from lowbit_tvm.frontend.onnx_calibrate import DEFAULT_RECIPE, OnnxRecipe, calibrate_graph, calibration_feeds
from lowbit_tvm.frontend.onnx_import import normalized_graph
from lowbit_tvm.frontend.onnx_linears import LinearWeight
from lowbit_tvm.models.hf_reference import logits_module
from lowbit_tvm.quant import dequantize, get_scheme
from lowbit_tvm.quant.gptq import gptq_quantize

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
helper, numpy_helper, TensorProto = onnx.helper, onnx.numpy_helper, onnx.TensorProto

SCHEME = "w4a16-g32"
OUTLIERS = (3, 17, 40)  # input channels of x with planted large magnitudes
RNG = np.random.default_rng(66)
GAMMA = (1.0 + 0.1 * RNG.standard_normal(64)).astype(np.float32)
W1 = (RNG.standard_normal((64, 96)) * 0.2).astype(np.float32)  # [K, N] as ONNX MatMul weights
W2 = (RNG.standard_normal((64, 96)) * 0.2).astype(np.float32)
W3 = (RNG.standard_normal((96, 48)) * 0.2).astype(np.float32)
NO_RECIPE = dict(awq=False, clip=False, act_order=False)


def _graph_model(path):
    """x [batch, 64] -> h = x * gamma -> a = h @ W1, b = h @ W2 -> m = relu(a) * b -> y = m @ W3."""
    nodes = [
        helper.make_node("Mul", ["x", "gamma"], ["h"], name="norm"),
        helper.make_node("MatMul", ["h", "w1"], ["a"], name="up1"),
        helper.make_node("MatMul", ["h", "w2"], ["b"], name="up2"),
        helper.make_node("Relu", ["a"], ["r"], name="act"),
        helper.make_node("Mul", ["r", "b"], ["m"], name="gate"),
        helper.make_node("MatMul", ["m", "w3"], ["y"], name="down"),
    ]
    inits = [numpy_helper.from_array(a, n) for n, a in [("gamma", GAMMA), ("w1", W1), ("w2", W2), ("w3", W3)]]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 48])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10), path)
    return path


@pytest.fixture(scope="module")
def graph_onnx(tmp_path_factory):
    return _graph_model(tmp_path_factory.mktemp("awq") / "g.onnx")


def _inputs(rng, rows):
    x = rng.standard_normal((rows, 64))
    x[:, list(OUTLIERS)] *= 25.0
    return x.astype(np.float32)


def _ort(model, feeds):
    data = model.SerializeToString() if hasattr(model, "SerializeToString") else str(model)
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def _rel(a, b):
    return float(np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max())


def _calibrated(path, recipe, feeds):
    graph = normalized_graph(path)
    result = calibrate_graph(graph, calibration_feeds(graph, feeds), get_scheme(SCHEME), recipe, lambda w: True)
    return graph, result


def _float_weights(graph):
    return {name: (v.float_weight().T.astype(np.float32) if isinstance(v, LinearWeight) else v)
            for name, v in graph.params}


def test_awq_scales_fold_into_the_constant_mul_or_an_inserted_multiply_and_keep_the_float_model(graph_onnx):
    rng = np.random.default_rng(1)
    graph, result = _calibrated(graph_onnx, DEFAULT_RECIPE, {"x": np.stack([_inputs(rng, 128) for _ in range(2)])})
    assert [(g["nodes"], g["awq"]) for g in result.groups] == [(["up1", "up2"], "folded"), (["down"], "multiply")]
    assert all(g["alpha"] > 0 and g["error"] < g["rtn_error"] for g in result.groups)
    assert result.tokens == 256
    ops = [node.op_type for node in graph.model.graph.node]
    assert ops.count("Mul") == 3 and "gamma" not in {i for node in graph.model.graph.node for i in node.input}
    # The edited graph with the scaled float weights (W * s) computes the float model.
    x = _inputs(rng, 32)
    edited = _ort(graph.model, {"x": x, **_float_weights(graph)})
    assert _rel(edited, _ort(graph_onnx, {"x": x})) < 1e-5


@pytest.mark.parametrize("sequential", [False, True])
def test_sequential_calibration_records_inputs_of_the_quantized_earlier_layers(graph_onnx, sequential):
    """GPTQ of ``down`` matches a float64 reference on ``m`` from the float or the dequantized ``up`` layers."""
    rng = np.random.default_rng(2)
    x = np.stack([_inputs(rng, 64) for _ in range(3)])
    _, result = _calibrated(graph_onnx, OnnxRecipe(sequential=sequential, **NO_RECIPE), {"x": x})
    up1, up2 = (result.quantized[f"lowbit_w{i}"][0] for i in range(2))
    assert up1.shape == (96, 64) and result.quantized["lowbit_w0"][1] == "gptq" + (", sequential" if sequential else "")
    w1, w2 = (dequantize(q).T.astype(np.float64) for q in (up1, up2)) if sequential else (W1, W2)
    h = x.reshape(-1, 64).astype(np.float64) * GAMMA
    m = np.maximum(h @ w1, 0) * (h @ w2)
    expected = gptq_quantize(W3.T.astype(np.float64), m.T @ m, get_scheme(SCHEME))
    got = result.quantized["lowbit_w2"][0]
    mismatch = np.mean(dequantize(got) != dequantize(expected))
    assert mismatch < 0.01, mismatch  # float32 activations in onnxruntime vs float64 here: rare rounding ties


def test_default_recipe_lowers_the_output_error_vs_round_to_nearest_and_gptq(graph_onnx, tmp_path):
    rng = np.random.default_rng(3)
    calibration = [{"x": _inputs(rng, 256)} for _ in range(2)]
    runs = {"rtn": {}, "gptq": {"calibration": calibration, "recipe": OnnxRecipe(sequential=False, **NO_RECIPE)},
            "default": {"calibration": calibration}}
    test = {"x": _inputs(rng, 128)}
    reference = _ort(graph_onnx, test)
    errors = {}
    for name, options in runs.items():
        result = compile_onnx(graph_onnx, tmp_path / f"{name}.so", scheme=SCHEME, target="llvm", **options)
        assert {r["kernel"] for r in result.layers} == {SCHEME}
        errors[name] = _rel(lowbit_tvm.load(tmp_path / f"{name}.so")(**test)["y"], reference)
    assert result.calibration["label"] == "awq+clip+gptq(act-order), sequential"
    assert {r["note"] for r in result.layers} == {"awq+clip+gptq(act-order), sequential (awq folded)",
                                                  "awq+clip+gptq(act-order), sequential (awq multiply)"}
    assert errors["default"] < 0.6 * errors["rtn"] and errors["default"] < errors["gptq"], errors


def test_tiny_llama_export_folds_norm_weights_and_keeps_its_float_function(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    llama = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for layer in llama.model.layers:  # outlier channels in the normed inputs
            layer.input_layernorm.weight[[5, 40]] = 8.0
            layer.post_attention_layernorm.weight[[7, 33]] = 8.0

    path = tmp_path / "llama.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(logits_module(llama), (torch.randint(0, 128, (1, 32)),), str(path), dynamo=False,
                          input_names=["input_ids"], output_names=["logits"], opset_version=17)
    rng = np.random.default_rng(4)
    ids = rng.integers(0, 128, (4, 1, 32)).astype(np.int64)
    graph = normalized_graph(path)
    result = calibrate_graph(graph, calibration_feeds(graph, {"input_ids": ids}), get_scheme(SCHEME), DEFAULT_RECIPE,
                             lambda w: "lm_head" not in w.node)
    kinds = {tuple(n.split("/")[-2] for n in g["nodes"]): g["awq"] for g in result.groups}
    assert len(result.groups) == 8 and len(result.quantized) == 14
    assert kinds[("q_proj", "k_proj", "v_proj")] == "folded" and kinds[("gate_proj", "up_proj")] == "folded"
    assert set(kinds.values()) <= {"folded", "multiply", None}
    test = rng.integers(0, 128, (1, 32)).astype(np.int64)
    edited = _ort(graph.model, {"input_ids": test, **_float_weights(graph)})
    assert _rel(edited, _ort(path, {"input_ids": test})) < 1e-4


@pytest.mark.parametrize("options, message", [
    ({"gptq": False}, "act_order orders GPTQ"),
    ({"awq": False, "clip": False, "gptq": False, "act_order": False}, "round-to-nearest"),
    ({"damping": 0.0}, "damping"),
    ({"grid": 0}, "grid"),
    ({"awq": "yes"}, "True or False"),
])
def test_bad_recipes_are_rejected(options, message):
    with pytest.raises(QuantizationError, match=message):
        OnnxRecipe(**options)


def test_bad_calibration_options_fail_clearly_before_compiling(graph_onnx, tmp_path):
    x = np.zeros((4, 64), np.float32)
    with pytest.raises(QuantizationError, match="needs calibration inputs"):
        compile_onnx(graph_onnx, tmp_path / "a.so", scheme=SCHEME, recipe=DEFAULT_RECIPE)
    with pytest.raises(QuantizationError, match="leaves them float"):
        compile_onnx(graph_onnx, tmp_path / "a.so", scheme="fp16", calibration=[{"x": x}])
    with pytest.raises(QuantizationError, match="OnnxRecipe"):
        compile_onnx(graph_onnx, tmp_path / "a.so", scheme=SCHEME, calibration=[{"x": x}], recipe={"awq": True})
    graph = normalized_graph(graph_onnx)
    with pytest.raises(ModelError, match="not inputs of the model"):
        calibration_feeds(graph, [{"x": x, "ids": x}])
    with pytest.raises(ModelError, match="lack the model's input"):
        calibration_feeds(graph, [{}])
    with pytest.raises(ModelError, match="has 4 dimensions"):
        calibration_feeds(graph, {"x": np.zeros((1, 2, 4, 64), np.float32)})
    with pytest.raises(ModelError, match="non-empty list"):
        calibration_feeds(graph, [])
    assert [f["x"].shape for f in calibration_feeds(graph, {"x": np.zeros((3, 4, 64))})] == [(4, 64)] * 3
    assert not list(tmp_path.iterdir())


def test_cli_compile_calibration_flags(graph_onnx, tmp_path, capsys):
    out = tmp_path / "m.so"
    assert main(["compile", str(graph_onnx), "--target", "llvm", "--awq", "-o", str(out)]) == 2
    assert "--awq: calibration options need --calibrate" in capsys.readouterr().err
    npz = tmp_path / "cal.npz"
    np.savez(npz, x=np.stack([_inputs(np.random.default_rng(5), 64) for _ in range(2)]))
    assert main(["compile", str(graph_onnx), "--target", "llvm", "--scheme", SCHEME, "--calibrate", str(npz),
                 "--no-gptq", "--act-order", "-o", str(out)]) == 2
    assert "act_order orders GPTQ" in capsys.readouterr().err
    assert main(["compile", str(graph_onnx), "--target", "llvm", "--scheme", SCHEME, "--calibrate", str(npz),
                 "--no-gptq", "--no-sequential", "-o", str(out)]) == 0
    assert "calibrated (awq+clip) on 2 sample(s)" in capsys.readouterr().out
    assert onnx_metadata(out)["calibration"]["recipe"] == {"awq": True, "clip": True, "gptq": False,
                                                           "act_order": False, "sequential": False,
                                                           "damping": 0.01, "grid": 20}
