"""ONNX models compiled for the CPU (llvm): float graphs match onnxruntime, quantized layers match float64.

Small graphs built with ``onnx.helper`` (MatMul, Gemm with alpha/beta/transB, a kept-float ``lm_head``, a MatMul of
two run-time inputs) and a small torch-exported model; dynamic batch/sequence dimensions; libraries loaded back
through ``lowbit_tvm.load``.
"""
import warnings

import numpy as np
import pytest

import lowbit_tvm
from lowbit_tvm.errors import EvaluationError
from lowbit_tvm.frontend import compile_onnx
from lowbit_tvm.frontend.onnx_calibrate import OnnxRecipe
from lowbit_tvm.quant import dequantize, get_scheme, quantize

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
helper, numpy_helper, TensorProto = onnx.helper, onnx.numpy_helper, onnx.TensorProto

RNG = np.random.default_rng(6)
W1 = RNG.standard_normal((64, 96)).astype(np.float32) * 0.2  # fc1: MatMul weight [K, N]
B1 = RNG.standard_normal(96).astype(np.float32) * 0.1
W2 = RNG.standard_normal((48, 96)).astype(np.float32) * 0.2  # proj: Gemm B with transB=1
C2 = RNG.standard_normal(48).astype(np.float32) * 0.1
W3 = RNG.standard_normal((48, 40)).astype(np.float32) * 0.2  # lm_head
ALPHA, BETA = 0.5, 2.0


def _helper_model(path):
    """x [batch, 64] -> fc1 (MatMul) + bias -> Relu -> proj (Gemm) -> lm_head (MatMul) -> y; z = x @ wt (run time)."""
    nodes = [
        helper.make_node("MatMul", ["x", "fc1.weight"], ["h1"], name="fc1"),
        helper.make_node("Add", ["h1", "fc1.bias"], ["h2"], name="fc1_bias"),
        helper.make_node("Relu", ["h2"], ["h3"], name="act"),
        helper.make_node("Gemm", ["h3", "proj.weight", "proj.bias"], ["h4"], name="proj", alpha=ALPHA, beta=BETA,
                         transB=1),
        helper.make_node("MatMul", ["h4", "lm_head.weight"], ["y"], name="lm_head"),
        helper.make_node("MatMul", ["x", "wt"], ["z"], name="dyn"),
    ]
    inits = [numpy_helper.from_array(a, n) for n, a in
             [("fc1.weight", W1), ("fc1.bias", B1), ("proj.weight", W2), ("proj.bias", C2), ("lm_head.weight", W3)]]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64]),
         helper.make_tensor_value_info("wt", TensorProto.FLOAT, [64, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 40]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 8])],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10), path)
    return path


@pytest.fixture(scope="module")
def helper_onnx(tmp_path_factory):
    return _helper_model(tmp_path_factory.mktemp("onnx") / "mlp.onnx")


def _ort(path, feeds):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))


def _rel(a, b):
    return float(np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max())


