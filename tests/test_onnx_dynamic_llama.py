"""An HF Llama exported to ONNX with dynamic batch and sequence (torch's dynamo and TorchScript exporters), llvm.

TVM 0.27's importer loses the sequence length through the graph's ``Range`` (position ids, masks) and then fails
in ``Expand`` (dynamo) or a ``Gather`` of a ``Shape`` (TorchScript); ``frontend/onnx_converters.py`` keeps it.
One library runs at two (batch, seq) shapes: the float builds match onnxruntime on the same file, the
``w4a16-g128`` build a float64 HF reference of its dequantized weights (and, loosely, onnxruntime on the float
model).
"""
import copy
import warnings

import numpy as np
import pytest

import lowbit_tvm
from lowbit_tvm.frontend import compile_onnx
from lowbit_tvm.models.hf_reference import logits_module
from lowbit_tvm.quant import dequantize, get_scheme, quantize

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")  # torch's dynamo exporter

SHAPES = [(1, 7), (3, 19)]
SCHEME = "w4a16-g128"



@pytest.fixture(scope="module")
def llama():
    cfg = transformers.LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg).eval()


def _export(llama, path, exporter):
    names = {"input_names": ["input_ids"], "output_names": ["logits"]}
    example = (torch.randint(0, 256, (1, 16)),)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            dims = {0: torch.export.Dim("batch"), 1: torch.export.Dim("seq", min=2, max=255)}
            torch.onnx.export(logits_module(llama), example, str(path), dynamo=True, opset_version=18,
                              dynamic_shapes=(dims,), verbose=False, **names)
        else:
            axes = {"input_ids": {0: "batch", 1: "seq"}, "logits": {0: "batch", 1: "seq"}}
            torch.onnx.export(logits_module(llama), example, str(path), dynamo=False, opset_version=17,
                              dynamic_axes=axes, **names)
    return path


@pytest.fixture(scope="module")
def llama_onnx(llama, tmp_path_factory):
    return _export(llama, tmp_path_factory.mktemp("llama") / "llama_dynamo.onnx", "dynamo")


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(6)
    return [rng.integers(0, 256, shape).astype(np.int64) for shape in SHAPES]


@pytest.fixture(scope="module")
def ort_logits(llama_onnx, inputs):
    session = ort.InferenceSession(str(llama_onnx), providers=["CPUExecutionProvider"])
    return [session.run(None, {"input_ids": ids})[0] for ids in inputs]


def _rel(a, b):
    return float(np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max())


def _dequantized_reference(llama, ids_list):
    """float64 HF logits with every Linear's weight replaced by its dequantized ``SCHEME`` codes (K zero-padded)."""
    scheme = get_scheme(SCHEME)
    model = copy.deepcopy(llama).double()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                w = module.weight.numpy()
                k = w.shape[1]
                kp = -(-k // max(32, scheme.group_size)) * max(32, scheme.group_size)
                deq = dequantize(quantize(np.pad(w.astype(np.float32), ((0, 0), (0, kp - k))), scheme))[:, :k]
                module.weight.copy_(torch.from_numpy(deq.astype(np.float64)))
        return [model(input_ids=torch.from_numpy(ids), use_cache=False).logits.numpy() for ids in ids_list]


def test_range_over_a_shape_keeps_the_symbolic_length(tmp_path):
    """y = Expand(x + Range(0, seq, 1), Shape(x)): without the override TVM's Expand fails (unknown shape)."""
    onnx = pytest.importorskip("onnx")
    helper, numpy_helper, TensorProto = onnx.helper, onnx.numpy_helper, onnx.TensorProto
    consts = {"zero": np.array(0, np.int64), "one": np.array(1, np.int64), "axis0": np.array([0], np.int64)}
    nodes = [
        helper.make_node("Shape", ["x"], ["seq_1d"], start=1, end=2),
        helper.make_node("Squeeze", ["seq_1d", "axis0"], ["seq"]),
        helper.make_node("Range", ["zero", "seq", "one"], ["positions"]),
        helper.make_node("Cast", ["positions"], ["positions_f"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["x", "positions_f"], ["shifted"]),
        helper.make_node("Shape", ["x"], ["x_shape"]),
        helper.make_node("Expand", ["shifted", "x_shape"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "range", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq"])],
        [numpy_helper.from_array(v, k) for k, v in consts.items()])
    path = tmp_path / "range.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10), path)
    compile_onnx(path, tmp_path / "range.so", scheme="fp16", target="llvm")
    engine = lowbit_tvm.load(tmp_path / "range.so")
    for shape in SHAPES:
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        np.testing.assert_allclose(engine(x)["y"], x + np.arange(shape[1], dtype=np.float32), rtol=1e-6)


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_float_build_matches_onnxruntime_at_two_shapes(exporter, llama, llama_onnx, inputs, ort_logits, tmp_path):
    if exporter == "torchscript":
        llama_onnx = _export(llama, tmp_path / "llama_torchscript.onnx", exporter)
        session = ort.InferenceSession(str(llama_onnx), providers=["CPUExecutionProvider"])
        ort_logits = [session.run(None, {"input_ids": ids})[0] for ids in inputs]
    compile_onnx(llama_onnx, tmp_path / "fp.so", scheme="fp16", target="llvm")
    engine = lowbit_tvm.load(tmp_path / "fp.so")
    assert engine.inputs[0]["shape"] == ["batch", "seq"]
    for ids, expected in zip(inputs, ort_logits):
        got = engine(ids)["logits"]
        assert got.shape == (*ids.shape, 256)
        assert _rel(got, expected) < 1e-4


def test_quantized_build_matches_its_dequantized_weights_at_two_shapes(llama, llama_onnx, inputs, ort_logits,
                                                                       tmp_path):
    result = compile_onnx(llama_onnx, tmp_path / "w4.so", scheme=SCHEME, target="llvm", keep_float=())
    assert [r["kernel"] for r in result.layers] == [SCHEME] * 15  # 7 per layer and the LM head
    engine = lowbit_tvm.load(tmp_path / "w4.so")
    references = _dequantized_reference(llama, inputs)
    for ids, float_logits, reference in zip(inputs, ort_logits, references):
        got = engine(ids)["logits"]
        assert got.shape == (*ids.shape, 256)
        assert _rel(got, reference) < 3e-3  # fp16 activations into every layer (5e-4 seen)
        assert _rel(got, float_logits) < 0.4  # 4-bit round-to-nearest of tiny random weights (0.19 seen)


def test_default_keep_float_finds_the_lm_head_of_a_dynamo_export(llama_onnx):
    from lowbit_tvm.frontend.onnx_linears import LinearWeight, normalize  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.frontend.onnx_quantize_pass import _matches  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.frontend.onnx_read import read_onnx  # pylint: disable=import-outside-toplevel

    linears = [p for _, p in normalize(read_onnx(llama_onnx)).params if isinstance(p, LinearWeight)]
    assert len(linears) == 15
    kept = [linear for linear in linears if _matches(linear, ("lm_head",))]
    # the dynamo exporter names the node node_linear_14 and its weight val_*: only the module scope says lm_head
    assert [linear.scope for linear in kept] == ["model.lm_head"]
    assert "lm_head" not in kept[0].node and "lm_head" not in kept[0].source
    assert all(linear.scope.startswith("model.model.layers.") for linear in linears if linear not in kept)
