"""Pre-quantized ONNX weights on our kernel without re-quantizing, checked against onnxruntime (CPU, llvm).

Models are quantized by onnxruntime's own ``MatMulNBitsQuantizer``: QOperator format gives
``com.microsoft.MatMulNBits`` (with and without zero points), QDQ format gives ``DequantizeLinear`` with
``block_size`` (int4 / uint4) feeding the MatMul.
"""
import numpy as np
import pytest

import lowbit_tvm
from lowbit_tvm.frontend import compile_onnx
from lowbit_tvm.frontend.onnx_prequantized import from_matmul_nbits

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
nbits = pytest.importorskip("onnxruntime.quantization.matmul_nbits_quantizer")
helper, numpy_helper, TensorProto = onnx.helper, onnx.numpy_helper, onnx.TensorProto


def _linear(k: int, n: int, seed: int):
    """x [batch, k] -> fc (MatMul with an fp32 weight) -> y [batch, n]."""
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((k, n)).astype(np.float32) * 0.2
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", n])],
        [numpy_helper.from_array(weight, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


def _quantized(model, path, block: int, symmetric: bool, qdq: bool = False):
    from onnxruntime.quantization.quant_utils import QuantFormat  # pylint: disable=import-outside-toplevel

    fmt = QuantFormat.QDQ if qdq else QuantFormat.QOperator
    quantizer = nbits.MatMulNBitsQuantizer(model, block_size=block, is_symmetric=symmetric, quant_format=fmt)
    quantizer.process()
    onnx.save(quantizer.model.model, str(path))
    return path


def _check_against_ort(path, tmp_path, k: int, expect_kernel: str, expect_note: str):
    """Our library vs onnxruntime on the same model.

    The identity input reads out onnxruntime's dequantized weight, which ours must reproduce up to fp16-scale
    rounding (< 1e-3); the layer record says the codes were kept in their own block size (the requested
    scheme, g32, is not applied to pre-quantized weights). Random inputs are
    compared with float64 over that weight (onnxruntime itself may compute with quantized activations: it is
    6e-3 off float64 on the DequantizeLinear model) and, more loosely, with onnxruntime's output.
    """
    result = compile_onnx(path, tmp_path / "m.so", scheme="w4a16-g32", target="llvm")
    assert [(r["kernel"], r["note"]) for r in result.layers] == [(expect_kernel, expect_note)]
    engine = lowbit_tvm.load(tmp_path / "m.so")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    eye = np.eye(k, dtype=np.float32)
    weight = session.run(None, {"x": eye})[0].astype(np.float64)
    assert _rel(engine(eye)["y"], weight) < 1e-3
    rng = np.random.default_rng(k)
    for batch in (1, 6):
        x = rng.standard_normal((batch, k)).astype(np.float32)
        got = engine(x)["y"]
        assert got.shape == (batch, weight.shape[1])
        assert _rel(got, x.astype(np.float64) @ weight) < 2e-3  # fp16 activations and scales
        assert _rel(got, session.run(None, {"x": x})[0]) < 1e-2


def _rel(a, b):
    return float(np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max())


@pytest.mark.parametrize(
    "k, block, symmetric, kernel",
    [(128, 64, True, "w4a16-g64"),        # codes and block kept: the scheme's g32 is not used
     (80, 32, False, "w4a16-g32-asym"),   # K padded to whole blocks, packed zero points
     (96, 256, False, "w4a16-g128-asym")],  # one block of 256 = two groups of 128 with the same scale
)
def test_matmul_nbits_runs_on_our_kernel(tmp_path, k, block, symmetric, kernel):
    path = _quantized(_linear(k, 48, seed=k + block), tmp_path / "nbits.onnx", block, symmetric)
    assert any(n.op_type == "MatMulNBits" for n in onnx.load(str(path)).graph.node)
    _check_against_ort(path, tmp_path, k, kernel, "pre-quantized codes kept")


@pytest.mark.parametrize("symmetric, kernel", [(True, "w4a16-g32"), (False, "w4a16-g32-asym")])
def test_block_dequantize_linear_runs_on_our_kernel(tmp_path, symmetric, kernel):
    path = _quantized(_linear(96, 48, seed=7), tmp_path / "qdq.onnx", 32, symmetric, qdq=True)
    dq = [n for n in onnx.load(str(path)).graph.node if n.op_type == "DequantizeLinear"]
    assert dq and all(any(a.name == "block_size" for a in n.attribute) for n in dq)
    _check_against_ort(path, tmp_path, 96, kernel, "pre-quantized codes kept")


def test_block_size_16_is_dequantized_and_reported(tmp_path):
    path = _quantized(_linear(64, 16, seed=3), tmp_path / "b16.onnx", 16, False)
    _check_against_ort(path, tmp_path, 64, "float",
                       "pre-quantized, dequantized to float (block size 16 is not a multiple of 32)")


def test_matmul_nbits_codes_map_exactly():
    """Our dequantization of the mapped weight equals MatMulNBits' definition (codes, zero points, fp16 scales)."""
    rng = np.random.default_rng(0)
    n, k, block = 5, 70, 32
    blocks = 3
    codes = rng.integers(0, 16, (n, blocks * block)).astype(np.uint8)
    packed = (codes[:, 0::2] | (codes[:, 1::2] << 4)).reshape(n, blocks, block // 2)
    zeros = rng.integers(0, 16, (n, blocks)).astype(np.uint8)
    zero_bytes = np.zeros((n, 2), np.uint8)
    zero_bytes[:, 0] = zeros[:, 0] | (zeros[:, 1] << 4)
    zero_bytes[:, 1] = zeros[:, 2]
    scales = rng.random((n, blocks)).astype(np.float16).astype(np.float32)
    mapped = from_matmul_nbits(packed, scales.reshape(-1), zero_bytes.reshape(-1), k, n, block)
    expected = (codes.astype(np.float32) - np.repeat(zeros, block, 1)) * np.repeat(scales, block, 1)
    np.testing.assert_array_equal(mapped.float_weight(), expected[:, :k])
    assert mapped.weight.scheme.name == "w4a16-g32-asym"