def _w4(x, weight_nk, scheme_name):
    """float64 reference of our kernel: fp16 activations, dequantized weight (K zero-padded), fp16 result."""
    scheme = get_scheme(scheme_name)
    n, k = weight_nk.shape
    kp = -(-k // max(32, scheme.group_size)) * max(32, scheme.group_size)
    deq = dequantize(quantize(np.pad(weight_nk, ((0, 0), (0, kp - k))), scheme))[:, :k].astype(np.float64)
    out = x.astype(np.float16).astype(np.float64) @ deq.T
    return out.astype(np.float16).astype(np.float64)


def test_float_graph_matches_onnxruntime_with_dynamic_batch(helper_onnx, tmp_path):
    result = compile_onnx(helper_onnx, tmp_path / "fp.so", scheme="fp16", target="llvm")
    assert {r["kernel"] for r in result.layers} == {"float"}
    assert [node for node, _ in result.kept_float] == ["dyn"]
    engine = lowbit_tvm.load(tmp_path / "fp.so")
    assert engine.input_names == ["x", "wt"] and engine.outputs == ["y", "z"]
    for batch in (1, 5):
        feeds = {"x": RNG.standard_normal((batch, 64)).astype(np.float32),
                 "wt": RNG.standard_normal((64, 8)).astype(np.float32)}
        ours, ref = engine(**feeds), _ort(helper_onnx, feeds)
        for name in ("y", "z"):
            assert ours[name].shape == ref[name].shape
            assert _rel(ours[name], ref[name]) < 1e-5


def test_quantized_layers_match_float64_and_lm_head_stays_float(helper_onnx, tmp_path):
    scheme = "w4a16-g64-asym"  # K=96 of proj is padded to 128
    result = compile_onnx(helper_onnx, tmp_path / "q.so", scheme=scheme, target="llvm")
    kernels = {r["node"]: r["kernel"] for r in result.layers}
    assert kernels == {"fc1": scheme, "proj": scheme, "lm_head": "float"}
    engine = lowbit_tvm.load(tmp_path / "q.so")
    x = RNG.standard_normal((7, 64)).astype(np.float32)
    wt = RNG.standard_normal((64, 8)).astype(np.float32)
    out = engine(x, wt)
    h = np.maximum(_w4(x, W1.T, scheme) + B1, 0)
    h = _w4(h, ALPHA * W2, scheme) + BETA * C2
    y = h @ W3.astype(np.float64)
    assert _rel(out["y"], y) < 2e-3
    assert _rel(out["z"], x.astype(np.float64) @ wt) < 1e-5
    fp = _ort(helper_onnx, {"x": x, "wt": wt})["y"]
    assert _rel(out["y"], fp) > 1e-3  # the layers really are quantized


def test_engine_takes_torch_tensors_and_checks_inputs(helper_onnx, tmp_path):
    torch = pytest.importorskip("torch")
    compile_onnx(helper_onnx, tmp_path / "m.so", scheme="fp16", target="llvm")
    engine = lowbit_tvm.load(tmp_path / "m.so")
    x, wt = torch.randn(3, 64), torch.randn(64, 8)
    out = engine(x, wt=wt)
    assert isinstance(out["z"], torch.Tensor)
    torch.testing.assert_close(out["z"], x @ wt, rtol=1e-5, atol=1e-5)
    with pytest.raises(EvaluationError, match="has shape"):
        engine(torch.randn(3, 63), wt)
    with pytest.raises(EvaluationError, match="missing input"):
        engine(x)


def test_torch_exported_model(tmp_path):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.LayerNorm(64), torch.nn.Linear(64, 160), torch.nn.GELU(),
                                torch.nn.Linear(160, 48)).eval()
    path = tmp_path / "torch.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(2, 5, 64),), str(path), dynamo=False, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "batch", 1: "seq"}, "y": {0: "batch", 1: "seq"}})
    result = compile_onnx(path, tmp_path / "t.so", scheme="w4a16-g32", target="llvm", keep_float=())
    assert [r["kernel"] for r in result.layers] == ["w4a16-g32", "w4a16-g32"]
    engine = lowbit_tvm.load(tmp_path / "t.so")
    x = torch.randn(3, 9, 64)
    got = engine(x.numpy())["y"]
    with torch.no_grad():
        ref = model.double()
        for layer in (ref[1], ref[3]):
            w = layer.weight.detach().numpy()
            layer.weight.copy_(torch.from_numpy(dequantize(quantize(w, get_scheme("w4a16-g32")))))
        expected = ref(x.double()).numpy()
    assert got.shape == (3, 9, 48)
    assert _rel(got, expected) < 1e-2  # fp16 activations into both layers


def test_calibration_uses_gptq_and_lowers_the_output_error(helper_onnx, tmp_path):
    rng = np.random.default_rng(1)
    mix = rng.standard_normal((64, 64)) * np.logspace(0, -2, 64)[:, None]  # correlated input channels

    def feed(rows):
        return {"x": (rng.standard_normal((rows, 64)) @ mix).astype(np.float32),
                "wt": np.zeros((64, 8), np.float32)}

    calibration = [feed(256) for _ in range(2)]
    recipe = OnnxRecipe(awq=False, clip=False, act_order=False, sequential=False)  # the default adds AWQ etc.
    gptq = compile_onnx(helper_onnx, tmp_path / "g.so", scheme="w4a16-g32", target="llvm", calibration=calibration,
                        recipe=recipe)
    assert {r["node"]: r["note"] for r in gptq.layers if r["kernel"] != "float"} == {"fc1": "gptq", "proj": "gptq"}
    compile_onnx(helper_onnx, tmp_path / "r.so", scheme="w4a16-g32", target="llvm")
    test = feed(128)
    ref = _ort(helper_onnx, test)["y"]
    errors = {name: _rel(lowbit_tvm.load(tmp_path / name)(**test)["y"], ref) for name in ("g.so", "r.so")}
    assert errors["g.so"] < 0.8 * errors["r.so"], errors


def test_scalar_constant_of_shape_is_folded_before_tvm_imports_it(tmp_path):
    """torch exports attention masks with ConstantOfShape of an empty shape, which TVM 0.27's importer rejects."""
    from lowbit_tvm.frontend import import_onnx  # pylint: disable=import-outside-toplevel

    graph = helper.make_graph(
        [helper.make_node("ConstantOfShape", ["empty"], ["c"], name="scalar",
                          value=numpy_helper.from_array(np.array([2.5], np.float32))),
         helper.make_node("Add", ["x", "c"], ["y"], name="add")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
        [numpy_helper.from_array(np.zeros(0, np.int64), "empty")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10), tmp_path / "c.onnx")
    imported = import_onnx(tmp_path / "c.onnx")
    assert "R.add" in imported.mod.script() and "constant_of_shape" not in imported.mod.script().lower()
