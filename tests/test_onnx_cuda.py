"""ONNX models compiled for CUDA: an sm_90 build on the CPU (fatbin inside), and GPU runs vs onnxruntime/float64."""
import json

import numpy as np
import pytest

import lowbit_tvm
from lowbit_tvm.codegen import sidecar_path
from lowbit_tvm.frontend import compile_onnx
from lowbit_tvm.quant import dequantize, get_scheme, quantize

onnx = pytest.importorskip("onnx")
helper, numpy_helper, TensorProto = onnx.helper, onnx.numpy_helper, onnx.TensorProto


def _model(path, k: int, hidden: int, n: int, seed: int = 0):
    """x [batch, seq, k] -> fc1 (MatMul) -> Gelu -> fc2 (MatMul, N=n) -> y; weights returned [K, N]."""
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((k, hidden)).astype(np.float32) * 0.1
    w2 = rng.standard_normal((hidden, n)).astype(np.float32) * 0.1
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
         helper.make_node("Gelu", ["h"], ["g"], name="act"),
         helper.make_node("MatMul", ["g", "w2"], ["y"], name="fc2")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", n])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=10), str(path))
    return w1, w2


def test_sm90_build_on_the_cpu(tmp_path):
    _model(tmp_path / "m.onnx", 256, 128, 40)  # fc2's N=40 does not fit the tensor-core kernel: stays float
    result = compile_onnx(tmp_path / "m.onnx", tmp_path / "m.so", scheme="w4a16-g128", target="cuda", arch="sm_90")
    kernels = {r["node"]: r["kernel"] for r in result.layers}
    assert kernels == {"fc1": "w4a16-g128", "fc2": "float"}
    assert "does not fit" in [r["note"] for r in result.layers if r["node"] == "fc2"][0]
    side = json.loads(sidecar_path(tmp_path / "m.so").read_text())
    assert side["arch"] == "sm_90" and side["device_code_format"] == "fatbin"


def _dequantized(weight_kn, scheme):
    """float64 ``[K, N]`` of the weight quantized as our pipeline does (K zero-padded to whole groups)."""
    k = weight_kn.shape[0]
    padded = np.pad(weight_kn.T, ((0, 0), (0, -(-k // 128) * 128 - k)))
    return dequantize(quantize(padded, scheme))[:, :k].T.astype(np.float64)


def _gelu(x):
    from math import erf  # pylint: disable=import-outside-toplevel

    return 0.5 * x * (1 + np.vectorize(erf)(x / np.sqrt(2)))


@pytest.mark.gpu
def test_gpu_quantized_model_matches_float64_and_onnxruntime(tmp_path):
    torch = pytest.importorskip("torch")
    ort = pytest.importorskip("onnxruntime")
    w1, w2 = _model(tmp_path / "m.onnx", 576, 1536, 208, seed=1)
    fp = compile_onnx(tmp_path / "m.onnx", tmp_path / "fp.so", scheme="fp16", target="cuda")
    q = compile_onnx(tmp_path / "m.onnx", tmp_path / "q.so", scheme="w4a16-g128-asym", target="cuda")
    assert [r["kernel"] for r in q.layers] == ["w4a16-g128-asym"] * 2 and fp.layers
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    fp_engine, q_engine = lowbit_tvm.load(tmp_path / "fp.so"), lowbit_tvm.load(tmp_path / "q.so")
    scheme = get_scheme("w4a16-g128-asym")
    deq1, deq2 = (_dequantized(w, scheme) for w in (w1, w2))
    for batch, seq in ((1, 1), (1, 7), (3, 33), (2, 100)):
        x = np.random.default_rng(batch * seq).standard_normal((batch, seq, 576)).astype(np.float32)
        ref = session.run(None, {"x": x})[0]
        got = fp_engine(torch.from_numpy(x).cuda())["y"].cpu().numpy()
        assert np.abs(got - ref).max() / np.abs(ref).max() < 1e-4
        h = _gelu(x.astype(np.float16).astype(np.float64) @ deq1)
        expected = h.astype(np.float16).astype(np.float64) @ deq2
        got = q_engine(x)["y"]
        assert got.shape == ref.shape
        assert np.abs(got - expected).max() / np.abs(expected).max() < 5e-3


def _matmul_nbits_model(path, k: int, n: int, block: int, seed: int = 0):
    """x [batch, k] -> com.microsoft.MatMulNBits (asymmetric, random codes) -> y [batch, n], built by hand."""
    rng = np.random.default_rng(seed)
    blocks = -(-k // block)
    codes = rng.integers(0, 16, (n, blocks * block)).astype(np.uint8)
    packed = (codes[:, 0::2] | (codes[:, 1::2] << 4)).reshape(n, blocks, block // 2)
    zeros = rng.integers(0, 16, (n, blocks + blocks % 2)).astype(np.uint8)
    zero_bytes = (zeros[:, 0::2] | (zeros[:, 1::2] << 4)).reshape(-1)
    scales = (rng.random((n, blocks)) * 0.02 + 0.001).astype(np.float32)
    node = helper.make_node("MatMulNBits", ["x", "b", "s", "z"], ["y"], name="fc", domain="com.microsoft",
                            K=k, N=n, bits=4, block_size=block)
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", n])],
        [numpy_helper.from_array(packed, "b"), numpy_helper.from_array(scales.reshape(-1), "s"),
         numpy_helper.from_array(zero_bytes, "z")],
    )
    opsets = [helper.make_opsetid("", 20), helper.make_opsetid("com.microsoft", 1)]
    onnx.save(helper.make_model(graph, opset_imports=opsets, ir_version=10), str(path))


@pytest.mark.gpu
def test_gpu_matmul_nbits_matches_onnxruntime(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    _matmul_nbits_model(tmp_path / "nbits.onnx", 4096, 1024, 128)
    result = compile_onnx(tmp_path / "nbits.onnx", tmp_path / "nbits.so", scheme="fp16", target="cuda")
    assert [(r["kernel"], r["note"]) for r in result.layers] == [("w4a16-g128-asym", "pre-quantized codes kept")]
    engine = lowbit_tvm.load(tmp_path / "nbits.so")
    session = ort.InferenceSession(str(tmp_path / "nbits.onnx"), providers=["CPUExecutionProvider"])
    for batch in (1, 5, 64):
        x = np.random.default_rng(batch).standard_normal((batch, 4096)).astype(np.float32)
        ref = session.run(None, {"x": x})[0]
        got = engine(x)["y"]
        assert np.abs(got - ref).max() / np.abs(ref).max() < 5e-3
